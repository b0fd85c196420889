// SPDX-License-Identifier: GPL-2.0
/*
 * Primary module of a ksplice update: carries the replacement code and the
 * table of functions to patch.  At this stage it only resolves its tables
 * and reports; the helper may attach to it (or never load).
 */
#define pr_fmt(fmt) "ksplice: " fmt

#include <linux/err.h>
#include <linux/module.h>

#include "sysfs.h"

static struct ksplice_module *ksplice_primary;

/**
 * ksplice_helper_attach() - The helper's link to its primary.
 * @helper: the helper's state once it has resolved its tables, or NULL
 *	before it unloads
 *
 * Exported under a name with the update's id; the helper finds it with
 * symbol_get(), which holds a reference on this module meanwhile, so the
 * primary outlives the link.
 *
 * Return: 0.
 */
int ksplice_helper_attach(struct ksplice_module *helper)
{
	ksplice_set_helper(ksplice_primary, helper);
	if (helper)
		pr_info("%s primary: helper attached\n", KSPLICE_ID);
	return 0;
}
EXPORT_SYMBOL_GPL(ksplice_helper_attach);

static int __init ksplice_primary_init(void)
{
	struct ksplice_module *km = ksplice_load(THIS_MODULE, "primary");

	if (IS_ERR(km))
		return PTR_ERR(km);
	km->jump_start = ksplice_jump_start;
	km->jump_stop = ksplice_jump_stop;
	ksplice_primary = km;
	return 0;
}

static void __exit ksplice_primary_exit(void)
{
	ksplice_unload(ksplice_primary);
}

module_init(ksplice_primary_init);
module_exit(ksplice_primary_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ksplice update " KSPLICE_ID " (primary)");
