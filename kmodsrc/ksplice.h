/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared state of a ksplice update module (primary or helper).
 *
 * Both modules of an update are built from the same sources; each has its
 * own .ksplice.* tables (ksplice_tables.h) and its own sysfs directory
 * /sys/module/<module>/ksplice, so updates can stack and unload in any
 * order without a core module owning a shared directory.
 *
 * The types here are shared by every layer of the sources; each layer
 * uses only the ones above it:
 *
 *   resolve.c   KASLR offset, System.map resolution, imports (resolve.h)
 *   runpre.c    run-pre matching of the helper's code (runpre.h)
 *   patch.c     apply and reverse, primary side (patch.h)
 *   sysfs.c     sysfs files, load and unload (sysfs.h)
 *   primary.c, helper.c   module init and exit
 *
 * Functions returning int return 0 or a negative errno (the sort()
 * comparator aside).  When an apply or reverse aborts, the code that
 * finds the reason records it in the primary with ksplice_fail(), which
 * returns the errno for it; callers pass that errno up unchanged.
 */
#ifndef _KSPLICE_H
#define _KSPLICE_H

#include <linux/kobject.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/types.h>

#include "ksplice_abort.h"
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

enum ksplice_stage {
	KSPLICE_STAGE_LOADING,
	KSPLICE_STAGE_PREPARED,		/* tables resolved, nothing patched */
	KSPLICE_STAGE_APPLIED,
	KSPLICE_STAGE_REVERSED,
	KSPLICE_STAGE_ABORTED,
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

/*
 * The new code's jump entries, one array: defined in each collection by
 * the link script of its tables (ksplice_tasks/stages/kmod.py).
 */
extern char ksplice_jump_start[], ksplice_jump_stop[];

/* Defined by the layer that owns them (runpre.h, patch.h). */
struct ksplice_match;
struct ksplice_runval;
struct ksplice_site;
struct ksplice_relax;
struct ksplice_pending;
struct ksplice_patch_rt;

struct ksplice_module {
	struct kobject kobj;		/* /sys/module/<module>/ksplice */
	struct module *owner;
	const char *role;		/* "primary" or "helper" */
	struct mutex lock;		/* stage, helper, everything below */
	enum ksplice_stage stage;
	enum ksplice_abort abort;	/* why the last operation failed */
	unsigned long kaslr_offset;

	/* this module's own tables (the primary reads the helper's) */
	const struct ksplice_reloc *reloc_tab;
	const struct ksplice_size *size_tab;
	const struct ksplice_patch *patch_tab;
	const struct ksplice_import *import_tab;
	const struct ksplice_codesite *codesite_tab;
	unsigned int nr_relocs;
	unsigned int nr_sizes;
	unsigned int nr_patches;
	unsigned int nr_imports;
	unsigned int nr_codesites;
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
	struct ksplice_site *by_code;	/* code sites sorted by address */
	struct ksplice_relax *relax;	/* a walk's moves, max_relax of them */
	struct ksplice_pending *pending;	/* a walk's branches, max_pending */
	unsigned int max_relax;
	unsigned int max_pending;
	unsigned int matched;		/* functions FOUND */
	char *symbuf;			/* KSYM_SYMBOL_LEN, for kallsyms checks */

	/* primary: patching */
	struct ksplice_module *helper;	/* the attached helper */
	struct ksplice_patch_rt *patch_rt;
	bool resolved;			/* patch_rt and relocations are final */
	char *jump_start;		/* the new code's jump entries ... */
	char *jump_stop;		/* ...(kmod.JUMP_LINK_SCRIPT) */
	unsigned int tries;		/* stop_machine attempts, last operation */
	u64 pause_ns;			/* last stop_machine call, whole */
	u64 stopped_ns;			/* ...and the work inside it */
	u64 pause_max_ns;
	unsigned int operations;	/* successful applies and reverses */
	unsigned int tasks_checked;	/* stacks checked, last stop_machine */
	unsigned int idle_checked;	/* ...of them per-CPU idle tasks */
	unsigned long int3_hits;		/* traps sent on to replacements */
};

/**
 * ksplice_fail() - Record why the current apply or reverse aborts.
 * @km: the primary running the operation (its lock held)
 * @cause: the reason, shown in sysfs as abort_cause
 *
 * Return: the negative errno the stage write fails with for @cause.
 */
static inline int ksplice_fail(struct ksplice_module *km,
			       enum ksplice_abort cause)
{
	km->abort = cause;
	return ksplice_abort_errno(cause);
}

int ksplice_helper_attach(struct ksplice_module *helper);

#endif /* _KSPLICE_H */
