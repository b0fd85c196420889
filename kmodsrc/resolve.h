/* SPDX-License-Identifier: GPL-2.0 */
/*
 * System.map resolution (resolve.c): the KASLR offset, every table entry
 * settled as far as System.map alone can, kallsyms checks, imports.
 */
#ifndef _KSPLICE_RESOLVE_H
#define _KSPLICE_RESOLVE_H

#include "ksplice.h"

int ksplice_resolve_init(struct ksplice_module *km);
void ksplice_resolve_free(struct ksplice_module *km);
unsigned long ksplice_run_addr(const struct ksplice_module *km,
			       unsigned long map_addr);
bool ksplice_in_core_text(const struct ksplice_module *km, unsigned long addr);
bool ksplice_symbol_at(char *buf, unsigned long addr, const char *name);
bool ksplice_module_symbol(const struct ksplice_module *km, char *buf,
			   unsigned long addr, const char *name);
int ksplice_import_lookup(const struct ksplice_module *km, const char *name,
			  unsigned long *addr);
const char *ksplice_sym_status_name(unsigned int status);

#endif /* _KSPLICE_RESOLVE_H */
