// SPDX-License-Identifier: GPL-2.0
/*
 * Run-pre matching: compare the helper's pre code, compiled from the same
 * source as the running kernel but with every relocation left unresolved,
 * with the running kernel's bytes.  Outside relocation fields the bytes
 * must be equal; inside them, the running bytes say what the relocation's
 * symbol resolved to when the kernel was linked.  That settles the static
 * names System.map lists several times and the names it lacks, and it
 * proves the update was built from the running kernel's source and config.
 *
 * Differences tolerated, because the boot or the assembler explains them:
 * - "call __fentry__" in the object, the 5-byte NOP ftrace writes at boot
 *   in the running code (any other byte there means ftrace or livepatch
 *   owns the function: the match fails as "traced");
 * - at a code site (the helper's ksplice_codesites table, taken from the
 *   pre object's .return_sites, .retpoline_sites, .static_call_sites and
 *   __jump_table), exactly the encodings the kernel's own patching can
 *   have written there: see ksplice_walk_codesite();
 * - a jmp/jcc with a 32-bit displacement in the object that the assembler
 *   relaxed to 8 bits in the ordinary build, because its target was a
 *   local symbol of the same section there.
 */
#define pr_fmt(fmt) "ksplice: " fmt

#include <linux/kallsyms.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <asm/alternative.h>
#include <asm/cpufeature.h>
#include <asm/paravirt.h>
#include <asm/text-patching.h>
#include <asm/unaligned.h>

#include "resolve.h"
#include "runpre.h"

#define KSPLICE_SCT_PREFIX "__SCT__"

/*
 * <asm/text-patching.h> names call and jmp; Linux 6.1 has no names for
 * the conditional jumps: jcc rel32 is 0f 80+cc (6 bytes), jcc rel8 is
 * 70+cc (2 bytes, like jmp rel8).
 */
#define KSPLICE_JCC32_ESCAPE	0x0f
#define KSPLICE_JCC32_OPCODE	0x80
#define KSPLICE_JCC32_SIZE	6
#define KSPLICE_JCC8_OPCODE	0x70
#define KSPLICE_JCC_CC		0x0f

/* Prefix and opcode bytes of the code sites' instructions (x86 SDM vol. 2) */
#define KSPLICE_CS_PREFIX	0x2e
#define KSPLICE_DS_PREFIX	0x3e
#define KSPLICE_LOCK_PREFIX	0xf0
#define KSPLICE_REX_B		0x41
#define KSPLICE_INDIRECT	0xff	/* call/jmp r/m64 */
#define KSPLICE_MODRM_CALL_REG	0xd0	/* mod 3, /2: call *%reg */
#define KSPLICE_MODRM_JMP_REG	0xe0	/* mod 3, /4: jmp *%reg */
#define KSPLICE_SITE_MAX	6	/* longest code site: jcc rel32, cs call */

/* lfence is 0f ae /5: its ModRM (mod 3, reg 5) is the byte of a call opcode */
static const u8 ksplice_lfence[] = { 0x0f, 0xae, CALL_INSN_OPCODE };
static const u8 ksplice_nop2[] = { BYTES_NOP2 };
/* The multi-byte NOPs of <asm/nops.h> the alternatives code pads with */
static const u8 ksplice_nops[][4] = {
	[2] = { BYTES_NOP2 }, [3] = { BYTES_NOP3 }, [4] = { BYTES_NOP4 },
};

/* static_call's xorl %eax, %eax behind three CS prefixes: __static_call_return0 */
static const u8 ksplice_xor5rax[] = {
	KSPLICE_CS_PREFIX, KSPLICE_CS_PREFIX, KSPLICE_CS_PREFIX, 0x31, 0xc0
};

/*
 * What the return thunk can be (x86_return_thunk, set by
 * arch/x86/kernel/cpu/bugs.c for the retbleed, SRSO and ITS mitigations).
 */
static const char * const ksplice_return_thunks[] = {
	"__x86_return_thunk", "retbleed_return_thunk", "srso_return_thunk",
	"srso_alias_return_thunk", "its_return_thunk",
};

static const char * const ksplice_match_names[] = {
	[KSPLICE_MATCH_UNTRIED] = "untried",
	[KSPLICE_MATCH_FOUND] = "found",
	[KSPLICE_MATCH_SEVERAL] = "several",
	[KSPLICE_MATCH_OUTSIDE] = "outside",
	[KSPLICE_MATCH_FAILED] = "failed",
};

/**
 * ksplice_match_status_name() - Name of a run-pre result, for sysfs.
 * @status: an enum ksplice_match_status
 *
 * Return: "untried", "found", "several", "outside", "failed" or "unknown".
 */
const char *ksplice_match_status_name(unsigned int status)
{
	if (status >= ARRAY_SIZE(ksplice_match_names))
		return "unknown";
	return ksplice_match_names[status];
}

/* Where a walk over one function stands. */
struct ksplice_walk {
	const struct ksplice_module *h;
	const u8 *pre;			/* the helper's copy */
	unsigned long size;		/* its length */
	const u8 *run;			/* the running bytes, copied */
	unsigned long runlen;
	unsigned long runaddr;		/* where they run */
	const struct module *mod;	/* in this loaded module, or NULL */
	unsigned long i, j;		/* offsets in pre and run */
	unsigned int k;			/* next entry of by_site */
	unsigned int kend;
	unsigned int c;			/* next entry of by_code */
	unsigned int cend;
	struct ksplice_runval *vals;	/* per reloc, this candidate */
	unsigned int entry_nop;
	bool traced;
	struct ksplice_relax *relax;	/* where run offsets moved, in order */
	unsigned int nrelax;
	struct ksplice_pending *pend;	/* branch targets to check at the end */
	unsigned int npend;
	bool overflow;			/* relax or pend ran out of room */
};

/* By address, then table order (an alternative's entries apply in order). */
static int ksplice_site_cmp(const void *a, const void *b)
{
	const struct ksplice_site *x = a, *y = b;

	if (x->addr != y->addr)
		return x->addr < y->addr ? -1 : 1;
	if (x->reloc != y->reloc)
		return x->reloc < y->reloc ? -1 : 1;
	return 0;
}

/*
 * The running code from pre offset w->i on lies at w->j: remember the
 * difference, for branch targets beyond this point.
 */
static void ksplice_walk_moved(struct ksplice_walk *w)
{
	if (w->nrelax && w->relax[w->nrelax - 1].pre == w->i) {
		w->relax[w->nrelax - 1].delta = (long)w->j - (long)w->i;
		return;
	}
	if (w->nrelax == w->h->max_relax) {
		w->overflow = true;
		return;
	}
	w->relax[w->nrelax].pre = w->i;
	w->relax[w->nrelax].delta = (long)w->j - (long)w->i;
	w->nrelax++;
}

/* A branch at the current position goes to @run; it must be pre offset @pre. */
static void ksplice_walk_expect(struct ksplice_walk *w, long pre,
				unsigned long run)
{
	if (w->npend == w->h->max_pending) {
		w->overflow = true;
		return;
	}
	w->pend[w->npend].pre = pre;
	w->pend[w->npend].run = run;
	w->npend++;
}

