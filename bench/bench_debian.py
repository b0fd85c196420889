#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Debian's shipped kernel: from an extracted, never-built tree to a tarball, against the builds.

One run prints side by side, on Debian's amd64 config (the newest 6.1.0-N):
- cold tarball: targeted prebuild + create of the bundled example (goal <= 120 s);
- warm create: a second patch to the same file, its pre object cached;
- the physical floor: a bare ``make`` of the touched object (goal: warm <= 1.3x);
- a full pre build of the config, which kpatch-build and klp-build pay (twice):
  a fixed sample of the config's objects is compiled and the time is
  extrapolated to the whole inventory (the script says so in its output).
The target's packages come from the cache (``ksplice-debian-target``); its
kallsyms from the cached target (one boot captures it if missing).
    python bench/bench_debian.py [--sample N] [-j N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import timed

from ksplice_tasks.stages import prebuild
from ksplice_tasks.stages.inputs import resolve
from ksplice_tasks.testing import debian_guest
from ksplice_tasks.tree import kbuild

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "ksplice_tasks" / "data" / "example-loadavg.patch"
TOUCHED = ["fs/proc/loadavg.o"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sample", type=int, default=60, help="objects compiled to extrapolate "
                   "the full build (every k-th object of the inventory)")
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    cached = debian_guest.prepare()
    kallsyms = cached.orig_config / "kallsyms"
    if not kallsyms.is_file():
        debian_guest.capture_kallsyms(cached)
    cli = [sys.executable, "-m", "ksplice_tasks.cli", f"-j{args.jobs}"]
    with tempfile.TemporaryDirectory(prefix="ksplice-bench-debian-", dir=Path.home()) as tmp:
        work = Path(tmp)
        target = work / "target"
        prep = timed([sys.executable, "-m", "ksplice_tasks.distro.debian", cached.release,
                      str(target)])
        ksrc = target / "linux"
        shutil.copy(kallsyms, ksrc / "ksplice" / "kallsyms")
        out = work / "out"
        out.mkdir()
        t_pre = timed([*cli, "--prebuild", str(ksrc)])
        t_create = timed([*cli, f"--patch={EXAMPLE}", str(ksrc)], cwd=out)
        second = work / "second.patch"
        second.write_text(EXAMPLE.read_text().replace("ksplice-loadavg ", "second-patch "))
        t_warm = timed([*cli, f"--patch={second}", str(ksrc)], cwd=out)
        t_noop = timed([*cli, f"--patch={second}", str(ksrc)], cwd=out)

        s = resolve(ksrc)
        floors = []
        for _ in range(3):
            for obj in TOUCHED:
                (ksrc / obj).unlink()
            t0 = time.monotonic()
            subprocess.run(kbuild.make_argv(ksrc, args.jobs, TOUCHED, make_vars=s.make_vars),
                           check=True, capture_output=True)
            floors.append(time.monotonic() - t0)
        floor = min(floors)

        units, _ = prebuild.load_inventory(s.layout)
        objects = sorted(units)
        step = max(1, len(objects) // args.sample)
        sample = objects[::step][: args.sample]
        t0 = time.monotonic()
        res = subprocess.run([*kbuild.make_argv(ksrc, args.jobs, sample, make_vars=s.make_vars),
                              "-k"],
                             capture_output=True, text=True, check=False)
        t_sample = time.monotonic() - t0
        built = sum(1 for o in sample if (ksrc / o).is_file())
        full = t_sample / max(built, 1) * len(objects)

    cold = t_pre + t_create
    print(f"Debian {cached.release}, {len(objects)} objects in its config, -j{args.jobs}")
    print(f"{'target prep (copy of the cached source tree)':48s} {prep:8.1f} s")
    print(f"{'targeted prebuild':48s} {t_pre:8.1f} s")
    print(f"{'create (first; pre object built)':48s} {t_create:8.1f} s")
    print(f"{'cold tarball = prebuild + create (goal <=120)':48s} {cold:8.1f} s")
    print(f"{'warm create (second patch, pre object cached)':48s} {t_warm:8.1f} s")
    print(f"{'no-op rerun':48s} {t_noop:8.2f} s")
    print(f"{'floor: bare make of ' + ' '.join(TOUCHED):48s} {floor:8.2f} s")
    print(f"{'warm create / floor (goal <= 1.3)':48s} {t_warm / floor:8.2f}")
    print(f"{'full pre build, EXTRAPOLATED':48s} {full:8.0f} s = {full / 3600:.1f} h "
          f"({built} of {len(sample)} sampled objects built in {t_sample:.1f} s"
          f"{'' if res.returncode == 0 else ', make exited ' + str(res.returncode)})")
    print(f"{'full pre build / cold tarball':48s} {full / cold:8.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
