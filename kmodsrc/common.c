// SPDX-License-Identifier: GPL-2.0
/*
 * Code shared by the primary and helper modules of a ksplice update: find
 * the KASLR offset, walk the .ksplice.* tables, resolve their symbols from
 * System.map candidates, and report (and, in the primary, take the apply
 * and reverse commands) through sysfs.
 */
#define pr_fmt(fmt) "ksplice: " fmt

#include <linux/kallsyms.h>
#include <linux/kernel.h>
#include <linux/printk.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include <linux/uaccess.h>

#include "ksplice.h"

static const char * const ksplice_stage_names[] = {
	[KSPLICE_STAGE_LOADING] = "loading",
	[KSPLICE_STAGE_PREPARED] = "prepared",
	[KSPLICE_STAGE_APPLIED] = "applied",
	[KSPLICE_STAGE_REVERSED] = "reversed",
	[KSPLICE_STAGE_ABORTED] = "aborted",
};

static const char * const ksplice_abort_names[] = {
	[KSPLICE_ABORT_NONE] = "none",
	[KSPLICE_ABORT_NO_HELPER] = "no_helper",
	[KSPLICE_ABORT_MAP_MISMATCH] = "map_mismatch",
	[KSPLICE_ABORT_NO_MATCH] = "no_match",
	[KSPLICE_ABORT_TRACED] = "traced",
	[KSPLICE_ABORT_UNRESOLVED] = "unresolved",
	[KSPLICE_ABORT_CODE_BUSY] = "code_busy",
	[KSPLICE_ABORT_CODE_CHANGED] = "code_changed",
	[KSPLICE_ABORT_ALREADY_APPLIED] = "already_applied",
	[KSPLICE_ABORT_NOT_APPLIED] = "not_applied",
	[KSPLICE_ABORT_NOMEM] = "nomem",
	[KSPLICE_ABORT_BAD_ENCODING] = "bad_encoding",
	[KSPLICE_ABORT_NOT_LOADED] = "not_loaded",
};

static const char * const ksplice_match_names[] = {
	[KSPLICE_MATCH_UNTRIED] = "untried",
	[KSPLICE_MATCH_FOUND] = "found",
	[KSPLICE_MATCH_SEVERAL] = "several",
	[KSPLICE_MATCH_OUTSIDE] = "outside",
	[KSPLICE_MATCH_FAILED] = "failed",
};

const char *ksplice_abort_name(int cause)
{
	if (cause < 0 || cause >= ARRAY_SIZE(ksplice_abort_names))
		return "unknown";
	return ksplice_abort_names[cause];
}

static const char * const ksplice_status_names[] = {
	[KSPLICE_SYM_MISSING] = "missing",
	[KSPLICE_SYM_RESOLVED] = "resolved",
	[KSPLICE_SYM_AMBIGUOUS] = "ambiguous",
};

/* Only addresses inside the kernel image move with KASLR. */
static bool ksplice_in_image(unsigned long map_addr)
{
	return map_addr >= KSPLICE_MAP_TEXT && map_addr <= KSPLICE_MAP_END;
}

unsigned long ksplice_run_addr(const struct ksplice_module *km,
			       unsigned long map_addr)
{
	if (ksplice_in_image(map_addr))
		return map_addr + km->kaslr_offset;
	return map_addr;
}

/* Core kernel text stays mapped; init text is gone after boot. */
bool ksplice_in_core_text(const struct ksplice_module *km, unsigned long addr)
{
	return addr >= KSPLICE_MAP_STEXT + km->kaslr_offset &&
	       addr < KSPLICE_MAP_ETEXT + km->kaslr_offset;
}

/* FNV-1a over live kernel memory: shows that undo restored every byte. */
u64 ksplice_hash(unsigned long addr, unsigned long size)
{
	u64 h = 0xcbf29ce484222325ULL;
	u8 chunk[64];

	while (size) {
		unsigned long n = min_t(unsigned long, size, sizeof(chunk));
		unsigned long i;

		if (copy_from_kernel_nofault(chunk, (void *)addr, n))
			return 0;
		for (i = 0; i < n; i++)
			h = (h ^ chunk[i]) * 0x100000001b3ULL;
		addr += n;
		size -= n;
	}
	return h;
}

