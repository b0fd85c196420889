/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Run-pre matching (runpre.c): the helper's pre code against the running
 * kernel, and what it found, for the primary to patch with.
 */
#ifndef _KSPLICE_RUNPRE_H
#define _KSPLICE_RUNPRE_H

#include <linux/build_bug.h>
#include <linux/string.h>
#include <asm/nops.h>
#include <asm/text-patching.h>

#include "ksplice.h"

/*
 * A relocation site or a code site (struct ksplice_codesite) of the
 * helper's code, for walking a function in order.
 */
struct ksplice_site {
	unsigned long addr;		/* section_addr + offset */
	unsigned int reloc;		/* index into the reloc or code-site table */
};

/* From pre offset @pre on, the running copy is @delta bytes further on. */
struct ksplice_relax {
	unsigned long pre;
	long delta;
};

/* A branch of the running copy to @run, found at a site going to pre offset @pre. */
struct ksplice_pending {
	long pre;
	unsigned long run;
};

/* Run-pre matching result for one helper function (helper side). */
enum ksplice_match_status {
	KSPLICE_MATCH_UNTRIED,
	KSPLICE_MATCH_FOUND,		/* exactly one running copy matched */
	KSPLICE_MATCH_SEVERAL,		/* identical copies: address unknown */
	KSPLICE_MATCH_OUTSIDE,		/* no candidate in core kernel text */
	KSPLICE_MATCH_FAILED,		/* candidates exist, none matched */
};

struct ksplice_match {
	unsigned long addr;		/* running address when FOUND */
	struct module *mod;		/* ...in this loaded module (a reference) */
	unsigned int entry_nop;		/* end of the ftrace entry NOP, or 0 */
	u8 status;			/* enum ksplice_match_status */
	bool traced;			/* failed because its entry is traced */
};

/* A value run-pre matching read out of running code (helper side). */
struct ksplice_runval {
	unsigned long value;
	bool have;
};

/*
 * The kernel's module_kallsyms_on_each_symbol(): every symbol of every
 * loaded module, with the module, under module_mutex.  Not exported; the
 * primary imports it.  Functions of a module are not in System.map.
 */
typedef int (*ksplice_mod_syms_fn)(int (*fn)(void *data, const char *name,
					      struct module *mod,
					      unsigned long addr),
				   void *data);

/*
 * The NOPs of <asm/nops.h> by length, as add_nops() of
 * arch/x86/kernel/alternative.c writes them (chunks of at most
 * KSPLICE_NOP_MAX); the 5-byte one is also what ftrace writes.
 */
#define KSPLICE_NOP_MAX		ASM_NOP_MAX
static const u8 ksplice_add_nops[KSPLICE_NOP_MAX + 1][KSPLICE_NOP_MAX] = {
	[1] = { BYTES_NOP1 }, [2] = { BYTES_NOP2 }, [3] = { BYTES_NOP3 },
	[4] = { BYTES_NOP4 }, [5] = { BYTES_NOP5 }, [6] = { BYTES_NOP6 },
	[7] = { BYTES_NOP7 }, [8] = { BYTES_NOP8 },
};

/**
 * ksplice_is_ftrace_nop() - Does code start with the NOP ftrace writes?
 * @p: at least CALL_INSN_SIZE bytes
 *
 * At boot ftrace turns every "call __fentry__" into the 5-byte NOP of
 * <asm/nops.h>.
 *
 * Return: true when @p holds that NOP.
 */
static inline bool ksplice_is_ftrace_nop(const u8 *p)
{
	BUILD_BUG_ON(sizeof((u8 []){ BYTES_NOP5 }) != CALL_INSN_SIZE);
	return !memcmp(p, ksplice_add_nops[CALL_INSN_SIZE], CALL_INSN_SIZE);
}

int ksplice_runpre(struct ksplice_module *km, ksplice_mod_syms_fn mod_syms);
void ksplice_runpre_free(struct ksplice_module *helper);
int ksplice_runpre_lookup(const struct ksplice_module *helper,
			  const char *label, unsigned long *value);
const struct ksplice_match *ksplice_runpre_function(const struct ksplice_module *helper,
						    const char *label,
						    unsigned long *size);
bool ksplice_runpre_not_loaded(const struct ksplice_module *helper,
			       const char *label);
const char *ksplice_match_status_name(unsigned int status);

#endif /* _KSPLICE_RUNPRE_H */
