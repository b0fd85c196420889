# SPDX-License-Identifier: GPL-2.0-only
"""doit entry point for ksplice-py.

    doit prebuild KSRC=~/linux-6.1 [ORIG=~/linux-6.1/ksplice] [POSTDIR=DIR] [JOBS=N] [VERBOSE=1]
    doit list

KSRC, ORIG and POSTDIR are remembered in .ksplice-vars.json beside this file.
"""

from pathlib import Path

from doit import get_var

from ksplice_tasks import graph

_VARS = graph.load_vars(
    {k: get_var(k) for k in (*graph.PERSISTED, "JOBS", "VERBOSE")},
    Path(__file__).with_name(".ksplice-vars.json"),
)
_SETTINGS = graph.settings_or_error(_VARS)

DOIT_CONFIG = graph.doit_config(_SETTINGS)


def task_pre_config():
    return graph.pre_config(_SETTINGS)


def task_pre_build():
    return graph.pre_build(_SETTINGS)


def task_post_snapshot():
    return graph.post_snapshot(_SETTINGS)


def task_prebuild():
    return graph.prebuild_group(_SETTINGS)
