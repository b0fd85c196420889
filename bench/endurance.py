#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Endurance: N apply/reverse cycles of the bundled example in Debian's booted kernel (SMP).

Debian's shipped kernel boots under qemu with -smp 2; 4 busybox loops read
/proc/loadavg (the patched function) all the time while the update is
reversed and applied N times through sysfs (ksplice_tasks/testing/endurance.py).
Prints cycles done, refusals, WARNING/BUG/Oops lines, before=/now= hash
mismatches after each reverse, the median and maximum stop_machine pause,
and the wall time.  Exit 1 when any count that must be 0 is not.
    python bench/endurance.py [--cycles 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ksplice_tasks import names
from ksplice_tasks.testing import debian_guest, endurance

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "ksplice_tasks" / "data" / "example-loadavg.patch"


def build_example(kernel: debian_guest.DebianKernel, out: Path) -> Path:
    """ksplice-create of the bundled example against Debian's prebuilt tree, into ``out``."""
    argv = [sys.executable, "-m", "ksplice_tasks.cli", f"--patch={EXAMPLE}",
            f"--config={kernel.orig_config}", str(kernel.source)]
    proc = subprocess.run(argv, cwd=out, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"ksplice-create failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return next(p for p in out.iterdir() if names.tarball_id(p.name))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--cycles", type=int, default=1000)
    p.add_argument("--readers", type=int, default=4)
    args = p.parse_args()
    kernel = debian_guest.prepare()
    with tempfile.TemporaryDirectory(prefix="ksplice-endurance-") as tmp:
        tarball = build_example(kernel, Path(tmp))
        script = endurance.guest_script(tarball, args.cycles, args.readers)
        t0 = time.monotonic()
        boot = kernel.boot(script, hostfs=True, timeout=60 + args.cycles * 3)
        wall = time.monotonic() - t0
    r = endurance.parse(boot.guest_output)
    print(f"kernel {kernel.release}, {r.cpus} CPUs, {args.readers} readers of /proc/loadavg")
    print(f"cycles done: {r.cycles} of {args.cycles} (operations {r.timing.get('operations')})")
    print(f"refused: {len(r.refused)} {list(r.refused[:5])}")
    print(f"WARNING/BUG/Oops lines: {len(r.log_lines)} {list(r.log_lines[:5])}")
    print(f"hash checks after reverse: {r.hashes_checked}, mismatches: {len(r.mismatches)}")
    print(f"stop_machine pause: median {r.pause_median_us:.0f} us, max {r.pause_max_us:.0f} us "
          f"over {len(r.pauses_us)} operations")
    print(f"stack checks: {r.timing.get('tasks_checked')} tasks, "
          f"{r.timing.get('idle_checked')} of them idle; int3 hits {r.timing.get('int3_hits')}")
    print(f"modules left after undo: {r.modules_left}; wall time {wall:.0f} s (boot included)")
    ok = (boot.ok and r.cycles == args.cycles and not r.refused and not r.log_lines
          and not r.mismatches and r.hashes_checked == args.cycles and r.modules_left == 0)
    if not ok:
        print(boot.output[-3000:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
