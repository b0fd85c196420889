# SPDX-License-Identifier: GPL-2.0-only
"""The endurance benchmark's short version: 50 apply/reverse cycles in Debian's kernel, SMP.

bench/endurance.py runs 1,000; this runs the same guest script
(ksplice_tasks/testing/endurance.py) with 50 cycles while 4 tasks read
/proc/loadavg (the patched function): no refusal, no WARNING/BUG/Oops,
before= equal to now= after every reverse, every online CPU's idle task
stack-checked, no module left.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import Prebuilt, create, tarball_from

from ksplice_tasks.testing import debian_guest, endurance

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

REPO = Path(__file__).resolve().parents[2]
CYCLES = 50


def test_fifty_cycles_under_load_on_debians_kernel(
        prebuilt_debian: Prebuilt, kernel_debian: debian_guest.DebianKernel,
        tmp_path: Path) -> None:
    res = create(prebuilt_debian, REPO / "ksplice_tasks" / "data" / "example-loadavg.patch",
                 tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    tarball = tarball_from(res.stdout, tmp_path)
    boot = kernel_debian.boot(endurance.guest_script(tarball, CYCLES), hostfs=True,
                              timeout=400)
    assert boot.ok, boot.output[-3000:]
    r = endurance.parse(boot.guest_output)
    assert r.cpus == 2, boot.guest_output[-2000:]
    assert r.cycles == CYCLES and not r.refused, (r.cycles, r.refused)
    assert not r.log_lines, r.log_lines
    assert r.hashes_checked == CYCLES and not r.mismatches, r.mismatches[:3]
    assert len(r.pauses_us) == 2 * CYCLES and r.pause_max_us > 0
    # every online CPU's idle task is stack-checked, besides the listed tasks
    assert r.timing["idle_checked"] == r.cpus, r.timing
    assert r.timing["tasks_checked"] > r.cpus, r.timing
    assert r.timing["operations"] == 2 * CYCLES + 1, r.timing
    assert r.modules_left == 0
    print(f"pause median {r.pause_median_us:.0f} us, max {r.pause_max_us:.0f} us")
