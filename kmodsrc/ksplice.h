/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared state of a ksplice update module (primary or helper).
 *
 * Both modules of an update are built from the same sources; each has its
 * own .ksplice.* tables (ksplice_tables.h) and its own sysfs directory
 * /sys/module/<module>/ksplice, so updates can stack and unload in any
 * order without a core module owning a shared directory.
 */
#ifndef _KSPLICE_H
#define _KSPLICE_H

#include <linux/kobject.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/types.h>

#include "ksplice_tables.h"
#include "modcommon.auto.h"

#define KSPLICE_PASTE2(a, b) a##b
#define KSPLICE_PASTE(a, b) KSPLICE_PASTE2(a, b)

/*
 * Exported by the primary, looked up by the helper with symbol_get() so
 * that either module loads without the other.  The id keeps the name
 * unique among stacked updates.
 */
#define ksplice_helper_attach KSPLICE_PASTE(ksplice_helper_attach_, KSPLICE_ID_TOKEN)

/* Bytes of the jump written over an old function: jmp rel32. */
#define KSPLICE_JMP_LEN 5

enum ksplice_stage {
	KSPLICE_STAGE_LOADING,
	KSPLICE_STAGE_PREPARED,		/* tables resolved, nothing patched */
	KSPLICE_STAGE_APPLIED,
	KSPLICE_STAGE_REVERSED,
	KSPLICE_STAGE_ABORTED,
};

/* Why the last apply or reverse failed; shown in sysfs as abort_cause. */
enum ksplice_abort {
	KSPLICE_ABORT_NONE,
	KSPLICE_ABORT_NO_HELPER,	/* first apply needs the helper */
	KSPLICE_ABORT_MAP_MISMATCH,	/* System.map is not the running kernel's */
	KSPLICE_ABORT_NO_MATCH,		/* run-pre matching failed */
	KSPLICE_ABORT_TRACED,		/* ftrace or livepatch owns an entry */
	KSPLICE_ABORT_UNRESOLVED,	/* a symbol has no (unique) value */
	KSPLICE_ABORT_CODE_BUSY,	/* a task is inside the code, after retries */
	KSPLICE_ABORT_CODE_CHANGED,	/* patch site bytes are not what we saved */
	KSPLICE_ABORT_ALREADY_APPLIED,
	KSPLICE_ABORT_NOT_APPLIED,
	KSPLICE_ABORT_NOMEM,
	KSPLICE_ABORT_BAD_ENCODING,	/* a value does not fit its field */
	KSPLICE_ABORT_NOT_LOADED,	/* a replaced function's module is not loaded */
};

enum ksplice_sym_status {
	KSPLICE_SYM_MISSING,		/* no System.map candidate */
	KSPLICE_SYM_RESOLVED,		/* exactly one candidate */
	KSPLICE_SYM_AMBIGUOUS,		/* several: run-pre matching decides */
};

/* What load-time resolution found for one table entry. */
struct ksplice_symstate {
	unsigned long addr;		/* running address when resolved */
	u8 status;			/* enum ksplice_sym_status */
	bool checked;			/* kallsyms sanity check ran */
	bool mismatch;			/* ...and named another symbol */
};

struct ksplice_counts {
	unsigned int total;
	unsigned int resolved;
	unsigned int ambiguous;
	unsigned int missing;
};

/* A relocation site of the helper's code, for walking a function in order. */
struct ksplice_site {
	unsigned long addr;		/* section_addr + offset */
	unsigned int reloc;		/* index into the reloc table */
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

/* One old function and its replacement, once resolved (primary side). */
struct ksplice_patch_rt {
	unsigned long oldaddr;		/* running old function */
	unsigned long oldsize;		/* its size (the pre copy's) */
	unsigned long site;		/* where the jump goes */
	unsigned long repladdr;
	unsigned long replsize;
	struct module *mod;		/* module of the old function (a reference) */
	u64 oldhash;			/* of the old function, before apply */
	u8 saved[KSPLICE_JMP_LEN];	/* bytes the jump replaced */
	u8 jump[KSPLICE_JMP_LEN];
};

struct ksplice_module {
	struct kobject kobj;		/* /sys/module/<module>/ksplice */
	struct module *owner;
	const char *role;		/* "primary" or "helper" */
	struct mutex lock;		/* stage, helper, everything below */
	enum ksplice_stage stage;
	enum ksplice_abort abort;
	unsigned long kaslr_offset;

