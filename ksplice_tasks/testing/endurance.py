# SPDX-License-Identifier: GPL-2.0-only
"""Apply/reverse cycles of one update in a booted kernel while tasks call its function.

The guest loads the update with ksplice-apply, starts ``readers`` busybox
loops reading /proc/loadavg (the bundled example's function,
``loadavg_proc_show``), then runs ``cycles`` reverse/apply pairs through
the primary's sysfs ``stage``.  After each reverse it prints the
``patches`` lines (``before=`` must equal ``now=``); after each operation
``pause_us`` (the whole stop_machine call, µs).  Finally the kernel log
is searched for WARNING/BUG/Oops.  Used by bench/endurance.py (1,000
cycles) and tests/system/test_endurance.py (50).
"""

from __future__ import annotations

import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from ksplice_tasks import names
from ksplice_tasks.target.apply import parse_timing

BAD_LOG = re.compile(r"WARNING|BUG|Oops|general protection|int3")


def guest_script(tarball: Path, cycles: int, readers: int = 4,
                 python: str = sys.executable) -> str:
    """The guest's shell script (busybox sh) for ``cycles`` reverse/apply pairs."""
    uid = names.tarball_id(tarball.name)
    d = f"/sys/module/{names.sysfs_module(uid, names.PRIMARY)}/ksplice"
    return f"""dmesg -n 1
KS="chroot /host {python} -m ksplice_tasks.target.apply"
$KS apply {tarball} || {{ echo "@@fail apply"; exit 1; }}
reader() {{ while :; do read l < /proc/loadavg; done; }}
pids=""
n=0; while [ $n -lt {readers} ]; do reader & pids="$pids $!"; n=$((n + 1)); done
i=0
while [ $i -lt {cycles} ]; do
    echo reverse > {d}/stage || echo "@@refused reverse $i $(cat {d}/abort_cause)"
    echo "@@pause $(cat {d}/pause_us)"
    sed "s/^/@@hash $i /" {d}/patches
    echo apply > {d}/stage || echo "@@refused apply $i $(cat {d}/abort_cause)"
    echo "@@pause $(cat {d}/pause_us)"
    echo "@@done $i"
    i=$((i + 1))
done
kill $pids
sed 's/^/@@timing /' {d}/timing
echo "@@cpus $(grep -c ^processor /proc/cpuinfo)"
$KS undo {uid} || echo "@@fail undo"
dmesg | grep -E '{BAD_LOG.pattern}' | sed 's/^/@@log /'
echo "@@lsmod $(grep -c ksplice /proc/modules)"
"""


@dataclass(frozen=True)
class Result:
    """What the guest reported: counts, and pauses in µs."""

    cycles: int                 # reverse/apply pairs completed
    refused: tuple[str, ...]    # "reverse 12 code_busy" ...
    mismatches: tuple[str, ...]  # patches lines after a reverse with before != now
    hashes_checked: int
    log_lines: tuple[str, ...]  # kernel log lines matching BAD_LOG
    pauses_us: tuple[float, ...]
    timing: dict[str, int]      # the primary's timing file at the end
    cpus: int
    modules_left: int

    @property
    def pause_median_us(self) -> float:
        return statistics.median(self.pauses_us) if self.pauses_us else 0.0

    @property
    def pause_max_us(self) -> float:
        return max(self.pauses_us, default=0.0)


def restored(patches_line: str) -> bool:
    """True when a ``patches`` line shows ``before=`` equal to ``now=`` (both present)."""
    before = re.search(r"before=(\w+)", patches_line)
    now = re.search(r"now=(\w+)", patches_line)
    return bool(before and now and before.group(1) == now.group(1))


def parse(output: str) -> Result:
    """The guest's ``@@`` lines as a Result (the guest output of guest_script)."""
    lines = [ln[2:] for ln in output.splitlines() if ln.startswith("@@")]

    def field(prefix: str) -> list[str]:
        return [ln[len(prefix):] for ln in lines if ln.startswith(prefix)]

    hashes = field("hash ")
    mism = tuple(h for h in hashes if not restored(h))
    timing = parse_timing("\n".join(field("timing ")))
    cpus = field("cpus ")
    left = field("lsmod ")
    return Result(cycles=len(field("done ")), refused=tuple(field("refused ")),
                  mismatches=mism, hashes_checked=len(hashes),
                  log_lines=tuple(field("log ")),
                  pauses_us=tuple(float(p) for p in field("pause ") if p.strip()),
                  timing=timing, cpus=int(cpus[0]) if cpus else 0,
                  modules_left=int(left[0]) if left else -1)
