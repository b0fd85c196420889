// SPDX-License-Identifier: GPL-2.0
/*
 * Module glue shared by the primary and the helper: the ksplice state's
 * lifetime, tied to a kobject, and its sysfs directory
 * /sys/module/<module>/ksplice, whose stage file takes the primary's
 * apply and reverse commands.
 */
#define pr_fmt(fmt) "ksplice: " fmt

#include <linux/kernel.h>
#include <linux/printk.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include <asm/tsc.h>

#include "patch.h"
#include "resolve.h"
#include "runpre.h"
#include "sysfs.h"

static const char * const ksplice_stage_names[] = {
	[KSPLICE_STAGE_LOADING] = "loading",
	[KSPLICE_STAGE_PREPARED] = "prepared",
	[KSPLICE_STAGE_APPLIED] = "applied",
	[KSPLICE_STAGE_REVERSED] = "reversed",
	[KSPLICE_STAGE_ABORTED] = "aborted",
};

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
	enum ksplice_abort cause;

	mutex_lock(&km->lock);
	cause = km->abort;
	mutex_unlock(&km->lock);
	return sysfs_emit(buf, "%s\n", ksplice_abort_name(cause));
}

static struct kobj_attribute abort_cause_attr = __ATTR_RO_MODE(abort_cause, 0400);

/* The last stop_machine call, whole, in microseconds with 3 decimals. */
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

/*
 * Counters of the last stop_machine call, one "name value" per line.
 * tsc_khz is the time base: with 0 the kernel never learnt the TSC's rate
 * (arch/x86/kernel/tsc.c: "could not calculate TSC khz"), pause_ns then
 * comes from ktime, whose clocksource may count in jiffies, and stopped_ns
 * is 0.
 */
static ssize_t timing_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	struct ksplice_module *km = to_km(kobj);
	ssize_t n;

	mutex_lock(&km->lock);
	n = sysfs_emit(buf,
		       "pause_ns %llu\nstopped_ns %llu\nmax_pause_ns %llu\ntries %u\noperations %u\ntasks_checked %u\nidle_checked %u\nint3_hits %lu\ntsc_khz %u\n",
		       km->pause_ns, km->stopped_ns, km->pause_max_ns, km->tries,
		       km->operations, km->tasks_checked, km->idle_checked,
		       km->int3_hits, tsc_khz);
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
		n += sysfs_emit_at(buf, n,
				   "%s old=%lx site=%lx repl=%lx size=%lu before=%016llx now=%016llx%s%s\n",
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
	unsigned int i, pass, left = 0;
	int n = 0;

	mutex_lock(&km->lock);
	if (!km->match)
		n = sysfs_emit(buf, "not run\n");
	/* Functions not found first; a page holds about 80 lines. */
	for (pass = 0; km->match && pass < 2; pass++) {
		for (i = 0; i < km->nr_sizes; i++) {
			bool found = km->match[i].status == KSPLICE_MATCH_FOUND;
			bool want = pass == 1;
			const char *name = km->size_tab[i].name;

			if (found != want)
				continue;
			if (n + strlen(name) + 48 > PAGE_SIZE) {
				left++;
				continue;
			}
			n += sysfs_emit_at(buf, n, "%s %s %lx\n", name,
					   ksplice_match_status_name(km->match[i].status),
					   km->match[i].addr);
		}
	}
	if (left)
		n += sysfs_emit_at(buf, n, "+%u more\n", left);
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
			     ksplice_sym_status_name(st->status), check, extra);
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

	ksplice_resolve_free(km);
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

/**
 * ksplice_load() - Set up a module's ksplice state: the module_init part.
 * @owner: THIS_MODULE
 * @role: "primary" or "helper"
 *
 * Resolves this module's tables (ksplice_resolve_init()) and publishes the
 * result in /sys/module/<module>/ksplice.  Nothing is patched.
 *
 * Return: the state, or an ERR_PTR.
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
	kobject_init(&km->kobj, &ksplice_ktype);

	ret = ksplice_resolve_init(km);
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

/**
 * ksplice_unload() - Remove the sysfs directory and free the state.
 * @km: from ksplice_load()
 *
 * The memory goes once the last sysfs reader is done with it.
 */
void ksplice_unload(struct ksplice_module *km)
{
	pr_info("%s %s: unloaded\n", KSPLICE_ID, km->role);
	kobject_put(&km->kobj);
}

/**
 * ksplice_set_helper() - Attach or detach the helper of a primary.
 * @km: the primary
 * @helper: the helper's state, or NULL when it unloads
 */
void ksplice_set_helper(struct ksplice_module *km, struct ksplice_module *helper)
{
	mutex_lock(&km->lock);
	km->helper = helper;
	mutex_unlock(&km->lock);
}