	/* this module's own tables (the primary reads the helper's) */
	const struct ksplice_reloc *reloc_tab;
	const struct ksplice_size *size_tab;
	const struct ksplice_patch *patch_tab;
	const struct ksplice_import *import_tab;
	unsigned int nr_relocs;
	unsigned int nr_sizes;
	unsigned int nr_patches;
	unsigned int nr_imports;
	struct ksplice_symstate *reloc_state;
	struct ksplice_symstate *size_state;
	struct ksplice_symstate *patch_state;
	struct ksplice_symstate *import_state;

	struct ksplice_counts relocs;	/* over the relocation table */
	unsigned int checked;		/* addresses sanity-checked, all tables */
	unsigned int mismatched;

	/* helper: run-pre matching */
	struct ksplice_match *match;	/* per size entry */
	struct ksplice_runval *runval;	/* per reloc entry */
	struct ksplice_site *by_site;	/* relocations sorted by site */
	unsigned int matched;		/* functions FOUND */
	char *symbuf;			/* KSYM_SYMBOL_LEN, for kallsyms checks */

	/* primary: patching */
	struct ksplice_module *helper;	/* the attached helper */
	struct ksplice_patch_rt *patch_rt;
	bool resolved;			/* patch_rt and relocations are final */
	unsigned int tries;		/* stop_machine attempts, last operation */
	u64 pause_ns;			/* last stop_machine call, whole */
	u64 stopped_ns;			/* ...and the work inside it */
	u64 pause_max_ns;
	unsigned int operations;	/* successful applies and reverses */
};

/* common.c */
struct ksplice_module *ksplice_load(struct module *owner, const char *role);
void ksplice_unload(struct ksplice_module *km);
void ksplice_set_helper(struct ksplice_module *km, struct ksplice_module *helper);
unsigned long ksplice_run_addr(const struct ksplice_module *km,
			       unsigned long map_addr);
bool ksplice_in_core_text(const struct ksplice_module *km, unsigned long addr);
const char *ksplice_abort_name(int cause);
u64 ksplice_hash(unsigned long addr, unsigned long size);
bool ksplice_module_symbol(const struct ksplice_module *km, char *buf,
			   unsigned long addr, const char *name);

/*
 * The kernel's module_kallsyms_on_each_symbol(): every symbol of every
 * loaded module, with the module, under module_mutex.  Not exported; the
 * primary imports it.  Functions of a module are not in System.map.
 */
typedef int (*ksplice_mod_syms_fn)(int (*fn)(void *data, const char *name,
					      struct module *mod,
					      unsigned long addr),
				   void *data);

/* runpre.c */
int ksplice_runpre(struct ksplice_module *helper, ksplice_mod_syms_fn mod_syms);
bool ksplice_runpre_not_loaded(const struct ksplice_module *helper,
			       const char *name);
void ksplice_runpre_free(struct ksplice_module *helper);
int ksplice_runpre_lookup(const struct ksplice_module *helper,
			  const char *name, unsigned long *value);
const struct ksplice_match *ksplice_runpre_function(const struct ksplice_module *helper,
						    const char *name,
						    unsigned long *size);

/* patch.c */
int ksplice_apply(struct ksplice_module *km);
int ksplice_reverse(struct ksplice_module *km);
void ksplice_patch_free(struct ksplice_module *km);

int ksplice_helper_attach(struct ksplice_module *helper);

#endif /* _KSPLICE_H */
