#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Prebuild costs on the real tree: the no-op rerun against a no-op `make`, as ratios.

Uses (and if needed builds) the cached SMP test kernel and the tests' prebuilt tree.
    python bench/bench_prebuild.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchlib import prebuilt_tree, timed

from ksplice_tasks.stages.layout import state_layout
from ksplice_tasks.tree import kbuild, snapshot


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--tree", default="tests", help="which cached prebuilt tree (tests, demo)")
    args = p.parse_args()
    ksrc, orig = prebuilt_tree(args.tree)
    create = [sys.executable, "-m", "ksplice_tasks.cli", "--prebuild", f"--config={orig}",
              str(ksrc)]
    timed(create)  # make sure it is built and the caches are warm
    noop = [timed(create) for _ in range(args.runs)]
    post = orig / "post"
    make = [timed(kbuild.make_argv(post, os.cpu_count() or 1)) for _ in range(args.runs)]
    inputs = json.loads(state_layout(orig).pre_inputs.read_text())
    walk, check = [], []
    for _ in range(args.runs):
        t0 = time.monotonic()
        snapshot.tree_fingerprint(ksrc, [orig])
        t1 = time.monotonic()
        snapshot.files_fingerprint(ksrc, inputs)
        walk.append(t1 - t0)
        check.append(time.monotonic() - t1)
    files = sum(1 for _ in snapshot.walk(ksrc, [Path(orig)]))
    n, m = statistics.median(noop), statistics.median(make)
    w, c = statistics.median(walk), statistics.median(check)
    print(f"tree: {ksrc} ({files} entries, {len(inputs)} pre build inputs)")
    print(f"no-op `ksplice-create --prebuild`: {n:.2f} s (median of {args.runs}; goal <= 1.5 s)")
    print(f"no-op `make` in the post tree:     {m:.2f} s")
    print(f"up-to-date check, build inputs:    {c:.3f} s")
    print(f"same check over the whole tree:    {w:.3f} s")
    print(f"ratio no-op prebuild / no-op make: {n / m:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