/*
 * kallsyms must name @name at exactly @addr ("name+0x0/...").  A cheap
 * guard against a wrong System.map or KASLR offset.  @buf gets what
 * kallsyms says.
 */
static bool ksplice_names_match(char *buf, unsigned long addr, const char *name)
{
	size_t len = strlen(name);

	sprint_symbol(buf, addr);
	return !strncmp(buf, name, len) && !strncmp(buf + len, "+0x0/", 5);
}

/*
 * Is @addr, outside the kernel image, a loaded module's symbol @name?  A
 * module's static symbols are not in System.map, and may share a name with
 * the kernel's.
 */
bool ksplice_module_symbol(const struct ksplice_module *km, char *buf,
			   unsigned long addr, const char *name)
{
	if (addr >= KSPLICE_MAP_TEXT + km->kaslr_offset &&
	    addr <= KSPLICE_MAP_END + km->kaslr_offset)
		return false;
	return ksplice_names_match(buf, addr, name);
}

static void ksplice_check(struct ksplice_module *km, char *buf,
			  struct ksplice_symstate *st, unsigned long map_addr,
			  const char *name)
{
	unsigned long addr = ksplice_run_addr(km, map_addr);

	if (!ksplice_in_image(map_addr))
		return;
	st->checked = true;
	km->checked++;
	if (ksplice_names_match(buf, addr, name))
		return;
	/*
	 * kallsyms shows one name per address; System.map lists every alias
	 * (SYSCALL_DEFINE0's __x64_sys_X and __do_sys_X, say).  Another
	 * symbol starting exactly there is such an alias: a wrong map or
	 * KASLR offset lands inside functions, not at their first byte.
	 */
	if (strstr(buf, "+0x0/")) {
		pr_debug("%s %s: %s is an alias of %s\n", KSPLICE_ID, km->role,
			 name, buf);
		return;
	}
	st->mismatch = true;
	km->mismatched++;
	pr_warn("%s %s: %s (System.map %#lx) is %s\n", KSPLICE_ID,
		km->role, name, map_addr, buf);
}

/* Settle one symbol as far as System.map alone can. */
static void ksplice_resolve(struct ksplice_module *km, char *buf,
			    struct ksplice_symstate *st, const char *name,
			    const unsigned long *cands, unsigned int n)
{
	unsigned int i;

	if (n == 0) {
		st->status = KSPLICE_SYM_MISSING;
		return;
	}
	st->status = n == 1 ? KSPLICE_SYM_RESOLVED : KSPLICE_SYM_AMBIGUOUS;
	if (n == 1)
		st->addr = ksplice_run_addr(km, cands[0]);
	for (i = 0; i < n; i++)
		ksplice_check(km, buf, st, cands[i], name);
}

static void ksplice_count(struct ksplice_counts *c,
			  const struct ksplice_symstate *st)
{
	c->total++;
	if (st->status == KSPLICE_SYM_RESOLVED)
		c->resolved++;
	else if (st->status == KSPLICE_SYM_AMBIGUOUS)
		c->ambiguous++;
	else
		c->missing++;
}

static unsigned int ksplice_nr_relocs(const struct ksplice_reloc *t)
{
	unsigned int n = 0;

	while (t[n].symbol)
		n++;
	return n;
}

static unsigned int ksplice_nr_sizes(const struct ksplice_size *t)
{
	unsigned int n = 0;

	while (t[n].name)
		n++;
	return n;
}

static unsigned int ksplice_nr_patches(const struct ksplice_patch *t)
{
	unsigned int n = 0;

	while (t[n].oldname)
		n++;
	return n;
}

static unsigned int ksplice_nr_imports(const struct ksplice_import *t)
{
	unsigned int n = 0;

	while (t[n].name)
		n++;
	return n;
}

