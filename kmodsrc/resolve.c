// SPDX-License-Identifier: GPL-2.0
/*
 * System.map resolution, for the primary and the helper alike: find the
 * KASLR offset, walk the .ksplice.* tables and settle each entry as far as
 * its System.map candidates allow, sanity-checking every address inside
 * the kernel image with kallsyms.  Run-pre matching settles the rest.
 */
#define pr_fmt(fmt) "ksplice: " fmt

#include <linux/kallsyms.h>
#include <linux/kernel.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "resolve.h"

/*
 * Resolution details, for debugging: "debug=1" at load.  Not pr_debug():
 * with CONFIG_DYNAMIC_DEBUG and CONFIG_JUMP_LABEL each pr_debug() is a jump
 * label of the module's own, and the primary's __jump_table must stay empty
 * for the new code's entries (patch.c ksplice_link_jumps()).
 */
static bool debug;
module_param(debug, bool, 0644);
MODULE_PARM_DESC(debug, "log how each symbol was resolved");

static const char * const ksplice_status_names[] = {
	[KSPLICE_SYM_MISSING] = "missing",
	[KSPLICE_SYM_RESOLVED] = "resolved",
	[KSPLICE_SYM_AMBIGUOUS] = "ambiguous",
};

/**
 * ksplice_sym_status_name() - Name of a resolution status, for sysfs.
 * @status: an enum ksplice_sym_status
 *
 * Return: "missing", "resolved", "ambiguous" or "unknown".
 */
const char *ksplice_sym_status_name(unsigned int status)
{
	if (status >= ARRAY_SIZE(ksplice_status_names))
		return "unknown";
	return ksplice_status_names[status];
}

/* Only addresses inside the kernel image move with KASLR. */
static bool ksplice_in_image(unsigned long map_addr)
{
	return map_addr >= KSPLICE_MAP_TEXT && map_addr <= KSPLICE_MAP_END;
}

/**
 * ksplice_run_addr() - Where a System.map address is in the running kernel.
 * @km: the module state, for its KASLR offset
 * @map_addr: an address from System.map
 *
 * Return: @map_addr plus the KASLR offset when it is inside the kernel
 * image, else @map_addr (per-cpu offsets, absolute symbols).
 */
unsigned long ksplice_run_addr(const struct ksplice_module *km,
			       unsigned long map_addr)
{
	if (ksplice_in_image(map_addr))
		return map_addr + km->kaslr_offset;
	return map_addr;
}

/**
 * ksplice_in_core_text() - Is a running address in core kernel text?
 * @km: the module state, for its KASLR offset
 * @addr: a running address
 *
 * Core kernel text stays mapped; init text is gone after boot.
 *
 * Return: true when @addr is in _stext.._etext.
 */
bool ksplice_in_core_text(const struct ksplice_module *km, unsigned long addr)
{
	return addr >= KSPLICE_MAP_STEXT + km->kaslr_offset &&
	       addr < KSPLICE_MAP_ETEXT + km->kaslr_offset;
}

/*
 * kallsyms must name @name at exactly @addr ("name+0x0/...").  A cheap
 * guard against a wrong System.map or KASLR offset.  @buf gets what
 * kallsyms says.
 */
static bool ksplice_names_match(char *buf, unsigned long addr, const char *name)
{
	size_t len = strlen(name);

	sprint_symbol(buf, addr);
	return !strncmp(buf, name, len) && !strncmp(buf + len, "+0x0/", 5);
}

/**
 * ksplice_symbol_at() - Does kallsyms name @name at exactly @addr?
 * @buf: KSYM_SYMBOL_LEN bytes; gets what kallsyms says
 * @addr: a running address (kernel image or module)
 * @name: the symbol name
 *
 * Return: true when kallsyms says "@name+0x0/...".
 */
bool ksplice_symbol_at(char *buf, unsigned long addr, const char *name)
{
	return ksplice_names_match(buf, addr, name);
}

/**
 * ksplice_module_symbol() - Is an address a loaded module's symbol @name?
 * @km: the module state, for its KASLR offset
 * @buf: KSYM_SYMBOL_LEN bytes; gets what kallsyms says
 * @addr: a running address outside the kernel image
 * @name: the symbol name
 *
 * A module's static symbols are not in System.map, and may share a name
 * with the kernel's.
 *
 * Return: true when kallsyms names @name at exactly @addr.
 */
