#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""qemu's TCG against the kernel's own text_poke_bp(): how often a hot static key hangs.

    PYTHONPATH=. python bench/tcg_key_race.py [--boots N] [--toggles N] [--timeout S]

Boots Debian's shipped kernel (the cached target, ksplice_tasks.testing.debian_guest)
``--boots`` times on 2 vCPUs and as many on 1, with no update loaded. Each boot
turns ``/proc/sys/kernel/sched_schedstats`` on and off ``--toggles`` times; the
key's jump-label sites are in __schedule() and set_next_entity(), which every
vCPU runs all the time. Prints, side by side, the boots that hung per vCPU
count and, for each hang, the report qemu.boot() appends (where each vCPU is,
the bytes memory holds there). Measured on qemu 7.2 (Debian 12), 2 host
cores: 2 vCPUs hang now and then with a vCPU looping on an int3 that memory no
longer holds (kprobe_int3_handler() rewinds to it); 1 vCPU does not. That is
why tests/system/test_debian_jump_labels.py runs its sched_schedstats test on
one vCPU.
"""

from __future__ import annotations

import argparse
import sys
import time

from ksplice_tasks.testing import debian_guest, qemu

SYSCTL = "/proc/sys/kernel/sched_schedstats"


def script(toggles: int) -> str:
    """The guest script: ``toggles`` on/off pairs of the key, a scheduler pass each."""
    return (f"i=0\nwhile [ $i -lt {toggles} ]; do echo 1 > {SYSCTL}; "
            f"grep -c . /proc/loadavg >/dev/null; echo 0 > {SYSCTL}; i=$((i+1)); done\n"
            "echo \"@@ toggles $i\"\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--boots", type=int, default=4, help="boots per vCPU count (4)")
    ap.add_argument("--toggles", type=int, default=600, help="on/off pairs per boot (600)")
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds per boot (150)")
    args = ap.parse_args(argv)
    kernel = debian_guest.prepare()
    rows = []
    for cpus in (2, 1):
        hung, seconds = 0, 0.0
        for i in range(args.boots):
            t0 = time.monotonic()
            res = kernel.boot(script(args.toggles), cpus=cpus, timeout=args.timeout)
            seconds += time.monotonic() - t0
            if res.timed_out:
                hung += 1
                print(f"tcg_key_race: {cpus} vCPU(s), boot {i + 1} hung:")
                for line in res.output.splitlines():
                    if line.startswith(qemu.HANG_MARK):
                        print("  " + line)
            sys.stdout.flush()
        rows.append((cpus, hung, seconds))
    print(f"{'vCPUs':>5} {'boots':>5} {'hung':>4} {'toggles/boot':>12} {'seconds':>8}")
    for cpus, hung, seconds in rows:
        print(f"{cpus:>5} {args.boots:>5} {hung:>4} {args.toggles:>12} {seconds:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