/* Running address of pre offset @pre: the last move at or before it counts. */
static unsigned long ksplice_walk_run_of(const struct ksplice_walk *w,
					 unsigned long pre)
{
	unsigned int lo = 0, hi = w->nrelax;

	while (lo < hi) {
		unsigned int mid = lo + (hi - lo) / 2;

		if (w->relax[mid].pre <= pre)
			lo = mid + 1;
		else
			hi = mid;
	}
	return w->runaddr + pre + (lo ? w->relax[lo - 1].delta : 0);
}

/*
 * Once the walk is over every move is known: each branch recorded on the
 * way must reach, in the running code, the instruction its target is in
 * the helper's copy.
 */
static bool ksplice_walk_targets(const struct ksplice_walk *w)
{
	unsigned int n;

	if (w->overflow)
		return false;
	for (n = 0; n < w->npend; n++) {
		long pre = w->pend[n].pre;

		if (pre < 0 || pre >= (long)w->size ||
		    ksplice_walk_run_of(w, pre) != w->pend[n].run)
			return false;
	}
	return true;
}

static int ksplice_sort_sites(struct ksplice_module *h)
{
	unsigned int i;

	h->by_site = kcalloc(h->nr_relocs ? h->nr_relocs : 1,
			     sizeof(*h->by_site), GFP_KERNEL);
	h->by_code = kcalloc(h->nr_codesites ? h->nr_codesites : 1,
			     sizeof(*h->by_code), GFP_KERNEL);
	if (!h->by_site || !h->by_code)
		return -ENOMEM;
	for (i = 0; i < h->nr_relocs; i++) {
		h->by_site[i].addr = h->reloc_tab[i].section_addr +
				     h->reloc_tab[i].offset;
		h->by_site[i].reloc = i;
	}
	sort(h->by_site, h->nr_relocs, sizeof(*h->by_site), ksplice_site_cmp,
	     NULL);
	for (i = 0; i < h->nr_codesites; i++) {
		h->by_code[i].addr = h->codesite_tab[i].section_addr +
				     h->codesite_tab[i].offset;
		h->by_code[i].reloc = i;
	}
	sort(h->by_code, h->nr_codesites, sizeof(*h->by_code), ksplice_site_cmp,
	     NULL);
	return 0;
}

