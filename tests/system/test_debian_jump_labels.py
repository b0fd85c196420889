# SPDX-License-Identifier: GPL-2.0-only
"""New code with a jump label on a key the module loader cannot resolve, on Debian's kernel.

tests/patches/debian-tracepoint-jump-label.patch adds ``trace_sched_kthread_stop_ret(4242)``
to ``loadavg_proc_show``.  With Debian's ``CONFIG_JUMP_LABEL`` the tracepoint's
``static_key_false(&__tracepoint_sched_kthread_stop_ret.key)`` is a jump label whose key
the kernel does not export (kernel/sched/core.c exports only the pelt/util tracepoints):
before the primary's registration of its jump entries, ksplice-create refused it ("needs
__tracepoint_sched_kthread_stop_ret in __jump_table ... does not export it").  Now the
update is created, applied, and the key toggled through tracefs while the new code runs:
the event fires from the new code only while enabled (the site follows the key), the
update undoes and unloads (MODULE_STATE_GOING unlinks the entries), with no kernel
warning.

tests/patches/debian-static-key-jump-label.patch does the same with
``static_branch_unlikely(&sched_schedstats)`` (kernel/sched/core.c, not exported),
toggled through ``/proc/sys/kernel/sched_schedstats``, and with the key already
enabled when the update is applied: the registration itself must patch the new site.
That guest has one vCPU. sched_schedstats has sites in __schedule() and
set_next_entity(), which both vCPUs run all the time, and qemu 7.2's multi-threaded
TCG sometimes keeps executing the int3 of the kernel's own text_poke_bp() after the
bytes are restored: kprobe_int3_handler() finds no int3 in memory and rewinds, so both
vCPUs loop there (soft lockups, no progress). Measured without any update loaded, on
two vCPUs: 1 boot of 4 hung, within 1500 on/off toggles (stop 17's CI timed out the
same way); on one vCPU: no hang in 3600 toggles, nor in 1200 with this update.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from helpers import Prebuilt, create, tarball_from

from ksplice_tasks import names
from ksplice_tasks.testing import debian_guest

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

REPO = Path(__file__).resolve().parents[1]
PATCH = REPO / "patches" / "debian-tracepoint-jump-label.patch"
KEY_PATCH = REPO / "patches" / "debian-static-key-jump-label.patch"
SYSCTL = "/proc/sys/kernel/sched_schedstats"
EVENT = "/sys/kernel/tracing/events/sched/sched_kthread_stop_ret/enable"

SCRIPT = """KS="chroot /host {python} -m ksplice_tasks.target.apply"
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
hits() {{ grep -c 'ret=4242' /sys/kernel/tracing/trace; }}
echo 1 > {event}
cat /proc/loadavg >/dev/null
echo "@@ before-on $(hits)"
$KS apply {tarball} || echo "@@ apply failed"
cat /proc/loadavg >/dev/null; cat /proc/loadavg >/dev/null
echo "@@ applied-on $(hits)"
echo 0 > {event}
echo > /sys/kernel/tracing/trace
cat /proc/loadavg >/dev/null
echo "@@ applied-off $(hits)"
echo 1 > {event}
cat /proc/loadavg >/dev/null
echo "@@ applied-on-again $(hits)"
$KS undo {uid} || echo "@@ undo failed"
echo > /sys/kernel/tracing/trace
cat /proc/loadavg >/dev/null
echo "@@ undone-on $(hits)"
echo 0 > {event}
echo "@@ modules $(grep -c ksplice /proc/modules)"
dmesg | grep -E 'ksplice|WARNING|BUG|Oops|jump' | sed 's/^/@@ dmesg /'
"""


KEY_SCRIPT = """KS="chroot /host {python} -m ksplice_tasks.target.apply"
hits() {{ grep -c '^schedstats ' /proc/loadavg; }}
echo 1 > {sysctl}
echo "@@ before-on $(hits)"
$KS apply {tarball} || echo "@@ apply failed"
echo "@@ applied-on $(hits)"
echo 0 > {sysctl}
echo "@@ applied-off $(hits)"
echo 1 > {sysctl}
echo "@@ applied-on-again $(hits)"
$KS undo {uid} || echo "@@ undo failed"
echo "@@ undone-on $(hits)"
echo 0 > {sysctl}
echo "@@ modules $(grep -c ksplice /proc/modules)"
dmesg | grep -E 'ksplice|WARNING|BUG|Oops|jump' | sed 's/^/@@ dmesg /'
"""


def _counts(out: str) -> dict[str, str]:
    return dict(re.findall(r"^@@ (\S+) (\S+)$", out, re.M))


def _run(prebuilt: Prebuilt, kernel: debian_guest.DebianKernel, patch: Path, script: str,
         tmp_path: Path, cpus: int | None = None, **fmt: str) -> tuple[dict[str, str], str]:
    """Create the update from ``patch``, boot ``script`` with it (``cpus``: the
    kernel's default): (@@ counts, output)."""
    res = create(prebuilt, patch, tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    tarball = tarball_from(res.stdout, tmp_path)
    uid = names.tarball_id(tarball.name)
    boot = kernel.boot(script.format(python=sys.executable, tarball=tarball, uid=uid, **fmt),
                       hostfs=True, timeout=300, cpus=cpus or kernel.cpus)
    out = boot.guest_output
    assert boot.ok, boot.output[-4000:]
    assert "@@ apply failed" not in out and "@@ undo failed" not in out, out[-4000:]
    assert "jump labels of the new code registered" in out, out[-4000:]
    dmesg = "\n".join(line for line in out.splitlines() if line.startswith("@@ dmesg"))
    assert not re.search(r"WARNING|BUG|Oops", dmesg), dmesg
    c = _counts(out)
    print(c)
    assert c.get("modules") == "0", out[-4000:]
    return c, out


def test_tracepoint_in_new_code_follows_its_key(prebuilt_debian: Prebuilt,
                                                kernel_debian: debian_guest.DebianKernel,
                                                tmp_path: Path) -> None:
    c, out = _run(prebuilt_debian, kernel_debian, PATCH, SCRIPT, tmp_path, event=EVENT)
    # the old code has no such event; the new code's site follows the key both ways
    assert c.get("before-on") == "0", out[-4000:]
    assert int(c.get("applied-on", "0")) >= 2, out[-4000:]
    assert c.get("applied-off") == "0", out[-4000:]
    assert c.get("applied-on-again") == "1", out[-4000:]
    assert c.get("undone-on") == "0", out[-4000:]


def test_static_key_enabled_before_the_apply(prebuilt_debian: Prebuilt,
                                             kernel_debian: debian_guest.DebianKernel,
                                             tmp_path: Path) -> None:
    c, out = _run(prebuilt_debian, kernel_debian, KEY_PATCH, KEY_SCRIPT, tmp_path, cpus=1,
                  sysctl=SYSCTL)
    assert c == {"before-on": "0", "applied-on": "1", "applied-off": "0",
                 "applied-on-again": "1", "undone-on": "0", "modules": "0"}, out[-4000:]