static int ksplice_resolve_tables(struct ksplice_module *km)
{
	const struct ksplice_patch *p;
	unsigned int i;
	char *buf;

	buf = kmalloc(KSYM_SYMBOL_LEN, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;

	for (i = 0; i < km->nr_relocs; i++) {
		const struct ksplice_reloc *r = &km->reloc_tab[i];

		ksplice_resolve(km, buf, &km->reloc_state[i], r->symbol,
				r->candidates, r->nr_candidates);
		ksplice_count(&km->relocs, &km->reloc_state[i]);
		pr_debug("%s %s: %s+%#lx -> %s%+ld: %s\n", KSPLICE_ID, km->role,
			 r->section, r->offset, r->symbol, r->addend,
			 ksplice_status_names[km->reloc_state[i].status]);
	}
	for (i = 0; i < km->nr_sizes; i++)
		ksplice_resolve(km, buf, &km->size_state[i], km->size_tab[i].name,
				km->size_tab[i].candidates,
				km->size_tab[i].nr_candidates);
	for (i = 0; i < km->nr_imports; i++)
		ksplice_resolve(km, buf, &km->import_state[i],
				km->import_tab[i].name,
				km->import_tab[i].candidates,
				km->import_tab[i].nr_candidates);
	for (i = 0; i < km->nr_patches; i++) {
		struct ksplice_symstate *st = &km->patch_state[i];

		p = &km->patch_tab[i];
		if (p->oldaddr) {
			ksplice_resolve(km, buf, st, p->oldname, &p->oldaddr, 1);
		} else {
			/* run-pre matching will find it among the size candidates */
			st->status = KSPLICE_SYM_AMBIGUOUS;
		}
	}
	kfree(buf);
	return 0;
}

/* -- sysfs ---------------------------------------------------------------- */

static struct ksplice_module *to_km(struct kobject *kobj)
{
	return container_of(kobj, struct ksplice_module, kobj);
}

#define KSPLICE_SHOW_STR(_name, _expr)					\
static ssize_t _name##_show(struct kobject *kobj,			\
			    struct kobj_attribute *attr, char *buf)	\
{									\
	struct ksplice_module *km = to_km(kobj);			\
									\
	return sysfs_emit(buf, "%s\n", _expr);				\
}									\
static struct kobj_attribute _name##_attr = __ATTR_RO_MODE(_name, 0400)

#define KSPLICE_SHOW_UINT(_name, _expr)					\
static ssize_t _name##_show(struct kobject *kobj,			\
			    struct kobj_attribute *attr, char *buf)	\
{									\
	struct ksplice_module *km = to_km(kobj);			\
									\
	return sysfs_emit(buf, "%u\n", _expr);				\
}									\
static struct kobj_attribute _name##_attr = __ATTR_RO_MODE(_name, 0400)

KSPLICE_SHOW_STR(role, km->role);
KSPLICE_SHOW_UINT(relocs, km->relocs.total);
KSPLICE_SHOW_UINT(resolved, km->relocs.resolved);
KSPLICE_SHOW_UINT(ambiguous, km->relocs.ambiguous);
KSPLICE_SHOW_UINT(missing, km->relocs.missing);
KSPLICE_SHOW_UINT(checked, km->checked);
KSPLICE_SHOW_UINT(mismatched, km->mismatched);

static ssize_t id_show(struct kobject *kobj, struct kobj_attribute *attr,
		       char *buf)
{
	return sysfs_emit(buf, "%s\n", KSPLICE_ID);
}

static struct kobj_attribute id_attr = __ATTR_RO_MODE(id, 0400);

static ssize_t stage_show(struct kobject *kobj, struct kobj_attribute *attr,
			  char *buf)
{
	struct ksplice_module *km = to_km(kobj);
	enum ksplice_stage stage;

	mutex_lock(&km->lock);
	stage = km->stage;
	mutex_unlock(&km->lock);
	return sysfs_emit(buf, "%s\n", ksplice_stage_names[stage]);
}

/*
 * The primary's command file: "apply" or "reverse" (also "applied",
 * "reversed").  The write fails with the errno of the abort; abort_cause
 * says why.
 */
