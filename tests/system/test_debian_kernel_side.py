# SPDX-License-Identifier: GPL-2.0-only
"""The kernel side on Debian's shipped kernel (-smp 2): NMIs, idle tasks, refused applies.

One boot, with updates built against Debian's tree:

* ``nmi``: arch/x86/kernel/apic/hw_nmi.c's nmi_cpu_backtrace_handler, an
  NMI handler every NMI runs. The update is reversed and applied 50 times
  (and on until an NMI came during a write, 400 at most) while the host
  injects an NMI every 4 ms through qemu's monitor (they reach CPU 0, the
  CPU that writes the sites, at any moment): some of them trap on a site's
  int3 and the die notifier sends them on to the replacement
  (``int3_hits``); no BUG/Oops/WARNING; before= equals now= after the last
  reverse; every online CPU's idle task is stack-checked. (sysrq-l, which
  NMIs the other CPUs and makes this handler print, is not hammered at the
  same time: with the injected NMIs it hung the stock kernel once, see
  kmodsrc/README.md.)
* refused applies, each leaving the kernel text as it was (hashes of the
  functions' running bytes from /proc/kcore, testing/kcore.py) and no module
  of the refused update loaded: ``already_applied`` (the example twice),
  ``no_match`` (a second update of loadavg_proc_show stacked on the first:
  the running bytes now start with the first's jump; and kernel/sched/idle.c,
  whose cpu_startup_entry is on every idle stack: code_busy, or no_match where
  run-pre matching does not accept its paravirt sites),
  ``not_loaded`` (binfmt_misc's update while binfmt_misc.ko is not loaded).
  ``code_busy`` is shown on the test kernels (test_apply_updates.py), where
  a kthread sleeps in a patched function.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import pytest
from helpers import Prebuilt, create, exit_code, parse_marked, tarball_from

from ksplice_tasks import names
from ksplice_tasks.testing import debian_guest, qemu

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

REPO = Path(__file__).resolve().parents[2]
PATCHES = REPO / "tests" / "patches"
CYCLES = 50          # reverse/apply pairs, more until an NMI hit an int3 ...
MAX_CYCLES = 400     # ... up to this many
UPDATES = {
    "nmi": PATCHES / "debian-nmi-handler.patch",
    "example": REPO / "ksplice_tasks" / "data" / "example-loadavg.patch",
    "loadavg_other": PATCHES / "loadavg-other.patch",
    "idle": PATCHES / "debian-idle-startup.patch",
    "binfmt": PATCHES / "binfmt-misc-module.patch",
}
HASHED = ("loadavg_proc_show", "cpu_startup_entry", "nmi_cpu_backtrace_handler")
KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\] ")
BAD = ("WARNING", "BUG", "Oops", "general protection", "int3")


def guest_script(t: dict[str, Path]) -> str:
    py = f"chroot /host env PYTHONPATH={REPO} {sys.executable} -m"
    ids = {k: names.tarball_id(v.name) for k, v in t.items()}
    d = f"/sys/module/{names.sysfs_module(ids['nmi'])}/ksplice"
    ex = f"/sys/module/{names.sysfs_module(ids['example'])}/ksplice"
    # console_loglevel 0: not even the emergency "NMI received for unknown reason"
    # of the injected NMIs reaches the console and cuts into the marked lines
    return f"""echo 0 > /proc/sys/kernel/printk
KS="{py} ksplice_tasks.target.apply"
KC="{py} ksplice_tasks.testing.kcore"
mark() {{ echo "@@$1"; }}
r() {{ "$@" > /tmp/out 2>&1; rc=$?; tail -1 /tmp/out; echo "rc=$rc"; }}
mods() {{ grep -c '^ksplice' /proc/modules; }}
hashes() {{ $KC {' '.join(HASHED)}; }}
# the host starts its NMIs once the guest is up: wait for them
first="$(grep NMI: /proc/interrupts)"; n=0
while [ "$(grep NMI: /proc/interrupts)" = "$first" ] && [ $n -lt 600 ]; do
    sleep 0.2; n=$((n + 1))
done
$KS apply {t['nmi']} > /tmp/nmi_apply 2>&1; echo "rc=$?" >> /tmp/nmi_apply
hits() {{ grep int3_hits {d}/timing | cut -d' ' -f2; }}
i=0
while [ $i -lt {CYCLES} ] || {{ [ "$(hits)" = 0 ] && [ $i -lt {MAX_CYCLES} ]; }}; do
    echo reverse > {d}/stage || echo "reverse $i $(cat {d}/abort_cause)" >> /tmp/refused
    echo apply > {d}/stage || echo "apply $i $(cat {d}/abort_cause)" >> /tmp/refused
    i=$((i + 1))