bool ksplice_module_symbol(const struct ksplice_module *km, char *buf,
			   unsigned long addr, const char *name)
{
	if (addr >= KSPLICE_MAP_TEXT + km->kaslr_offset &&
	    addr <= KSPLICE_MAP_END + km->kaslr_offset)
		return false;
	return ksplice_names_match(buf, addr, name);
}

static void ksplice_check(struct ksplice_module *km, char *buf,
			  struct ksplice_symstate *st, unsigned long map_addr,
			  const char *name)
{
	unsigned long addr = ksplice_run_addr(km, map_addr);

	if (!ksplice_in_image(map_addr))
		return;
	st->checked = true;
	km->checked++;
	if (ksplice_names_match(buf, addr, name))
		return;
	/*
	 * kallsyms shows one name per address; System.map lists every alias
	 * (SYSCALL_DEFINE0's __x64_sys_X and __do_sys_X, say).  Another
	 * symbol starting exactly there is such an alias: a wrong map or
	 * KASLR offset lands inside functions, not at their first byte.
	 */
	if (strstr(buf, "+0x0/")) {
		if (debug)
			pr_info("%s %s: %s is an alias of %s\n", KSPLICE_ID,
				km->role, name, buf);
		return;
	}
	st->mismatch = true;
	km->mismatched++;
	pr_warn("%s %s: %s (System.map %#lx) is %s\n", KSPLICE_ID,
		km->role, name, map_addr, buf);
}

/* Settle one symbol as far as System.map alone can. */
static void ksplice_resolve(struct ksplice_module *km, char *buf,
			    struct ksplice_symstate *st, const char *name,
			    const unsigned long *cands, unsigned int n)
{
	unsigned int i;

	if (n == 0) {
		st->status = KSPLICE_SYM_MISSING;
		return;
	}
	st->status = n == 1 ? KSPLICE_SYM_RESOLVED : KSPLICE_SYM_AMBIGUOUS;
	if (n == 1)
		st->addr = ksplice_run_addr(km, cands[0]);
	for (i = 0; i < n; i++)
		ksplice_check(km, buf, st, cands[i], name);
}

static void ksplice_count(struct ksplice_counts *c,
			  const struct ksplice_symstate *st)
{
	c->total++;
	if (st->status == KSPLICE_SYM_RESOLVED)
		c->resolved++;
	else if (st->status == KSPLICE_SYM_AMBIGUOUS)
		c->ambiguous++;
	else
		c->missing++;
}

static void ksplice_resolve_relocs(struct ksplice_module *km, char *buf)
{
	unsigned int i;

	for (i = 0; i < km->nr_relocs; i++) {
		const struct ksplice_reloc *r = &km->reloc_tab[i];

		ksplice_resolve(km, buf, &km->reloc_state[i], r->symbol,
				r->candidates, r->nr_candidates);
		ksplice_count(&km->relocs, &km->reloc_state[i]);
		if (debug)
			pr_info("%s %s: %s+%#lx -> %s%+ld: %s\n", KSPLICE_ID,
				km->role, r->section, r->offset, r->symbol,
				r->addend,
				ksplice_sym_status_name(km->reloc_state[i].status));
	}
}

static void ksplice_resolve_patches(struct ksplice_module *km, char *buf)
{
	unsigned int i;

	for (i = 0; i < km->nr_patches; i++) {
		const struct ksplice_patch *p = &km->patch_tab[i];
		struct ksplice_symstate *st = &km->patch_state[i];

		if (p->oldaddr) {
			ksplice_resolve(km, buf, st, p->oldname, &p->oldaddr, 1);
		} else {
			/* run-pre matching will find it among the size candidates */
			st->status = KSPLICE_SYM_AMBIGUOUS;
		}
	}
}

