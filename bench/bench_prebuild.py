#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Prebuild costs on the real tree: the no-op rerun against a no-op `make`, as ratios.

Uses (and if needed builds) the cached SMP test kernel and the tests' prebuilt tree.
    python bench/bench_prebuild.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ksplice_tasks import kbuild, snapshot, testkernel


def timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    kernel = testkernel.build_test_kernel("smp")
    ksrc, orig = testkernel.prebuild_tree(kernel, "tests")
    create = [sys.executable, "-m", "ksplice_tasks.cli", "--prebuild", f"--config={orig}",
              str(ksrc)]
    timed(create)  # make sure it is built and the caches are warm
    noop = [timed(create) for _ in range(args.runs)]
    post = orig / "post"
    make = [timed(kbuild.make_argv(post, os.cpu_count() or 1)) for _ in range(args.runs)]
    walk = []
    for _ in range(args.runs):
        t0 = time.monotonic()
        snapshot.tree_fingerprint(ksrc, [orig])
        walk.append(time.monotonic() - t0)
    files = sum(1 for _ in snapshot.walk(ksrc, [Path(orig)]))
    n, m, w = statistics.median(noop), statistics.median(make), statistics.median(walk)
    print(f"tree: {ksrc} ({files} entries)")
    print(f"no-op `ksplice-create --prebuild`: {n:.2f} s (median of {args.runs}; goal <= 1.5 s)")
    print(f"no-op `make` in the post tree:     {m:.2f} s")
    print(f"tree fingerprint walk:             {w:.2f} s")
    print(f"ratio no-op prebuild / no-op make: {n / m:.2f}")
    print(f"ratio fingerprint / no-op prebuild: {w / n:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
