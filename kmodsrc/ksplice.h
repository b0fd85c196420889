/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared state of a ksplice update module (primary or helper).
 *
 * Both modules of an update are built from the same common.c; each has its
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

struct ksplice_module {
	struct kobject kobj;		/* /sys/module/<module>/ksplice */
	struct module *owner;
	const char *role;		/* "primary" or "helper" */
	struct mutex lock;		/* stage, helper */
	enum ksplice_stage stage;
	unsigned long kaslr_offset;

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

	struct ksplice_module *helper;	/* primary: the attached helper */
};

struct ksplice_module *ksplice_load(struct module *owner, const char *role);
void ksplice_unload(struct ksplice_module *km);
void ksplice_set_helper(struct ksplice_module *km, struct ksplice_module *helper);

int ksplice_helper_attach(struct ksplice_module *helper);

#endif /* _KSPLICE_H */
