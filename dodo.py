# SPDX-License-Identifier: GPL-2.0-only
"""doit entry point for ksplice-py: the tasks of ksplice_tasks.graph, declared here.

    doit prebuild KSRC=~/linux-6.1 [ORIG=~/linux-6.1/ksplice] [POSTDIR=DIR] [JOBS=N] [VERBOSE=1]
                  [FULL=1]   (FULL=1: build every object now, not per patch)
    doit create_update PATCH=fix.patch [PATCH_OPT=-p1] [OUTDIR=DIR]   (or DIFFEXT=.fixed)
    doit list

KSRC, ORIG, POSTDIR, PATCH, DIFFEXT and PATCH_OPT are remembered in
.ksplice-vars.json beside this file, so `doit list` and reruns see the same graph.
"""

from pathlib import Path

from doit import get_var

from ksplice_tasks import graph
from ksplice_tasks.commands import interrupt_on_signals

interrupt_on_signals()  # SIGTERM/SIGHUP unwind like Ctrl-C: builds ended, post tree reset
# ORIG_CONFIG's lock, held until doit exits; when busy every task refuses with the reason.
_SETTINGS, _STATE_LOCK = graph.hold_state_lock(graph.settings_or_error(graph.load_vars(
    {k: get_var(k) for k in graph.VARIABLES},
    Path(__file__).with_name(graph.VARS_FILE),
)))
globals().update(graph.namespace(_SETTINGS))
