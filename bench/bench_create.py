#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Create costs on the real tree, as ratios against the kernel build they wait on.

- create after prebuild (the post tree holding another patch) / a bare `make` of a
  post tree with the same patch (goal <= 1.05);
- the no-op rerun (goal <= 1 s);
- the rerun after editing the patch.
Uses (and if needed builds) the cached SMP test kernel and the tests' prebuilt tree.
    python bench/bench_create.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import prebuilt_tree, timed

from ksplice_tasks.tree import kbuild, snapshot

REPO = Path(__file__).resolve().parent.parent
PATCHES = REPO / "tests" / "patches"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tree", default="tests", help="which cached prebuilt tree (tests, demo)")
    args = p.parse_args()
    ksrc, orig = prebuilt_tree(args.tree)
    base = [sys.executable, "-m", "ksplice_tasks.cli", f"--config={orig}"]
    timed([*base, "--prebuild", str(ksrc)])
    patch, other = PATCHES / "loadavg-string.patch", PATCHES / "umask-syscall.patch"
    with tempfile.TemporaryDirectory(prefix="ksplice-bench-") as tmp:
        out = Path(tmp)
        creates, noops, edits, makes = [], [], [], []
        for i in range(args.runs):
            timed([*base, f"--patch={other}", str(ksrc)], cwd=out)
            creates.append(timed([*base, f"--patch={patch}", str(ksrc)], cwd=out))
            noops.append(timed([*base, f"--patch={patch}", str(ksrc)], cwd=out))
            edited = out / f"edited-{i}.patch"
            edited.write_text(patch.read_text().replace("ksplice-loadavg", f"ksplice-edit{i}"))
            edits.append(timed([*base, f"--patch={edited}", str(ksrc)], cwd=out))
            scratch = out / "scratch"
            snapshot.make_post_tree(ksrc, scratch, [orig])
            subprocess.run(["patch", "-d", str(scratch), "-p1", "-i", str(patch)], check=True,
                           capture_output=True)
            makes.append(timed(kbuild.make_argv(scratch, os.cpu_count() or 1)))
    c, n, e, m = (statistics.median(x) for x in (creates, noops, edits, makes))
    print(f"runs: {args.runs} (medians); patch: {patch.name}")
    print(f"create after prebuild:        {c:6.2f} s")
    print(f"bare make of the post tree:   {m:6.2f} s")
    print(f"ratio create / bare make:     {c / m:6.2f}   (goal <= 1.05)")
    print(f"no-op rerun:                  {n:6.2f} s (goal <= 1 s)")
    print(f"rerun after editing a hunk:   {e:6.2f} s")
    print(f"ratio edit rerun / bare make: {e / m:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