static ssize_t stage_store(struct kobject *kobj, struct kobj_attribute *attr,
			   const char *buf, size_t count)
{
	struct ksplice_module *km = to_km(kobj);
	int ret;

	if (strcmp(km->role, "primary"))
		return -EPERM;
	mutex_lock(&km->lock);
	if (sysfs_streq(buf, "apply") || sysfs_streq(buf, "applied"))
		ret = ksplice_apply(km);
	else if (sysfs_streq(buf, "reverse") || sysfs_streq(buf, "reversed"))
		ret = ksplice_reverse(km);
	else
		ret = -EINVAL;
	mutex_unlock(&km->lock);
	return ret ? ret : count;
}

static struct kobj_attribute stage_attr = __ATTR(stage, 0600, stage_show,
						 stage_store);

static ssize_t abort_cause_show(struct kobject *kobj,
				struct kobj_attribute *attr, char *buf)
{
	struct ksplice_module *km = to_km(kobj);
	int cause;

	mutex_lock(&km->lock);
	cause = km->abort;
	mutex_unlock(&km->lock);
	return sysfs_emit(buf, "%s\n", ksplice_abort_name(cause));
}

static struct kobj_attribute abort_cause_attr = __ATTR_RO_MODE(abort_cause, 0400);

/* Timing of the last stop_machine call: "pause_us stopped_us max_us tries ops". */
static ssize_t pause_us_show(struct kobject *kobj, struct kobj_attribute *attr,
			     char *buf)
{
	struct ksplice_module *km = to_km(kobj);
	ssize_t n;

	mutex_lock(&km->lock);
	n = sysfs_emit(buf, "%llu.%03u\n", div_u64(km->pause_ns, 1000),
		       (unsigned int)(km->pause_ns % 1000));
	mutex_unlock(&km->lock);
	return n;
}

static struct kobj_attribute pause_us_attr = __ATTR_RO_MODE(pause_us, 0400);

static ssize_t timing_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	struct ksplice_module *km = to_km(kobj);
	ssize_t n;

	mutex_lock(&km->lock);
	n = sysfs_emit(buf, "pause_ns %llu\nstopped_ns %llu\nmax_pause_ns %llu\ntries %u\noperations %u\n",
		       km->pause_ns, km->stopped_ns, km->pause_max_ns, km->tries,
		       km->operations);
	mutex_unlock(&km->lock);
	return n;
}

static struct kobj_attribute timing_attr = __ATTR_RO_MODE(timing, 0400);

/*
 * One line per patched function once resolved: old address, patch site,
 * replacement, size, the hash of the old function's bytes before apply
 * and the hash of what is there now.
 */
static ssize_t patches_show(struct kobject *kobj, struct kobj_attribute *attr,
			    char *buf)
{
	struct ksplice_module *km = to_km(kobj);
	unsigned int i;
	int n = 0;

	mutex_lock(&km->lock);
	for (i = 0; i < km->nr_patches; i++) {
		const struct ksplice_patch_rt *rt = &km->patch_rt[i];

		if (!km->resolved) {
			n += sysfs_emit_at(buf, n, "%s unresolved\n",
					   km->patch_tab[i].oldname);
			continue;
		}
		n += sysfs_emit_at(buf, n, "%s old=%lx site=%lx repl=%lx size=%lu before=%016llx now=%016llx%s%s\n",
				   km->patch_tab[i].oldname, rt->oldaddr,
				   rt->site, rt->repladdr, rt->oldsize,
				   rt->oldhash,
				   ksplice_hash(rt->oldaddr, rt->oldsize),
				   rt->mod ? " module=" : "",
				   rt->mod ? rt->mod->name : "");
	}
	mutex_unlock(&km->lock);
	return n;
}

static struct kobj_attribute patches_attr = __ATTR_RO_MODE(patches, 0400);

/* Helper: what run-pre matching found, one line per carried function. */
static ssize_t runpre_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	struct ksplice_module *km = to_km(kobj);
	unsigned int i;
	int n = 0;

	mutex_lock(&km->lock);
	if (!km->match)
		n = sysfs_emit(buf, "not run\n");
	for (i = 0; km->match && i < km->nr_sizes; i++)
		n += sysfs_emit_at(buf, n, "%s %s %lx\n", km->size_tab[i].name,
				   ksplice_match_names[km->match[i].status],
				   km->match[i].addr);
	mutex_unlock(&km->lock);
	return n;
}

