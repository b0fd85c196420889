// SPDX-License-Identifier: GPL-2.0
/*
 * Helper module of a ksplice update: carries the pre code that run-pre
 * matching compares with the running kernel.  It resolves its own tables
 * and, when the primary of the same update is loaded, attaches to it.
 */
#define pr_fmt(fmt) "ksplice: " fmt

#include <linux/err.h>
#include <linux/module.h>

#include "sysfs.h"

static struct ksplice_module *ksplice_helper;
static int (*ksplice_attach_fn)(struct ksplice_module *helper);

static int __init ksplice_helper_init(void)
{
	struct ksplice_module *km = ksplice_load(THIS_MODULE, "helper");

	if (IS_ERR(km))
		return PTR_ERR(km);
	ksplice_helper = km;

	/* A weak link: the primary may not be loaded (yet). */
	ksplice_attach_fn = symbol_get(ksplice_helper_attach);
	if (ksplice_attach_fn)
		ksplice_attach_fn(km);
	return 0;
}

static void __exit ksplice_helper_exit(void)
{
	if (ksplice_attach_fn) {
		ksplice_attach_fn(NULL);
		symbol_put(ksplice_helper_attach);
	}
	ksplice_unload(ksplice_helper);
}

module_init(ksplice_helper_init);
module_exit(ksplice_helper_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ksplice update " KSPLICE_ID " (helper)");