done
mark nmi_apply; tail -1 /tmp/nmi_apply
mark nmi_refused; cat /tmp/refused 2>/dev/null; echo end
mark nmi_timing; cat {d}/timing
echo reverse > {d}/stage
mark nmi_patches; cat {d}/patches
mark nmi_undo; $KS undo {ids['nmi']} 2>&1; echo "rc=$?"
mark h0; hashes
mark mods0; mods
mark example; $KS apply {t['example']} 2>&1; echo "rc=$?"
mark h1; hashes
mark already; $KS apply {t['example']} 2>&1; echo "rc=$?"
mark already_raw; echo apply > {ex}/stage; echo "rc=$?"; cat {ex}/abort_cause
mark h_already; hashes
mark mods_already; mods
mark stacked; r $KS apply {t['loadavg_other']}
mark h_stacked; hashes
mark mods_stacked; mods
mark example_undo; $KS undo {ids['example']} 2>&1; echo "rc=$?"
mark h_undone; hashes
mark idle; r $KS apply {t['idle']}
mark h_idle; hashes
mark mods_idle; mods
mark binfmt; r $KS apply {t['binfmt']}
mark h_binfmt; hashes
mark mods_binfmt; mods
mark log; dmesg | grep -E '{"|".join(BAD)}'; echo end
mark end
"""


@pytest.fixture(scope="module")
def guest(prebuilt_debian: Prebuilt, kernel_debian: debian_guest.DebianKernel,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tarballs = {}
    for name, patch in UPDATES.items():
        out = tmp_path_factory.mktemp(name)
        res = create(prebuilt_debian, patch, out)
        assert res.returncode == 0, (name, res.stdout[-3000:] + res.stderr)
        tarballs[name] = tarball_from(res.stdout, out)
    monitor = tmp_path_factory.mktemp("qemu") / "monitor"
    stop = threading.Event()
    sent: list[int] = []
    injector = threading.Thread(
        target=lambda: sent.append(qemu.inject_nmis(monitor, stop, interval_s=0.004)))
    injector.start()
    try:
        res = kernel_debian.boot(guest_script(tarballs), hostfs=True, timeout=600,
                                 monitor=monitor)
    finally:
        stop.set()
        injector.join()
    out = parse_marked("\n".join(line for line in res.guest_output.splitlines()
                                  if not KERNEL_LINE.match(line)))
    assert res.ok and "end" in out, res.output[-6000:]
    assert sent and sent[0] > 0, "no NMI injected"
    return out


def hashes(block: str) -> dict[str, str]:
    pairs = dict(line.split() for line in block.splitlines())
    assert sorted(pairs) == sorted(HASHED), block
    return pairs


def test_nmi_handler_patched_while_nmis_hammer_it(guest) -> None:
    assert exit_code(guest["nmi_apply"]) == 0, guest["nmi_apply"]
    assert guest["nmi_refused"] == "end", guest["nmi_refused"]
    timing = dict(line.split() for line in guest["nmi_timing"].splitlines())
    pairs = (int(timing["operations"]) - 1) // 2
    assert CYCLES <= pairs <= MAX_CYCLES, timing
    # NMIs came while the sites held int3s, and went on to the replacement
    # (which, between the writes, every NMI on CPU 0 runs through the jump)
    assert int(timing["int3_hits"]) > 0, timing
    fields = dict(f.split("=", 1) for f in guest["nmi_patches"].split()[1:])
    assert fields["before"] == fields["now"], guest["nmi_patches"]
    assert exit_code(guest["nmi_undo"]) == 0
    assert guest["log"] == "end", guest["log"]


def test_idle_tasks_are_stack_checked(guest) -> None:
    timing = dict(line.split() for line in guest["nmi_timing"].splitlines())
    assert timing["idle_checked"] == "2", timing      # -smp 2: both CPUs' idle tasks
    assert int(timing["tasks_checked"]) > 2, timing


def test_refused_applies_leave_text_and_modules_as_they_were(guest) -> None:
    h0 = hashes(guest["h0"])
    assert guest["mods0"] == "0"
    assert exit_code(guest["example"]) == 0
    h1 = hashes(guest["h1"])
    assert h1["loadavg_proc_show"] != h0["loadavg_proc_show"]   # the hash sees a jump
    # already_applied: nothing written, the applied update's primary alone stays
    assert exit_code(guest["already"]) == 1 and "already applied" in guest["already"]
    assert guest["already_raw"].splitlines()[-2:] == ["rc=1", "already_applied"]
    assert hashes(guest["h_already"]) == h1 and guest["mods_already"] == "1"
    # no_match: an update of a function another update has replaced
    assert exit_code(guest["stacked"]) == 1 and "(no match)" in guest["stacked"]
    assert hashes(guest["h_stacked"]) == h1 and guest["mods_stacked"] == "1"
    assert exit_code(guest["example_undo"]) == 0 and hashes(guest["h_undone"]) == h0
    # kernel/sched/idle.c: refused for its paravirt sites (no_match) before run-pre
    # matching knew paravirt and alternative sites; cpu_startup_entry, the patched
    # function, is on every idle task's stack, so code_busy refuses it now
    assert exit_code(guest["idle"]) == 1 and ("(no match)" in guest["idle"]
                                              or "(code busy)" in guest["idle"])
    assert hashes(guest["h_idle"]) == h0 and guest["mods_idle"] == "0"
    # not_loaded: binfmt_misc.ko is not loaded
    assert exit_code(guest["binfmt"]) == 1 and "not loaded" in guest["binfmt"], guest["binfmt"]
    assert hashes(guest["h_binfmt"]) == h0 and guest["mods_binfmt"] == "0"