static struct kobj_attribute runpre_attr = __ATTR_RO_MODE(runpre, 0400);

static ssize_t kaslr_offset_show(struct kobject *kobj,
				 struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%#lx\n", to_km(kobj)->kaslr_offset);
}

static struct kobj_attribute kaslr_offset_attr = __ATTR_RO_MODE(kaslr_offset, 0400);

/* One line per entry: name, running address or status, check result. */
static int ksplice_emit_sym(char *buf, int at, const char *name,
			    const struct ksplice_symstate *st, const char *extra)
{
	const char *check = !st->checked ? "-" : st->mismatch ? "mismatch" : "ok";

	if (st->status == KSPLICE_SYM_RESOLVED)
		return sysfs_emit_at(buf, at, "%s %lx %s%s\n", name, st->addr,
				     check, extra);
	return sysfs_emit_at(buf, at, "%s %s %s%s\n", name,
			     ksplice_status_names[st->status], check, extra);
}

/*
 * The primary lists the functions it replaces, the helper the pre
 * functions it carries for run-pre matching.
 */
static ssize_t functions_show(struct kobject *kobj, struct kobj_attribute *attr,
			      char *buf)
{
	struct ksplice_module *km = to_km(kobj);
	unsigned int i;
	int n = 0;

	if (km->nr_patches) {
		for (i = 0; i < km->nr_patches; i++)
			n += ksplice_emit_sym(buf, n, km->patch_tab[i].oldname,
					      &km->patch_state[i], "");
		return n;
	}
	for (i = 0; i < km->nr_sizes; i++)
		n += ksplice_emit_sym(buf, n, km->size_tab[i].name,
				      &km->size_state[i], "");
	return n;
}

static struct kobj_attribute functions_attr = __ATTR_RO_MODE(functions, 0400);

static ssize_t imports_show(struct kobject *kobj, struct kobj_attribute *attr,
			    char *buf)
{
	struct ksplice_module *km = to_km(kobj);
	unsigned int i;
	int n = 0;

	for (i = 0; i < km->nr_imports; i++)
		n += ksplice_emit_sym(buf, n, km->import_tab[i].name,
				      &km->import_state[i], "");
	return n;
}

static struct kobj_attribute imports_attr = __ATTR_RO_MODE(imports, 0400);

static ssize_t helper_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	struct ksplice_module *km = to_km(kobj);
	ssize_t n;

	mutex_lock(&km->lock);
	if (km->helper)
		n = sysfs_emit(buf, "attached %u relocs %u functions\n",
			       km->helper->relocs.total, km->helper->nr_sizes);
	else
		n = sysfs_emit(buf, "absent\n");
	mutex_unlock(&km->lock);
	return n;
}

static struct kobj_attribute helper_attr = __ATTR_RO_MODE(helper, 0400);

static struct attribute *ksplice_attrs[] = {
	&id_attr.attr,
	&role_attr.attr,
	&stage_attr.attr,
	&kaslr_offset_attr.attr,
	&relocs_attr.attr,
	&resolved_attr.attr,
	&ambiguous_attr.attr,
	&missing_attr.attr,
	&checked_attr.attr,
	&mismatched_attr.attr,
	&functions_attr.attr,
	&imports_attr.attr,
	&helper_attr.attr,
	&abort_cause_attr.attr,
	&pause_us_attr.attr,
	&timing_attr.attr,
	&patches_attr.attr,
	&runpre_attr.attr,
	NULL,
};

/* Patching and its reports belong to the primary, run-pre to the helper. */
static umode_t ksplice_attr_visible(struct kobject *kobj, struct attribute *attr,
				    int n)
{
	bool primary = !strcmp(to_km(kobj)->role, "primary");

	if (attr == &stage_attr.attr)
		return primary ? 0600 : 0400;
	if (attr == &helper_attr.attr || attr == &abort_cause_attr.attr ||
	    attr == &pause_us_attr.attr || attr == &timing_attr.attr ||
	    attr == &patches_attr.attr)
		return primary ? attr->mode : 0;
	if (attr == &runpre_attr.attr)
		return primary ? 0 : attr->mode;
	return attr->mode;
}

