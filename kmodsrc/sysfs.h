/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Module glue (sysfs.c): the state's lifetime and its sysfs directory,
 * for primary.c and helper.c.
 */
#ifndef _KSPLICE_SYSFS_H
#define _KSPLICE_SYSFS_H

#include "ksplice.h"

struct ksplice_module *ksplice_load(struct module *owner, const char *role);
void ksplice_unload(struct ksplice_module *km);
void ksplice_set_helper(struct ksplice_module *km, struct ksplice_module *helper);

#endif /* _KSPLICE_SYSFS_H */