static int ksplice_resolve_tables(struct ksplice_module *km)
{
	unsigned int i;
	char *buf;

	buf = kmalloc(KSYM_SYMBOL_LEN, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	ksplice_resolve_relocs(km, buf);
	for (i = 0; i < km->nr_sizes; i++)
		ksplice_resolve(km, buf, &km->size_state[i], km->size_tab[i].name,
				km->size_tab[i].candidates,
				km->size_tab[i].nr_candidates);
	for (i = 0; i < km->nr_imports; i++)
		ksplice_resolve(km, buf, &km->import_state[i],
				km->import_tab[i].name,
				km->import_tab[i].candidates,
				km->import_tab[i].nr_candidates);
	ksplice_resolve_patches(km, buf);
	kfree(buf);
	return 0;
}

/* Entries before the all-zero terminator: @first is each entry's first member. */
#define KSPLICE_TABLE_LEN(tab, first) ({				\
	unsigned int __n = 0;						\
									\
	while ((tab)[__n].first)					\
		__n++;							\
	__n;								\
})

static int ksplice_alloc_state(struct ksplice_module *km)
{
	km->reloc_tab = ksplice_relocs;
	km->size_tab = ksplice_sizes;
	km->patch_tab = ksplice_patches;
	km->import_tab = ksplice_imports;
	km->codesite_tab = ksplice_codesites;
	km->nr_relocs = KSPLICE_TABLE_LEN(km->reloc_tab, symbol);
	km->nr_sizes = KSPLICE_TABLE_LEN(km->size_tab, name);
	km->nr_patches = KSPLICE_TABLE_LEN(km->patch_tab, oldname);
	km->nr_imports = KSPLICE_TABLE_LEN(km->import_tab, name);
	km->nr_codesites = KSPLICE_TABLE_LEN(km->codesite_tab, section_addr);
	/* kcalloc(0, ...) is ZERO_SIZE_PTR, which kfree accepts */
	km->reloc_state = kcalloc(km->nr_relocs, sizeof(*km->reloc_state), GFP_KERNEL);
	km->size_state = kcalloc(km->nr_sizes, sizeof(*km->size_state), GFP_KERNEL);
	km->patch_state = kcalloc(km->nr_patches, sizeof(*km->patch_state), GFP_KERNEL);
	km->import_state = kcalloc(km->nr_imports, sizeof(*km->import_state), GFP_KERNEL);
	if (!km->reloc_state || !km->size_state || !km->patch_state ||
	    !km->import_state)
		return -ENOMEM;
	return 0;
}

/**
 * ksplice_resolve_init() - Resolve this module's tables from System.map.
 * @km: the module state, not yet visible in sysfs
 *
 * Finds the KASLR offset from the anchor symbol, allocates the per-entry
 * state and settles every entry of the four tables: resolved (one
 * candidate), ambiguous (several) or missing (none).  Candidates inside
 * the kernel image are checked with kallsyms; mismatches are counted.
 *
 * Return: 0, or -ENOMEM.  ksplice_resolve_free() frees what was allocated
 * either way.
 */
int ksplice_resolve_init(struct ksplice_module *km)
{
	int ret;

	km->kaslr_offset = (unsigned long)&KSPLICE_ANCHOR - KSPLICE_MAP_ANCHOR;
	ret = ksplice_alloc_state(km);
	if (ret)
		return ret;
	return ksplice_resolve_tables(km);
}

/**
 * ksplice_resolve_free() - Free what ksplice_resolve_init() allocated.
 * @km: the module state
 */
void ksplice_resolve_free(struct ksplice_module *km)
{
	kfree(km->reloc_state);
	kfree(km->size_state);
	kfree(km->patch_state);
	kfree(km->import_state);
}

/**
 * ksplice_import_lookup() - Address of one of the module's imports.
 * @km: the module state
 * @name: the imported symbol's System.map name
 * @addr: set to the running address on success
 *
 * Return: 0, or -ENOENT when @name is not imported, not resolved to a
 * single address, or failed the kallsyms check.
 */
int ksplice_import_lookup(const struct ksplice_module *km, const char *name,
			  unsigned long *addr)
{
	unsigned int i;

	for (i = 0; i < km->nr_imports; i++) {
		const struct ksplice_symstate *st = &km->import_state[i];

		if (strcmp(km->import_tab[i].name, name))
			continue;
		if (st->status != KSPLICE_SYM_RESOLVED || st->mismatch)
			break;
		*addr = st->addr;
		return 0;
	}
	return -ENOENT;
}