static const struct attribute_group ksplice_group = {
	.attrs = ksplice_attrs,
	.is_visible = ksplice_attr_visible,
};
__ATTRIBUTE_GROUPS(ksplice);

static void ksplice_release(struct kobject *kobj)
{
	struct ksplice_module *km = to_km(kobj);

	kfree(km->reloc_state);
	kfree(km->size_state);
	kfree(km->patch_state);
	kfree(km->import_state);
	ksplice_runpre_free(km);
	ksplice_patch_free(km);
	kfree(km);
}

static const struct kobj_type ksplice_ktype = {
	.release = ksplice_release,
	.sysfs_ops = &kobj_sysfs_ops,
	.default_groups = ksplice_groups,
};

/* -- load and unload ------------------------------------------------------ */

static int ksplice_alloc_state(struct ksplice_module *km)
{
	km->reloc_tab = ksplice_relocs;
	km->size_tab = ksplice_sizes;
	km->patch_tab = ksplice_patches;
	km->import_tab = ksplice_imports;
	km->nr_relocs = ksplice_nr_relocs(km->reloc_tab);
	km->nr_sizes = ksplice_nr_sizes(km->size_tab);
	km->nr_patches = ksplice_nr_patches(km->patch_tab);
	km->nr_imports = ksplice_nr_imports(km->import_tab);
	/* kcalloc(0, ...) is ZERO_SIZE_PTR, which kfree accepts */
	km->reloc_state = kcalloc(km->nr_relocs, sizeof(*km->reloc_state), GFP_KERNEL);
	km->size_state = kcalloc(km->nr_sizes, sizeof(*km->size_state), GFP_KERNEL);
	km->patch_state = kcalloc(km->nr_patches, sizeof(*km->patch_state), GFP_KERNEL);
	km->import_state = kcalloc(km->nr_imports, sizeof(*km->import_state), GFP_KERNEL);
	if (!km->reloc_state || !km->size_state || !km->patch_state ||
	    !km->import_state)
		return -ENOMEM;
	return 0;
}

/*
 * Resolve this module's tables and publish the result in sysfs.  Returns
 * the module state or an ERR_PTR; nothing is patched.
 */
struct ksplice_module *ksplice_load(struct module *owner, const char *role)
{
	struct ksplice_module *km;
	int ret;

	km = kzalloc(sizeof(*km), GFP_KERNEL);
	if (!km)
		return ERR_PTR(-ENOMEM);
	km->owner = owner;
	km->role = role;
	mutex_init(&km->lock);
	km->stage = KSPLICE_STAGE_LOADING;
	km->kaslr_offset = (unsigned long)&KSPLICE_ANCHOR - KSPLICE_MAP_ANCHOR;
	kobject_init(&km->kobj, &ksplice_ktype);

	ret = ksplice_alloc_state(km);
	if (!ret)
		ret = ksplice_resolve_tables(km);
	if (ret)
		goto err;
	km->stage = KSPLICE_STAGE_PREPARED;

	ret = kobject_add(&km->kobj, &owner->mkobj.kobj, "ksplice");
	if (ret)
		goto err;

	pr_info("%s %s: kaslr offset %#lx, %u functions, %u relocs: %u resolved, %u ambiguous, %u missing; %u checked, %u mismatched\n",
		KSPLICE_ID, role, km->kaslr_offset,
		km->nr_patches ? km->nr_patches : km->nr_sizes, km->relocs.total,
		km->relocs.resolved, km->relocs.ambiguous, km->relocs.missing,
		km->checked, km->mismatched);
	return km;
err:
	kobject_put(&km->kobj);
	return ERR_PTR(ret);
}

void ksplice_unload(struct ksplice_module *km)
{
	pr_info("%s %s: unloaded\n", KSPLICE_ID, km->role);
	kobject_put(&km->kobj);
}

void ksplice_set_helper(struct ksplice_module *km, struct ksplice_module *helper)
{
	mutex_lock(&km->lock);
	km->helper = helper;
	mutex_unlock(&km->lock);
}