/* First entry of @sites (@n of them, sorted) at or after @addr. */
static unsigned int ksplice_first_in(const struct ksplice_site *sites,
				     unsigned int n, unsigned long addr)
{
	unsigned int lo = 0, hi = n;

	while (lo < hi) {
		unsigned int mid = lo + (hi - lo) / 2;

		if (sites[mid].addr < addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* First by_site entry at or after @addr. */
static unsigned int ksplice_first_site(const struct ksplice_module *h,
				       unsigned long addr)
{
	return ksplice_first_in(h->by_site, h->nr_relocs, addr);
}

static unsigned long ksplice_read_field(const u8 *p, unsigned int size,
					bool is_signed)
{
	switch (size) {
	case 1:
		return is_signed ? (long)(s8)*p : *p;
	case 2:
		return is_signed ? (long)(s16)get_unaligned((const u16 *)p) :
				   get_unaligned((const u16 *)p);
	case 4:
		return is_signed ? (long)(s32)get_unaligned((const u32 *)p) :
				   get_unaligned((const u32 *)p);
	default:
		return get_unaligned((const u64 *)p);
	}
}

/* Does a value read from running code agree with what System.map says? */
static bool ksplice_value_ok(const struct ksplice_walk *w, unsigned int idx,
			     unsigned long value)
{
	const struct ksplice_module *h = w->h;
	const struct ksplice_reloc *r = &h->reloc_tab[idx];
	const struct ksplice_symstate *st = &h->reloc_state[idx];
	unsigned int c;

	switch (st->status) {
	case KSPLICE_SYM_RESOLVED:
		if (value == st->addr)
			return true;
		break;
	case KSPLICE_SYM_AMBIGUOUS:
		for (c = 0; c < r->nr_candidates; c++)
			if (ksplice_run_addr(h, r->candidates[c]) == value)
				return true;
		break;
	default:
		return true;
	}
	/*
	 * Code in a module may refer to the module's own static symbol of a
	 * name System.map lists for the kernel (an out-of-line copy of a
	 * header's static inline function, say): the module's kallsyms must
	 * name exactly that symbol there.
	 */
	return w->mod && h->symbuf && within_module(value, (struct module *)w->mod) &&
	       ksplice_module_symbol(h, h->symbuf, value, r->symbol);
}

static bool ksplice_take_value(struct ksplice_walk *w, unsigned int idx,
			       unsigned long value)
{
	if (!ksplice_value_ok(w, idx, value)) {
		if (!strcmp(w->h->reloc_tab[idx].symbol, "__fentry__"))
			w->traced = true;
		return false;
	}
	w->vals[idx].value = value;
	w->vals[idx].have = true;
	return true;
}

/* Static call sites hold whatever target static_call last wrote. */
static bool ksplice_is_static_call(const struct ksplice_reloc *r)
{
	return !strncmp(r->symbol, KSPLICE_SCT_PREFIX,
			sizeof(KSPLICE_SCT_PREFIX) - 1);
}

/* Step over @di bytes of the helper's copy, @dj running bytes and a site. */
static void ksplice_walk_step(struct ksplice_walk *w, unsigned long di,
			      unsigned long dj)
{
	w->i += di;
	w->j += dj;
	w->k++;
}

/* A relocation field at the current position: read the symbol's value. */
static bool ksplice_walk_field(struct ksplice_walk *w,
			       const struct ksplice_reloc *r, unsigned int idx)
{
	unsigned long v, p = w->runaddr + w->j;
	bool is_signed = (r->flags & (KSPLICE_RELOC_SIGNED | KSPLICE_RELOC_PCREL));

	if (w->j + r->size > w->runlen || w->i + r->size > w->size)
		return false;
	if (!ksplice_is_static_call(r)) {
		v = ksplice_read_field(w->run + w->j, r->size, is_signed);
		v -= r->addend;
		if (r->flags & KSPLICE_RELOC_PCREL)
			v += p;
		if (!ksplice_take_value(w, idx, v))
			return false;
	}
	ksplice_walk_step(w, r->size, r->size);
	return true;
}

/*
 * "call __fentry__" in the helper's copy: the running code must have the
 * NOP ftrace writes at boot.  A call there means ftrace or livepatch owns
 * the function.
 */
static bool ksplice_walk_fentry(struct ksplice_walk *w)
{
	const u8 *run = w->run + w->j;
	unsigned long left = w->runlen - w->j;

	if (left < CALL_INSN_SIZE || !ksplice_is_ftrace_nop(run)) {
		w->traced = left && run[0] == CALL_INSN_OPCODE;
		return false;
	}
	if (w->i == 0)
		w->entry_nop = w->j + CALL_INSN_SIZE;
	ksplice_walk_step(w, CALL_INSN_SIZE, CALL_INSN_SIZE);
	return true;
}

static bool ksplice_is_jcc32(const u8 *p)
{
	return p[0] == KSPLICE_JCC32_ESCAPE &&
	       (p[1] & ~KSPLICE_JCC_CC) == KSPLICE_JCC32_OPCODE;
}

/*
 * A jmp or jcc rel32 in the helper's copy that the assembler relaxed to
 * rel8 in the running kernel: the rel8 target gives the symbol's value.
 */
static bool ksplice_walk_relaxed(struct ksplice_walk *w,
				 const struct ksplice_reloc *r,
				 unsigned int idx, unsigned long gap)
{
	const u8 *pre = w->pre + w->i, *run = w->run + w->j;
	bool pcrel32 = (r->flags & KSPLICE_RELOC_PCREL) && r->size == DISP32_SIZE;
	unsigned long target;

	if (!pcrel32 || w->runlen - w->j < JMP8_INSN_SIZE)
		return false;
	if (gap == 1 && pre[0] == JMP32_INSN_OPCODE && run[0] == JMP8_INSN_OPCODE)
		w->i += JMP32_INSN_SIZE;
	else if (gap == 2 && ksplice_is_jcc32(pre) &&
		 run[0] == (KSPLICE_JCC8_OPCODE | (pre[1] & KSPLICE_JCC_CC)))
		w->i += KSPLICE_JCC32_SIZE;
	else
		return false;
	/* jmp rel8 and jcc rel8 are both JMP8_INSN_SIZE bytes */
	target = w->runaddr + w->j + JMP8_INSN_SIZE + (long)(s8)run[1];
	/* jump target = field + 4 + (S + A - field), so S = target - A - 4 */
	if (!ksplice_take_value(w, idx, target - r->addend - DISP32_SIZE))
		return false;
	w->j += JMP8_INSN_SIZE;
	w->k++;
	ksplice_walk_moved(w);
	return true;
}

/*
 * The bytes differ just before a relocation field (@r, @gap bytes ahead:
 * the opcode).  Accept the explained cases and step over them.
 */
static bool ksplice_walk_tolerate(struct ksplice_walk *w,
				  const struct ksplice_reloc *r,
				  unsigned int idx, unsigned long gap)
{
	const u8 *pre = w->pre + w->i;

	if (gap == 1 && pre[0] == CALL_INSN_OPCODE &&
	    !strcmp(r->symbol, "__fentry__"))
		return ksplice_walk_fentry(w);
	return ksplice_walk_relaxed(w, r, idx, gap);
}

/*
 * Is @addr the first byte of a symbol in core kernel text, or of a loaded
 * module's symbol ("name+0x0/size [module]": modules' text lookups are not
 * exported to modules in 6.1, kallsyms is)?
 */
static bool ksplice_is_function(const struct ksplice_walk *w, unsigned long addr)
{
	char *buf = w->h->symbuf;

	sprint_symbol(buf, addr);
	if (!strstr(buf, "+0x0/"))
		return false;
	return ksplice_in_core_text(w->h, addr) || strstr(buf, " [");
}

/* Is @addr one of the return thunks bugs.c can choose? */
static bool ksplice_is_return_thunk(const struct ksplice_walk *w,
				    unsigned long addr)
{
	unsigned int t;

	if (!ksplice_in_core_text(w->h, addr))
		return false;
	for (t = 0; t < ARRAY_SIZE(ksplice_return_thunks); t++)
		if (ksplice_symbol_at(w->h->symbuf, addr, ksplice_return_thunks[t]))
			return true;
	return false;
}

/* Target of the rel8 branch (jmp or jcc, 2 bytes) at the current position. */
static unsigned long ksplice_rel8_target(const struct ksplice_walk *w)
{
	return w->runaddr + w->j + JMP8_INSN_SIZE + (long)(s8)w->run[w->j + 1];
}

/* Target of the rel32 branch whose 4-byte displacement ends at run + end. */
static unsigned long ksplice_rel32_target(const struct ksplice_walk *w,
					  unsigned int end)
{
	const u8 *field = w->run + w->j + end - DISP32_SIZE;

	return w->runaddr + w->j + end + (long)(s32)get_unaligned((const u32 *)field);
}

/*
 * A return site, "jmp __x86_return_thunk" in the object.  apply_returns()
 * leaves a jmp to the return thunk of the chosen mitigation, or writes
 * "ret" and fills the rest with int3.
 */
static bool ksplice_site_return(struct ksplice_walk *w, unsigned int len)
{
	const u8 *pre = w->pre + w->i, *run = w->run + w->j;
	unsigned int n;

	if (len != JMP32_INSN_SIZE || pre[0] != JMP32_INSN_OPCODE)
		return false;
	if (run[0] == JMP32_INSN_OPCODE)
		return ksplice_is_return_thunk(w, ksplice_rel32_target(w, len));
	if (run[0] != RET_INSN_OPCODE)
		return false;
	for (n = 1; n < len; n++)
		if (run[n] != INT3_INSN_OPCODE)
			return false;
	return true;
}

/*
 * What apply_retpolines() writes for a retpoline site of @len bytes whose
 * instruction is @pre (call, jmp or jcc to __x86_indirect_thunk_<@reg>),
 * with or without its LFENCE.  Returns false when it would not fit, in
 * which case the kernel leaves the site alone.
 */
static bool ksplice_retpoline_form(const u8 *pre, unsigned int len, u8 reg,
				   bool lfence, u8 *out)
{
	unsigned int i = 0, nops, off = pre[0] == KSPLICE_CS_PREFIX;
	bool jump = pre[off] == JMP32_INSN_OPCODE;

	if (pre[off] == KSPLICE_JCC32_ESCAPE) {
		/* jcc becomes "jncc over the indirect jmp" */
		out[i++] = KSPLICE_JCC8_OPCODE | ((pre[off + 1] & KSPLICE_JCC_CC) ^ 1);
		out[i++] = len - JMP8_INSN_SIZE;
		jump = true;
	}
	if (lfence) {
		memcpy(out + i, ksplice_lfence, sizeof(ksplice_lfence));
		i += sizeof(ksplice_lfence);
	}
	if (i + 3 > KSPLICE_SITE_MAX)
		return false;
	if (reg >= 8)
		out[i++] = KSPLICE_REX_B;
	out[i++] = KSPLICE_INDIRECT;
	out[i++] = (jump ? KSPLICE_MODRM_JMP_REG : KSPLICE_MODRM_CALL_REG) | (reg & 7);
	if (i > len)
		return false;
	if (jump && i < len)
		out[i++] = INT3_INSN_OPCODE;
	/* one NOP stays 0x90; optimize_nops() merges longer runs */
	nops = len - i;
	if (nops == 1)
		out[i] = BYTES_NOP1;
	else if (nops >= ARRAY_SIZE(ksplice_nops))
		return false;
	else if (nops)
		memcpy(out + i, ksplice_nops[nops], nops);
	return true;
}

/*
 * A retpoline site: unchanged (the relocation field must then hold the
 * thunk), or the "[lfence;] call/jmp *%reg" apply_retpolines() writes.
 */
static int ksplice_site_retpoline(struct ksplice_walk *w,
				  const struct ksplice_codesite *cs)
{
	const u8 *pre = w->pre + w->i, *run = w->run + w->j;
	u8 form[KSPLICE_SITE_MAX];
	unsigned int len = cs->len;

	if (len > KSPLICE_SITE_MAX || cs->reg >= 16)
		return false;
	if (ksplice_retpoline_form(pre, len, cs->reg, false, form) &&
	    !memcmp(form, run, len))
		return true;
	if (ksplice_retpoline_form(pre, len, cs->reg, true, form) &&
	    !memcmp(form, run, len))
		return true;
	return -1;
}

/*
 * An inline static call site.  __static_call_transform() writes a call
 * to the current function, its 5-byte NOP, or the "xorl %eax, %eax" of
 * __static_call_return0 at a call; a jmp to the function, or "ret" and
 * int3s, at a tail call; a jcc with the same condition at a jcc.
 */
static bool ksplice_site_static_call(struct ksplice_walk *w, unsigned int len)
{
	const u8 *pre = w->pre + w->i, *run = w->run + w->j;
	unsigned int n;

	switch (pre[0]) {
	case CALL_INSN_OPCODE:
		if (len != CALL_INSN_SIZE)
			return false;
		if (ksplice_is_ftrace_nop(run) ||
		    !memcmp(run, ksplice_xor5rax, len))
			return true;
		return run[0] == CALL_INSN_OPCODE &&
		       ksplice_is_function(w, ksplice_rel32_target(w, len));
	case JMP32_INSN_OPCODE:
		if (len != JMP32_INSN_SIZE)
			return false;
		if (run[0] == JMP32_INSN_OPCODE)
			return ksplice_is_function(w, ksplice_rel32_target(w, len));
		if (run[0] != RET_INSN_OPCODE)
			return false;
		for (n = 1; n < len; n++)
			if (run[n] != INT3_INSN_OPCODE)
				return false;
		return true;
	case KSPLICE_JCC32_ESCAPE:
		return len == KSPLICE_JCC32_SIZE && run[0] == pre[0] &&
		       run[1] == pre[1] &&
		       ksplice_is_function(w, ksplice_rel32_target(w, len));
	default:
		return false;
	}
}

/*
 * A jump label: the jump label code writes a jmp to the entry's target
 * or a NOP, of the length already there (2 or 5 bytes).
 */
static bool ksplice_site_jump_label(struct ksplice_walk *w,
				    const struct ksplice_codesite *cs)
{
	const u8 *run = w->run + w->j;
	long pre = cs->section_addr + cs->target - (unsigned long)w->pre;

	/* the target is checked once every move of the function is known */
	if (cs->len == JMP32_INSN_SIZE) {
		if (ksplice_is_ftrace_nop(run))
			return true;
		if (run[0] != JMP32_INSN_OPCODE)
			return false;
		ksplice_walk_expect(w, pre, ksplice_rel32_target(w, JMP32_INSN_SIZE));
		return true;
	}
	if (cs->len != JMP8_INSN_SIZE)
		return false;
	if (!memcmp(run, ksplice_nop2, JMP8_INSN_SIZE))
		return true;
	if (run[0] != JMP8_INSN_OPCODE)
		return false;
	ksplice_walk_expect(w, pre, ksplice_rel8_target(w));
	return true;
}

/*
 * A relative branch without relocation (the host lists them only in
 * functions where the assembler may have relaxed a jump to another
 * function): the same opcode, or the rel8 form of a jmp/jcc rel32 that
 * the running kernel's assembler could relax once the code before its
 * target shrank.  Its target is compared through the offset map.
 */
static bool ksplice_site_branch(struct ksplice_walk *w,
				const struct ksplice_codesite *cs)
{
	const u8 *pre = w->pre + w->i, *run = w->run + w->j;
	long to = cs->section_addr + cs->target - (unsigned long)w->pre;
	unsigned int len = cs->len, rlen = len;
	unsigned long target;

	if (len == JMP8_INSN_SIZE && run[0] == pre[0]) {
		target = ksplice_rel8_target(w);
	} else if (len == JMP32_INSN_SIZE && run[0] == pre[0]) {
		target = ksplice_rel32_target(w, len);
	} else if (len == KSPLICE_JCC32_SIZE && ksplice_is_jcc32(pre) &&
		   run[0] == pre[0] && run[1] == pre[1]) {
		target = ksplice_rel32_target(w, len);
	} else if ((len == JMP32_INSN_SIZE && pre[0] == JMP32_INSN_OPCODE &&
		    run[0] == JMP8_INSN_OPCODE) ||
		   (len == KSPLICE_JCC32_SIZE && ksplice_is_jcc32(pre) &&
		    run[0] == (KSPLICE_JCC8_OPCODE | (pre[1] & KSPLICE_JCC_CC)))) {
		rlen = JMP8_INSN_SIZE;
		target = ksplice_rel8_target(w);
	} else {
		return false;
	}
	ksplice_walk_expect(w, to, target);
	w->i += len;
	w->j += rlen;
	if (rlen != len)
		ksplice_walk_moved(w);
	return true;
}

/* Are the @n bytes at @p what add_nops(p, n) writes? */
static bool __maybe_unused ksplice_is_add_nops(const u8 *p, unsigned int n)
{
	while (n) {
		unsigned int k = min_t(unsigned int, n, KSPLICE_NOP_MAX);

		if (memcmp(p, ksplice_add_nops[k], k))
			return false;
		p += k;
		n -= k;
	}
	return true;
}

/*
 * A paravirt site of @len bytes, pv_ops entry @type: apply_paravirt() let
 * paravirt_patch() write a call to pv_ops[type] (nothing when that is
 * _paravirt_nop; a NULL entry, a call to paravirt_BUG, is refused here)
 * and padded the rest with add_nops().  The pv_ops are set before the boot
 * patches, and a module's sites are patched at load with the same ones.
 */
static bool ksplice_site_paravirt(struct ksplice_walk *w, unsigned int type,
				  unsigned int len)
{
#ifdef CONFIG_PARAVIRT
	const u8 *run = w->run + w->j;
	unsigned long op;
	unsigned int used = 0;

	if (type >= sizeof(pv_ops) / sizeof(void *) || len < CALL_INSN_SIZE)
		return false;
	op = (unsigned long)((void **)&pv_ops)[type];
	if (!op)
		return false;
	if (!ksplice_symbol_at(w->h->symbuf, op, "_paravirt_nop")) {
		if (run[0] != CALL_INSN_OPCODE ||
		    ksplice_rel32_target(w, CALL_INSN_SIZE) != op)
			return false;
		used = CALL_INSN_SIZE;
	}
	return ksplice_is_add_nops(run + used, len - used);
#else
	return false;
#endif
}

/*
 * A lock prefix of .smp_locks: alternatives_smp_unlock() turns it into a
 * DS prefix (3e) while one CPU is online, alternatives_smp_lock() back
 * before a second one comes up.
 */
static bool ksplice_site_smp_lock(const struct ksplice_walk *w)
{
	u8 run = w->run[w->j];

	return run == KSPLICE_LOCK_PREFIX ||
	       (run == KSPLICE_DS_PREFIX && num_online_cpus() == 1);
}

/* Does the boot CPU select alternative entry @cs (apply_alternatives())? */
static int ksplice_alt_applies(const struct ksplice_codesite *cs)
{
	unsigned int bit = cs->feature & ~ALTINSTR_FLAG_INV;

	if (bit >= (NCAPINTS + NBUGINTS) * 32)
		return -1;
	return !boot_cpu_has(bit) != !(cs->feature & ALTINSTR_FLAG_INV);
}

/*
 * Where an alternative's 5-byte call or jmp reaches must be where the
 * replacement's relocation points: its symbol (+ addend), or an offset of
 * the function, checked with the other branch targets.
 */
static bool ksplice_alt_target(struct ksplice_walk *w,
			       const struct ksplice_codesite *cs,
			       unsigned long target)
{
	const struct ksplice_module *h = w->h;
	unsigned long s = target - cs->addend;
	unsigned int c;

	if (cs->target >= 0) {
		ksplice_walk_expect(w, cs->section_addr + cs->target -
				    (unsigned long)w->pre, target);
		return true;
	}
	if (!cs->symbol)
		return false;
	for (c = 0; c < cs->nr_candidates; c++)
		if (ksplice_run_addr(h, cs->candidates[c]) == s)
			return true;
	return !cs->nr_candidates && ksplice_symbol_at(h->symbuf, s, cs->symbol);
}

/*
 * The 5-byte call or jmp that starts a replacement: apply_alternatives()
 * keeps its target; recompute_jump() writes a jmp as "eb rel8; NOP3" when
 * the target is 0..129 bytes past the site, else as jmp rel32.
 */
static bool ksplice_alt_branch(struct ksplice_walk *w,
			       const struct ksplice_codesite *cs)
{
	const u8 *run = w->run + w->j;
	unsigned long site = w->runaddr + w->j, target;
	bool short8, is8 = run[0] == JMP8_INSN_OPCODE;
	long dist;

	if (cs->template[0] == CALL_INSN_OPCODE)
		return run[0] == CALL_INSN_OPCODE &&
		       ksplice_alt_target(w, cs, ksplice_rel32_target(w, CALL_INSN_SIZE));
	if (run[0] == JMP8_INSN_OPCODE) {
		if (memcmp(run + JMP8_INSN_SIZE, ksplice_nops[3], 3))
			return false;
		target = ksplice_rel8_target(w);
	} else if (run[0] == JMP32_INSN_OPCODE) {
		target = ksplice_rel32_target(w, JMP32_INSN_SIZE);
	} else {
		return false;
	}
	dist = target - site;
	short8 = dist >= 0 && dist - JMP8_INSN_SIZE <= 127;
	if (short8 != is8)
		return false;
	return ksplice_alt_target(w, cs, target);
}

/* Step over a site of @len bytes in both copies, and the relocations inside. */
static int ksplice_walk_site_done(struct ksplice_walk *w, unsigned int len)
{
	unsigned long end = (unsigned long)w->pre + w->i + len;

	while (w->k < w->kend && w->h->by_site[w->k].addr < end)
		w->k++;
	w->i += len;
	w->j += len;
	return 1;
}

/*
 * An alternative site: its original (first, KSPLICE_CODESITE_ORIGINAL)
 * and its entries, in table order, from by_code[w->c] on.  The entry the
 * boot CPU selects last is what apply_alternatives() left there (or the
 * original, when none is); optimize_nops() then re-encoded its NOP runs,
 * which each template already has.  The original's relocation fields are
 * read as elsewhere; a replacement's are not there.  w->c is left on the
 * group's last entry.
 */
static bool ksplice_walk_alternative(struct ksplice_walk *w)
{
	const struct ksplice_module *h = w->h;
	const struct ksplice_codesite *orig = &h->codesite_tab[h->by_code[w->c].reloc];
	const struct ksplice_codesite *use = orig, *cs;
	unsigned long base = (unsigned long)w->pre, start = w->i;
	unsigned long at = h->by_code[w->c].addr;
	unsigned int len = orig->len, p;

	if (!(orig->flags & KSPLICE_CODESITE_ORIGINAL) || !orig->template)
		return false;
	while (w->c + 1 < w->cend && h->by_code[w->c + 1].addr == at) {
		w->c++;
		cs = &h->codesite_tab[h->by_code[w->c].reloc];
		if (cs->kind != KSPLICE_SITE_ALTERNATIVE || cs->len != len ||
		    !cs->template)
			return false;
		switch (ksplice_alt_applies(cs)) {
		case 1:
			use = cs;
			break;
		case 0:
			break;
		default:
			return false;
		}
	}
	if (w->i + len > w->size || w->j + len > w->runlen ||
	    (use->flags & KSPLICE_CODESITE_UNSUPPORTED))
		return false;
	if (use == orig && (orig->flags & KSPLICE_CODESITE_PARAVIRT))
		/* apply_paravirt() ran first; its call has no field of ours to read */
		return ksplice_site_paravirt(w, orig->feature, len) &&
		       ksplice_walk_site_done(w, len);
	if (use == orig) {
		while (w->i < start + len) {
			if (w->k < w->kend && h->by_site[w->k].addr - base == w->i) {
				unsigned int idx = h->by_site[w->k].reloc;

				if (!ksplice_walk_field(w, &h->reloc_tab[idx], idx))
					return false;
				continue;
			}
			if (w->run[w->j] != orig->template[w->i - start])
				return false;
			w->i++;
			w->j++;
		}
		return w->i == start + len;
	}
	p = 0;
	if (use->repl_len == CALL_INSN_SIZE &&
	    (use->template[0] == CALL_INSN_OPCODE ||
	     use->template[0] == JMP32_INSN_OPCODE)) {
		if (!ksplice_alt_branch(w, use))
			return false;
		p = CALL_INSN_SIZE;
	}
	return !memcmp(w->run + w->j + p, use->template + p, len - p) &&
	       ksplice_walk_site_done(w, len);
}

/*
 * A code site at the current position.  Returns 1 when the running bytes
 * are one of the encodings the kernel can have written there (both copies
 * are then stepped over, with the relocations inside the site), 0 when
 * they are not, and -1 when the site is to be compared like other code:
 * a retpoline site the kernel left alone (its thunk is then checked as a
 * relocation), or a jump label that jumps out of its section.
 */
static int ksplice_walk_codesite(struct ksplice_walk *w,
				 const struct ksplice_codesite *cs)
{
	unsigned long base = (unsigned long)w->pre, end;
	unsigned int len = cs->len;
	int ok;

	if (cs->kind == KSPLICE_SITE_ALTERNATIVE)
		return ksplice_walk_alternative(w);
	if (cs->kind == KSPLICE_SITE_BRANCH)
		return len <= KSPLICE_SITE_MAX && w->i + len <= w->size &&
		       w->j + len <= w->runlen && ksplice_site_branch(w, cs);
	if (cs->kind == KSPLICE_SITE_PARAVIRT)
		ok = w->i + len <= w->size && w->j + len <= w->runlen &&
		     ksplice_site_paravirt(w, cs->feature, len);
	else if (cs->kind == KSPLICE_SITE_SMP_LOCK)
		ok = len == 1 && ksplice_site_smp_lock(w);
	else
		ok = -2;
	if (ok != -2)
		return ok ? ksplice_walk_site_done(w, len) : 0;
	if (!len || len > KSPLICE_SITE_MAX || w->i + len > w->size ||
	    w->j + len > w->runlen)
		return 0;
	switch (cs->kind) {
	case KSPLICE_SITE_RETURN:
		ok = ksplice_site_return(w, len);
		break;
	case KSPLICE_SITE_RETPOLINE:
		ok = ksplice_site_retpoline(w, cs);
		break;
	case KSPLICE_SITE_STATIC_CALL:
		ok = ksplice_site_static_call(w, len);
		break;
	case KSPLICE_SITE_JUMP_LABEL:
		ok = cs->target < 0 ? -1 : ksplice_site_jump_label(w, cs);
		break;
	default:
		ok = 0;
	}
	if (ok != 1)
		return ok;
	/* the relocation fields inside hold nothing to read any more */
	end = base + w->i + len;
	while (w->k < w->kend && w->h->by_site[w->k].addr < end)
		w->k++;
	w->i += len;
	w->j += len;
	return 1;
}

/* Walk one function; returns true when the running bytes match. */
static bool ksplice_walk(struct ksplice_walk *w, unsigned long *bad)
{
	const struct ksplice_module *h = w->h;
	unsigned long base = (unsigned long)w->pre;

	while (w->i < w->size) {
		const struct ksplice_reloc *r = NULL;
		unsigned long at = ULONG_MAX;
		unsigned int idx = 0;

		/* a site a relaxed jump stepped over is compared strictly */
		while (w->c < w->cend && h->by_code[w->c].addr - base < w->i)
			w->c++;
		if (w->c < w->cend && h->by_code[w->c].addr - base == w->i) {
			int ok = ksplice_walk_codesite(w, &h->codesite_tab[h->by_code[w->c].reloc]);

			w->c++;
			if (!ok)
				goto fail;
			if (ok > 0)
				continue;
		}
		if (w->k < w->kend) {
			idx = h->by_site[w->k].reloc;
			r = &h->reloc_tab[idx];
			at = h->by_site[w->k].addr - base;
		}
		if (at == w->i) {
			if (!ksplice_walk_field(w, r, idx))
				goto fail;
			continue;
		}
		if (w->j < w->runlen && w->pre[w->i] == w->run[w->j]) {
			w->i++;
			w->j++;
			continue;
		}
		if (r && at > w->i && at - w->i <= KSPLICE_JCC32_SIZE - DISP32_SIZE &&
		    ksplice_walk_tolerate(w, r, idx, at - w->i))
			continue;
		goto fail;
	}
	if (ksplice_walk_targets(w))
		return true;
fail:
	*bad = w->i;
	return false;
}

static void ksplice_log_mismatch(const struct ksplice_walk *w, const char *name,
				 unsigned long bad)
{
	unsigned long n = min(8UL, w->size - min(bad, w->size));
	unsigned long m = min(8UL, w->runlen - min(w->j, w->runlen));

	pr_info("%s run-pre: %s at %pS differs at +%#lx: pre %*ph run %*ph%s\n",
		KSPLICE_ID, name, (void *)w->runaddr, bad, (int)n, w->pre + bad,
		(int)m, w->run + w->j, w->traced ? " (traced)" : "");
}

/*
 * Try one running address for helper function @f.  On a match the values
 * read from the running code are in @vals (indexed like the reloc table).
 */
static bool ksplice_try(struct ksplice_module *h, unsigned int f,
			unsigned long addr, const struct module *mod, u8 *buf,
			struct ksplice_runval *vals, unsigned int *entry_nop,
			bool *traced, bool log)
{
	const struct ksplice_size *s = &h->size_tab[f];
	struct ksplice_walk w = {
		.h = h,
		.pre = (const u8 *)s->thismod_addr,
		.size = s->size,
		.run = buf,
		.runlen = s->size,
		.runaddr = addr,
		.mod = mod,
		.vals = vals,
		.relax = h->relax,
		.pend = h->pending,
	};
	unsigned long bad = 0;
	unsigned int k;

	if (copy_from_kernel_nofault(buf, (void *)addr, s->size))
		return false;
	w.k = ksplice_first_site(h, s->thismod_addr);
	w.kend = ksplice_first_site(h, s->thismod_addr + s->size);
	w.c = ksplice_first_in(h->by_code, h->nr_codesites, s->thismod_addr);
	w.cend = ksplice_first_in(h->by_code, h->nr_codesites,
				  s->thismod_addr + s->size);
	for (k = w.k; k < w.kend; k++)
		vals[h->by_site[k].reloc].have = false;
	if (ksplice_walk(&w, &bad)) {
		*entry_nop = w.entry_nop;
		return true;
	}
	*traced |= w.traced;
	if (log)
		ksplice_log_mismatch(&w, s->name, bad);
	return false;
}

static void ksplice_commit(struct ksplice_module *h, unsigned int f,
			   const struct ksplice_runval *vals, bool keep)
{
	const struct ksplice_size *s = &h->size_tab[f];
	unsigned int k = ksplice_first_site(h, s->thismod_addr);
	unsigned int kend = ksplice_first_site(h, s->thismod_addr + s->size);

	for (; k < kend; k++) {
		unsigned int idx = h->by_site[k].reloc;

		h->runval[idx].have = keep && vals[idx].have;
		h->runval[idx].value = vals[idx].value;
	}
}

/*
 * Can @addr..@addr+@size hold a function we compare?  Core kernel text,
 * or the core text of @mod, a loaded module we hold a reference on.
 * Init text is freed once init is over.
 */
static bool ksplice_text_ok(const struct ksplice_module *h, unsigned long addr,
			    unsigned long size, const struct module *mod)
{
	unsigned long base;

	if (!size)
		return false;
	if (!mod)
		return ksplice_in_core_text(h, addr) &&
		       ksplice_in_core_text(h, addr + size - 1);
	base = (unsigned long)mod->core_layout.base;
	return addr >= base && addr - base < mod->core_layout.text_size &&
	       size <= mod->core_layout.text_size - (addr - base);
}

/*
 * Match function @f at each of @n addresses; record what was found.
 * @mods (or NULL) gives each address's module, referenced by the caller;
 * a unique match in a module takes a reference of its own.  Where the
 * bytes differ is logged only when no address matched: a static name
 * System.map lists several times differs from all copies but one.
 */
static void ksplice_match_one(struct ksplice_module *h, unsigned int f,
			      const unsigned long *addrs,
			      struct module * const *mods, unsigned int n,
			      u8 *buf, struct ksplice_runval *vals)
{
	const struct ksplice_size *s = &h->size_tab[f];
	struct ksplice_match *m = &h->match[f];
	unsigned int c, found = 0, inside = 0, nop = 0;

	for (c = 0; c < n; c++) {
		unsigned long a = addrs[c];
		struct module *mod = mods ? mods[c] : NULL;

		if (!ksplice_text_ok(h, a, s->size, mod))
			continue;
		inside++;
		if (!ksplice_try(h, f, a, mod, buf, vals, &nop, &m->traced,
				 false))
			continue;
		if (found++ == 0) {
			m->addr = a;
			m->mod = mod;
			m->entry_nop = nop;
			ksplice_commit(h, f, vals, true);
		}
	}
	if (found == 1) {
		m->status = KSPLICE_MATCH_FOUND;
		h->matched++;
		if (m->mod)
			__module_get(m->mod);
	} else if (found > 1) {
		m->status = KSPLICE_MATCH_SEVERAL;
		m->addr = 0;
		m->mod = NULL;
		ksplice_commit(h, f, vals, false);
	} else {
		m->status = inside ? KSPLICE_MATCH_FAILED : KSPLICE_MATCH_OUTSIDE;
		for (c = 0; c < n; c++)
			if (ksplice_text_ok(h, addrs[c], s->size,
					    mods ? mods[c] : NULL))
				ksplice_try(h, f, addrs[c], mods ? mods[c] : NULL,
					    buf, vals, &nop, &m->traced, true);
	}
}

#define KSPLICE_MOD_CANDIDATES 16

/* Copies of one name among the loaded modules' symbols. */
struct ksplice_mod_cands {
	const char *name;
	unsigned int n;
	unsigned long addrs[KSPLICE_MOD_CANDIDATES];
	struct module *mods[KSPLICE_MOD_CANDIDATES];
};

/* Called under module_mutex, so @mod is alive while we take a reference. */
static int ksplice_mod_cand(void *data, const char *name, struct module *mod,
			    unsigned long addr)
{
	struct ksplice_mod_cands *mc = data;

	/* an update's own modules carry copies under other names anyway */
	if (strcmp(name, mc->name) || !strncmp(mod->name, "ksplice_", 8))
		return 0;
	if (mc->n == KSPLICE_MOD_CANDIDATES || !try_module_get(mod))
		return 0;
	mc->addrs[mc->n] = addr;
	mc->mods[mc->n] = mod;
	mc->n++;
	return 0;
}

/*
 * A function System.map does not list may be in a loaded module: every
 * module symbol of that name is a candidate (static names repeat across
 * modules), and the bytes decide as for the kernel's own functions.
 */
static void ksplice_match_modules(struct ksplice_module *h,
				  ksplice_mod_syms_fn mod_syms, u8 *buf,
				  struct ksplice_runval *vals)
{
	struct ksplice_mod_cands *mc;
	unsigned int f, c;

	mc = kmalloc(sizeof(*mc), GFP_KERNEL);
	if (!mc)
		return;
	for (f = 0; f < h->nr_sizes; f++) {
		if (h->match[f].status != KSPLICE_MATCH_OUTSIDE ||
		    h->size_tab[f].nr_candidates)
			continue;
		mc->name = h->size_tab[f].name;
		mc->n = 0;
		mod_syms(ksplice_mod_cand, mc);
		if (!mc->n)
			continue;
		ksplice_match_one(h, f, mc->addrs, mc->mods, mc->n, buf, vals);
		if (h->match[f].mod)
			pr_info("%s run-pre: %s found in module %s\n", KSPLICE_ID,
				h->size_tab[f].name, h->match[f].mod->name);
		for (c = 0; c < mc->n; c++)
			module_put(mc->mods[c]);
	}
	kfree(mc);
}

/*
 * What a matched function's code says settles two kinds of function:
 * - one System.map does not list, that the call or jump reaches;
 * - a static one whose pre code matches several running copies, as a
 *   header's static inline function outlined alike in two files does
 *   (shared case 12: get_proc_task in fs/proc/base.o and fd.o).  Its label
 *   is its object's own (ksplice_tasks.names.symbol_label), so only a
 *   function of the same object, calling or referring to it, gives a
 *   value for it: the copy that function uses.
 * Either way the bytes there must still match.  Repeat while that finds
 * more.
 */
static void ksplice_match_by_value(struct ksplice_module *h, u8 *buf,
				   struct ksplice_runval *vals)
{
	bool progress = true;
	unsigned int f;

	while (progress) {
		progress = false;
		for (f = 0; f < h->nr_sizes; f++) {
			const struct ksplice_match *m = &h->match[f];
			unsigned long a;

			if (m->status != KSPLICE_MATCH_SEVERAL &&
			    (m->status != KSPLICE_MATCH_OUTSIDE ||
			     h->size_tab[f].nr_candidates))
				continue;
			if (ksplice_runpre_lookup(h, h->size_tab[f].label, &a))
				continue;
			ksplice_match_one(h, f, &a, NULL, 1, buf, vals);
			progress |= m->status == KSPLICE_MATCH_FOUND;
		}
	}
}

/**
 * ksplice_runpre_free() - Forget run-pre results.
 * @h: the helper
 *
 * Drops the references on modules that matched and frees the results.
 */
void ksplice_runpre_free(struct ksplice_module *h)
{
	unsigned int f;

	for (f = 0; h->match && f < h->nr_sizes; f++)
		if (h->match[f].mod)
			module_put(h->match[f].mod);
	kfree(h->match);
	kfree(h->runval);
	kfree(h->by_site);
	kfree(h->by_code);
	kfree(h->relax);
	kfree(h->pending);
	h->relax = NULL;
	h->pending = NULL;
	kfree(h->symbuf);
	h->symbuf = NULL;
	h->match = NULL;
	h->runval = NULL;
	h->by_site = NULL;
	h->by_code = NULL;
	h->matched = 0;
}

static int ksplice_runpre_alloc(struct ksplice_module *h,
				struct ksplice_runval **vals, u8 **buf)
{
	unsigned long maxsize = 1;
	unsigned int f;

	ksplice_runpre_free(h);
	h->match = kcalloc(h->nr_sizes ? h->nr_sizes : 1, sizeof(*h->match),
			   GFP_KERNEL);
	h->runval = kcalloc(h->nr_relocs ? h->nr_relocs : 1, sizeof(*h->runval),
			    GFP_KERNEL);
	*vals = kcalloc(h->nr_relocs ? h->nr_relocs : 1, sizeof(**vals), GFP_KERNEL);
	for (f = 0; f < h->nr_sizes; f++)
		maxsize = max(maxsize, h->size_tab[f].size);
	*buf = kvmalloc(maxsize, GFP_KERNEL);
	h->symbuf = kmalloc(KSYM_SYMBOL_LEN, GFP_KERNEL);
	/* a walk moves at most once per relocation or code site, expects once per site */
	h->max_relax = h->nr_relocs + h->nr_codesites;
	h->max_pending = h->nr_codesites;
	h->relax = kcalloc(h->max_relax + 1, sizeof(*h->relax), GFP_KERNEL);
	h->pending = kcalloc(h->max_pending + 1, sizeof(*h->pending), GFP_KERNEL);
	if (!h->match || !h->runval || !*vals || !*buf || !h->symbuf ||
	    !h->relax || !h->pending)
		return -ENOMEM;
	return ksplice_sort_sites(h);
}

/* Match every function at its System.map candidates. */
static int ksplice_match_listed(struct ksplice_module *h, u8 *buf,
				struct ksplice_runval *vals)
{
	unsigned int f, c;

	for (f = 0; f < h->nr_sizes; f++) {
		const struct ksplice_size *s = &h->size_tab[f];
		unsigned long *addrs;

		addrs = kcalloc(s->nr_candidates ? s->nr_candidates : 1,
				sizeof(*addrs), GFP_KERNEL);
		if (!addrs)
			return -ENOMEM;
		for (c = 0; c < s->nr_candidates; c++)
			addrs[c] = ksplice_run_addr(h, s->candidates[c]);
		ksplice_match_one(h, f, addrs, NULL, s->nr_candidates, buf, vals);
		kfree(addrs);
	}
	return 0;
}

/*
 * Does the update rest on the helper function labelled @label?  It does
 * when the primary patches it, or when the primary's code refers to it (a
 * relocation the update resolves itself): the new code then calls or reads
 * what the source says it is.
 */
static bool ksplice_runpre_needed(const struct ksplice_module *km,
				  const char *label)
{
	unsigned int i;

	for (i = 0; i < km->nr_patches; i++)
		if (!strcmp(km->patch_tab[i].label, label))
			return true;
	for (i = 0; i < km->nr_relocs; i++)
		if (!strcmp(km->reloc_tab[i].label, label))
			return true;
	return false;
}

/*
 * Log what matching found; abort when a function the update needs has
 * copies in the running kernel and none matched, or several matched and
 * nothing told them apart.  A function it does not need (same object,
 * neither patched nor referred to by the new code) that failed is only
 * reported: its values are not used (a value only it could give leaves the
 * primary's relocation unresolved, which aborts later).
 */
static int ksplice_runpre_verdict(struct ksplice_module *km)
{
	const struct ksplice_module *h = km->helper;
	unsigned int f, failed = 0, unneeded = 0;
	bool traced = false;

	for (f = 0; f < h->nr_sizes; f++) {
		const char *name = h->size_tab[f].name;

		if (h->match[f].status == KSPLICE_MATCH_SEVERAL &&
		    ksplice_runpre_needed(km, h->size_tab[f].label)) {
			failed++;
			pr_warn("%s run-pre: several running copies of %s match the update's pre code, and no matched function of its object tells which\n",
				KSPLICE_ID, name);
			continue;
		}
		if (h->match[f].status != KSPLICE_MATCH_FAILED)
			continue;
		if (!ksplice_runpre_needed(km, h->size_tab[f].label)) {
			unneeded++;
			pr_info("%s run-pre: no running copy of %s matches the update's pre code; not needed by the update\n",
				KSPLICE_ID, name);
			continue;
		}
		failed++;
		traced |= h->match[f].traced;
		pr_warn("%s run-pre: no running copy of %s matches the update's pre code%s\n",
			KSPLICE_ID, name,
			h->match[f].traced ? " (its entry is traced)" : "");
	}
	pr_info("%s run-pre: %u of %u functions matched, %u failed, %u failed but not needed\n",
		KSPLICE_ID, h->matched, h->nr_sizes, failed, unneeded);
	if (!failed)
		return 0;
	return ksplice_fail(km, traced ? KSPLICE_ABORT_TRACED :
				KSPLICE_ABORT_NO_MATCH);
}

/**
 * ksplice_runpre() - Match the helper's functions against the running kernel.
 * @km: the primary applying the update (its lock held); its helper's
 *	functions are matched, under the helper's lock
 * @mod_syms: lists the loaded modules' symbols, for functions System.map
 *	does not have; may be NULL
 *
 * Every function the helper carries is compared, byte by byte outside its
 * relocation fields, with each of its candidates in the running kernel;
 * the fields of a matching copy give the values of their symbols.  The
 * results replace any earlier ones and stay in the helper for
 * ksplice_runpre_lookup() and ksplice_runpre_function().
 *
 * Return: 0, or a negative errno with the abort cause recorded in @km:
 * traced or no_match when a function the update needs (patched, or referred
 * to by the primary's code) has copies in the running kernel's text and none
 * of them matches, nomem.
 */
int ksplice_runpre(struct ksplice_module *km, ksplice_mod_syms_fn mod_syms)
{
	struct ksplice_module *h = km->helper;
	struct ksplice_runval *vals = NULL;
	u8 *buf = NULL;
	int ret;

	/* the helper's own lock guards its run-pre state against sysfs readers */
	mutex_lock(&h->lock);
	if (ksplice_runpre_alloc(h, &vals, &buf) ||
	    ksplice_match_listed(h, buf, vals)) {
		ret = ksplice_fail(km, KSPLICE_ABORT_NOMEM);
		goto out;
	}
	if (mod_syms)
		ksplice_match_modules(h, mod_syms, buf, vals);
	ksplice_match_by_value(h, buf, vals);
	ret = ksplice_runpre_verdict(km);
out:
	mutex_unlock(&h->lock);
	kvfree(buf);
	kfree(vals);
	return ret;
}

/**
 * ksplice_runpre_lookup() - A symbol's value as run-pre matching saw it.
 * @h: the helper, or NULL
 * @label: the symbol's label: its System.map name, or for a static symbol
 *	the name tagged with its object's tag (ksplice_tables.h)
 * @value: set to the value on success
 *
 * The value is a matched function of that label, or one read at a
 * relocation against it.
 *
 * Return: 0; -ENOENT when run-pre matching has nothing for @label,
 * -EINVAL when it saw several values.
 */
int ksplice_runpre_lookup(const struct ksplice_module *h, const char *label,
			  unsigned long *value)
{
	unsigned int i;
	bool have = false;

	if (!h || !h->match)
		return -ENOENT;
	for (i = 0; i < h->nr_sizes; i++) {
		if (h->match[i].status != KSPLICE_MATCH_FOUND ||
		    strcmp(h->size_tab[i].label, label))
			continue;
		if (have && *value != h->match[i].addr)
			return -EINVAL;
		*value = h->match[i].addr;
		have = true;
	}
	for (i = 0; i < h->nr_relocs; i++) {
		if (!h->runval[i].have || strcmp(h->reloc_tab[i].label, label))
			continue;
		if (have && *value != h->runval[i].value)
			return -EINVAL;
		*value = h->runval[i].value;
		have = true;
	}
	return have ? 0 : -ENOENT;
}

/**
 * ksplice_runpre_function() - The running copy of a function, if unique.
 * @h: the helper, or NULL
 * @label: the function's label (see ksplice_runpre_lookup())
 * @size: set to the size of the helper's copy on success
 *
 * Return: the match of the helper function labelled @label when exactly
 * one running address matched, else NULL.
 */
const struct ksplice_match *ksplice_runpre_function(const struct ksplice_module *h,
						    const char *label,
						    unsigned long *size)
{
	const struct ksplice_match *found = NULL;
	unsigned int i;

	if (!h || !h->match)
		return NULL;
	for (i = 0; i < h->nr_sizes; i++) {
		if (h->match[i].status != KSPLICE_MATCH_FOUND ||
		    strcmp(h->size_tab[i].label, label))
			continue;
		if (found && found->addr != h->match[i].addr)
			return NULL;
		found = &h->match[i];
		*size = h->size_tab[i].size;
	}
	return found;
}

/**
 * ksplice_runpre_not_loaded() - Is a function in a module that is not loaded?
 * @h: the helper, or NULL
 * @label: the function's label (see ksplice_runpre_lookup())
 *
 * Return: true when the helper carries @label, System.map does not list it
 * and run-pre matching found it in no loaded module either.
 */
bool ksplice_runpre_not_loaded(const struct ksplice_module *h, const char *label)
{
	unsigned int i;
	bool seen = false;

	if (!h || !h->match)
		return false;
	for (i = 0; i < h->nr_sizes; i++) {
		if (strcmp(h->size_tab[i].label, label))
			continue;
		if (h->match[i].status != KSPLICE_MATCH_OUTSIDE ||
		    h->size_tab[i].nr_candidates)
			return false;
		seen = true;
	}
	return seen;
}
