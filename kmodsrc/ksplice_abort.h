/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Why an apply or reverse aborted.  Generated from
 * ksplice_tasks/encode/abort_causes.py; regenerate with:
 * python -m ksplice_tasks.encode.headers
 */
#ifndef _KSPLICE_ABORT_H
#define _KSPLICE_ABORT_H

#include <linux/errno.h>

/* Shown in sysfs as abort_cause (ksplice_abort_name()). */
enum ksplice_abort {
	KSPLICE_ABORT_NONE, /* no abort: the last operation succeeded */
	KSPLICE_ABORT_NO_HELPER, /* the first apply needs the helper */
	KSPLICE_ABORT_MAP_MISMATCH, /* System.map is not the running kernel's */
	KSPLICE_ABORT_NO_MATCH, /* run-pre matching failed */
	KSPLICE_ABORT_TRACED, /* ftrace or livepatch owns an entry */
	KSPLICE_ABORT_UNRESOLVED, /* a symbol has no (unique) value */
	KSPLICE_ABORT_CODE_BUSY, /* a task is inside the code, after retries */
	KSPLICE_ABORT_CODE_CHANGED, /* patch site bytes are not what was saved */
	KSPLICE_ABORT_ALREADY_APPLIED, /* apply while applied */
	KSPLICE_ABORT_NOT_APPLIED, /* reverse while not applied */
	KSPLICE_ABORT_NOMEM, /* an allocation failed */
	KSPLICE_ABORT_BAD_ENCODING, /* a value does not fit its field */
	KSPLICE_ABORT_NOT_LOADED, /* a replaced function's module is not loaded */
	KSPLICE_ABORT_JUMP_LABEL, /* the new code's jump labels cannot be registered */
};

/* The name sysfs shows for @cause. */
static inline const char *ksplice_abort_name(enum ksplice_abort cause)
{
	switch (cause) {
	case KSPLICE_ABORT_NONE:
		return "none";
	case KSPLICE_ABORT_NO_HELPER:
		return "no_helper";
	case KSPLICE_ABORT_MAP_MISMATCH:
		return "map_mismatch";
	case KSPLICE_ABORT_NO_MATCH:
		return "no_match";
	case KSPLICE_ABORT_TRACED:
		return "traced";
	case KSPLICE_ABORT_UNRESOLVED:
		return "unresolved";
	case KSPLICE_ABORT_CODE_BUSY:
		return "code_busy";
	case KSPLICE_ABORT_CODE_CHANGED:
		return "code_changed";
	case KSPLICE_ABORT_ALREADY_APPLIED:
		return "already_applied";
	case KSPLICE_ABORT_NOT_APPLIED:
		return "not_applied";
	case KSPLICE_ABORT_NOMEM:
		return "nomem";
	case KSPLICE_ABORT_BAD_ENCODING:
		return "bad_encoding";
	case KSPLICE_ABORT_NOT_LOADED:
		return "not_loaded";
	case KSPLICE_ABORT_JUMP_LABEL:
		return "jump_label";
	default:
		return "unknown";
	}
}

/* What the stage write fails with when @cause aborted the operation. */
static inline int ksplice_abort_errno(enum ksplice_abort cause)
{
	switch (cause) {
	case KSPLICE_ABORT_NONE:
		return 0;
	case KSPLICE_ABORT_NO_HELPER:
		return -EINVAL;
	case KSPLICE_ABORT_MAP_MISMATCH:
		return -EINVAL;
	case KSPLICE_ABORT_NO_MATCH:
		return -EINVAL;
	case KSPLICE_ABORT_TRACED:
		return -EINVAL;
	case KSPLICE_ABORT_UNRESOLVED:
		return -EINVAL;
	case KSPLICE_ABORT_CODE_BUSY:
		return -EBUSY;
	case KSPLICE_ABORT_CODE_CHANGED:
		return -EINVAL;
	case KSPLICE_ABORT_ALREADY_APPLIED:
		return -EEXIST;
	case KSPLICE_ABORT_NOT_APPLIED:
		return -EINVAL;
	case KSPLICE_ABORT_NOMEM:
		return -ENOMEM;
	case KSPLICE_ABORT_BAD_ENCODING:
		return -EINVAL;
	case KSPLICE_ABORT_NOT_LOADED:
		return -EINVAL;
	case KSPLICE_ABORT_JUMP_LABEL:
		return -EINVAL;
	default:
		return -EINVAL;
	}
}

#endif /* _KSPLICE_ABORT_H */
