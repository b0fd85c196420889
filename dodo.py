# SPDX-License-Identifier: GPL-2.0-only
"""doit entry point for ksplice-py.

    doit prebuild KSRC=~/linux-6.1 [ORIG=~/linux-6.1/ksplice] [POSTDIR=DIR] [JOBS=N] [VERBOSE=1]
    doit create_update PATCH=fix.patch [PATCH_OPT=-p1] [OUTDIR=DIR]   (or DIFFEXT=.fixed)
    doit list

KSRC, ORIG, POSTDIR, PATCH, DIFFEXT and PATCH_OPT are remembered in
.ksplice-vars.json beside this file, so `doit list` and reruns see the same graph.
"""

from pathlib import Path

from doit import create_after, get_var

from ksplice_tasks import graph

_VARS = graph.load_vars(
    {k: get_var(k) for k in (*graph.PERSISTED, "JOBS", "VERBOSE", "OUTDIR")},
    Path(__file__).with_name(".ksplice-vars.json"),
)
_SETTINGS = graph.settings_or_error(_VARS)
_PLAN = graph.plan_create(_SETTINGS)

DOIT_CONFIG = graph.doit_config(_SETTINGS)


def task_pre_config():
    return graph.pre_config(_SETTINGS)


def task_pre_build():
    return graph.pre_build(_SETTINGS)


def task_post_snapshot():
    return graph.post_snapshot(_SETTINGS)


def task_prebuild():
    return graph.prebuild_group(_SETTINGS)


def task_create_update():
    """The create pipeline, post_patch to tarball"""
    yield from graph.create_static(_PLAN)


@create_after(executed="post_build", creates=list(graph.PER_OBJECT))
def task_per_object():
    """Per changed object: objdiff and extract, then collect (known after post_build)"""
    yield from graph.create_objects(_PLAN)
