/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Layout of the .ksplice.* tables that ksplice-create links into the
 * update modules.  Generated from ksplice_tasks/encode/ksplice_tables.py
 * regenerate with: python -m ksplice_tasks.encode.headers
 *
 * Each table starts at a global label named after it and ends with an
 * all-zero entry.  Candidates are System.map addresses.
 */
#ifndef _KSPLICE_TABLES_H
#define _KSPLICE_TABLES_H

#define KSPLICE_RELOC_PCREL 0x1 /* value is S + A - P (P = address of the field) */
#define KSPLICE_RELOC_SIGNED 0x2 /* a field narrower than 8 bytes holds a signed value */
#define KSPLICE_PATCH_FENTRY 0x1 /* the old function starts with call __fentry__ on disk */
#define KSPLICE_SITE_RETURN 0x1 /* kind: jmp __x86_return_thunk (.return_sites) */
#define KSPLICE_SITE_RETPOLINE 0x2 /* kind: call/jmp/jcc __x86_indirect_thunk_<reg> */
#define KSPLICE_SITE_STATIC_CALL 0x3 /* kind: call/jmp/jcc __SCT__<name> (.static_call_sites) */
#define KSPLICE_SITE_JUMP_LABEL 0x4 /* kind: jmp or NOP of a static branch (__jump_table) */
#define KSPLICE_SITE_ALTERNATIVE 0x5 /* kind: an .altinstructions site's original or one entry */
#define KSPLICE_SITE_BRANCH 0x6 /* kind: relative branch compared by target (relaxed jumps) */
#define KSPLICE_CODESITE_ORIGINAL 0x1 /* alternative: the original, as optimize_nops() leaves it */
#define KSPLICE_CODESITE_UNSUPPORTED 0x2 /* alternative: bytes not predictable; refuse if applied */
#define KSPLICE_CODESITE_PARAVIRT 0x4 /* alternative's original: a paravirt site, type in feature */
#define KSPLICE_SITE_PARAVIRT 0x7 /* kind: pv_ops call site (.parainstructions), type in feature */
#define KSPLICE_SITE_SMP_LOCK 0x8 /* kind: lock prefix (.smp_locks) */

/* A relocation the module resolves itself; the site is section_addr + offset. */
struct ksplice_reloc {
	const char *symbol; /* System.map name of the target */
	const char *label; /* symbol, or symbol____<tag> if local to its object */
	const char *section; /* collection section holding the site */
	unsigned long section_addr; /* start of that section in this module */
	unsigned long offset; /* site offset within the section */
	long addend; /* A */
	const unsigned long *candidates; /* System.map addresses of symbol */
	unsigned int nr_candidates; /* entries in candidates */
	unsigned short type; /* ELF relocation type (R_X86_64_*) */
	unsigned char size; /* field size in bytes */
	unsigned char flags; /* KSPLICE_RELOC_* */
};

/* A function carried by this module and where the running kernel may have it. */
struct ksplice_size {
	const char *name; /* System.map name of the function */
	const char *label; /* name, or name____<tag> if local to its object */
	unsigned long size; /* bytes of the copy in this module */
	unsigned long thismod_addr; /* the copy in this module */
	const unsigned long *candidates; /* System.map addresses of name */
	unsigned int nr_candidates; /* entries in candidates */
	unsigned int flags; /* reserved, 0 */
};

/* An old function to redirect to its replacement in the primary. */
struct ksplice_patch {
	const char *oldname; /* System.map name of the old function */
	const char *label; /* oldname, or oldname____<tag> if local */
	const char *replname; /* symbol of the replacement */
	unsigned long oldaddr; /* System.map address if unique, else 0 */
	unsigned long repladdr; /* the replacement in this module */
	unsigned int flags; /* KSPLICE_PATCH_* */
};

/* An unexported kernel symbol the module itself needs (e.g. text_poke). */
struct ksplice_import {
	const char *name; /* System.map name */
	const unsigned long *candidates; /* System.map addresses of name */
	unsigned int nr_candidates; /* entries in candidates */
	unsigned int flags; /* reserved, 0 */
};

/* An instruction of the helper's code the kernel rewrites at boot. */
struct ksplice_codesite {
	unsigned long section_addr; /* start of its section in this module */
	unsigned long offset; /* instruction offset within the section */
	long target; /* jump label: target offset in the section, or -1 */
	unsigned char kind; /* KSPLICE_SITE_* */
	unsigned char len; /* instruction bytes in this module */
	unsigned char reg; /* retpoline: the register (0 = rax ... 15 = r15) */
	unsigned char flags; /* KSPLICE_CODESITE_* */
	unsigned short feature; /* cpuid word (alternative), pv_ops type (paravirt) */
	unsigned char repl_len; /* alternative: bytes of the replacement */
	const unsigned char *template; /* alternative: len final bytes (rel32 zeroed) */
	const char *symbol; /* alternative: System.map name its call/jmp reaches */
	const unsigned long *candidates; /* System.map addresses of symbol */
	unsigned int nr_candidates; /* entries in candidates */
	long addend; /* alternative: the branch goes to symbol + addend */
};

extern const struct ksplice_reloc ksplice_relocs[];
extern const struct ksplice_size ksplice_sizes[];
extern const struct ksplice_patch ksplice_patches[];
extern const struct ksplice_import ksplice_imports[];
extern const struct ksplice_codesite ksplice_codesites[];

#endif /* _KSPLICE_TABLES_H */
