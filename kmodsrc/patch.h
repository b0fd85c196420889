/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Apply and reverse (patch.c, primary side): resolve the old functions and
 * the replacement code against the helper's run-pre results, then write
 * the jumps under stop_machine.
 */
#ifndef _KSPLICE_PATCH_H
#define _KSPLICE_PATCH_H

#include <asm/text-patching.h>

#include "ksplice.h"

/* One old function and its replacement, once resolved (primary side). */
struct ksplice_patch_rt {
	unsigned long oldaddr;		/* running old function */
	unsigned long oldsize;		/* its size (the pre copy's) */
	unsigned long site;		/* where the jump goes */
	unsigned long repladdr;
	unsigned long replsize;
	struct module *mod;		/* module of the old function (a reference) */
	u64 oldhash;			/* of the old function, before apply */
	u8 saved[JMP32_INSN_SIZE];	/* bytes the jump replaced */
	u8 jump[JMP32_INSN_SIZE];	/* jmp rel32 to the replacement */
};

int ksplice_apply(struct ksplice_module *km);
int ksplice_reverse(struct ksplice_module *km);
void ksplice_patch_free(struct ksplice_module *km);
u64 ksplice_hash(unsigned long addr, unsigned long size);

#endif /* _KSPLICE_PATCH_H */
