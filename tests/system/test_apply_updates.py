# SPDX-License-Identifier: GPL-2.0-only
"""Real updates applied, viewed and undone in the SMP+KASLR and lp (ftrace) test kernels.

Each variant boots once, with the host's root over 9p so the guest runs the
project's own ``ksplice-apply``/``-view``/``-undo`` code.  The updates are
built from real 6.1 sources by the shipped pipeline (tests/system/updates.py):

* ``good``: /proc/loadavg gains a " ksplice" suffix (fs/proc/loadavg.c);
* ``edited``: the same change, built from a pre source that differs from
  what the running kernel was built from (run-pre matching must refuse it);
* ``other``: the same change, compiled with the other test config's recipe;
* ``msleep``: kernel/time/timer.c's msleep(), which a test kthread sleeps in.

The guest prints each step after an ``@@name`` marker; the tests read them.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest
import updates
from helpers import Prebuilt, exit_code, parse_marked

from ksplice_tasks import names
from ksplice_tasks.target import apply
from ksplice_tasks.testing import testkernel

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

CYCLES = 200
SLEEP_MS = 15000

LOADAVG_FMT = '"%lu.%02lu %lu.%02lu %lu.%02lu %u/%d %d\\n"'


def loadavg_post(src: str) -> str:
    assert LOADAVG_FMT in src
    return src.replace(LOADAVG_FMT, LOADAVG_FMT.replace("%d\\n", "%d ksplice\\n"))


def loadavg_edited_pre(src: str) -> str:
    """A source the running kernel was not built from: a different constant in the function."""
    assert "FIXED_1/200" in src
    return src.replace("FIXED_1/200", "FIXED_1/100")



OTHER_VARIANT = {"smp": "lp", "lp": "smp"}


def build_all(pb: Prebuilt, other: testkernel.TestKernel, d: Path) -> dict[str, Path]:
    """good and msleep by ksplice-create on the prebuilt tree; edited and other from objects."""
    kernel = pb.kernel
    loadavg = (kernel.source / "fs/proc/loadavg.c").read_text()
    timer = (kernel.source / "kernel/time/timer.c").read_text()
    obj = "fs/proc/loadavg.o"
    good = updates.create_update(pb, "fs/proc/loadavg.c", loadavg_post(loadavg), d / "good")
    edited = updates.build_from_objects(kernel, obj, loadavg_post(loadavg), d / "edited",
                                        pre_text=loadavg_edited_pre(loadavg))
    oth = updates.build_from_objects(kernel, obj, loadavg_post(loadavg), d / "other",
                                     compile_with=other)
    msl = updates.create_update(pb, "kernel/time/timer.c", updates.msleep_post(timer), d / "msleep")
    return {"good": good, "edited": edited, "other": oth, "msleep": msl,
            "sleeper": updates.build_sleeper(kernel, d / "sleeper")}


def update_id(tarball: Path) -> str:
    uid = names.tarball_id(tarball.name)
    assert uid is not None, tarball
    return uid


def guest_script(good: str, msleep: str) -> str:
    ks = updates.GUEST_KS
    m = f"/sys/module/{names.sysfs_module(good)}/ksplice"
    busy_mod = names.sysfs_module(msleep)
    busy = f"/sys/module/{busy_mod}/ksplice"
    return f"""
cp /m/*.tar.gz /host/run/
echo junk > /host/run/junk.tar.gz
KS="{ks}"
mark() {{ echo "@@$1"; }}
left() {{ ls /sys/module | grep ksplice; echo end; }}
mark before; cat /proc/loadavg
mark apply; $KS apply /run/good.tar.gz 2>&1; echo "rc=$?"
mark view; $KS view 2>&1; echo "rc=$?"
mark view_id; $KS view --id {good} 2>&1; echo "rc=$?"
mark view_none; $KS view --id zzzzzzzz 2>&1; echo "rc=$?"
mark after; cat /proc/loadavg
mark left_applied; left
mark again; $KS apply /run/good.tar.gz 2>&1; echo "rc=$?"
mark reverse; echo reverse > {m}/stage; echo "rc=$?"
mark stage_reversed; cat {m}/stage
mark patches; cat {m}/patches
mark restored; cat /proc/loadavg
mark undo; $KS undo {good} 2>&1; echo "rc=$?"
mark left_undone; left
mark apply2; $KS apply /run/good.tar.gz 2>&1; echo "rc=$?"
mark after2; cat /proc/loadavg
mark undo2; $KS undo {good} 2>&1; echo "rc=$?"
mark restored2; cat /proc/loadavg
mark edited; $KS apply /run/edited.tar.gz 2>&1; echo "rc=$?"
mark other; $KS apply /run/other.tar.gz 2>&1; echo "rc=$?"
mark missing; $KS apply /run/nonexistent.tar.gz 2>&1; echo "rc=$?"
mark junk; $KS apply /run/junk.tar.gz 2>&1; echo "rc=$?"
mark badid; $KS undo NOT-AN-ID 2>&1; echo "rc=$?"
mark notloaded; $KS undo zzzzzzzz 2>&1; echo "rc=$?"
mark left_refused; left
mark untouched; cat /proc/loadavg
mark dmesg_refused; dmesg | grep -E 'run-pre|aborted'
insmod /m/sleeper.ko ms={SLEEP_MS}
mark busy; $KS apply /run/msleep.tar.gz 2>&1; echo "rc=$?"
mark left_busy; left
mark dmesg_busy; dmesg | grep -E 'is inside the code|aborted'
mark busy_raw; mkdir -p /tmp/msl; tar xzf /m/msleep.tar.gz -C /tmp/msl
insmod /tmp/msl/ksplice-{msleep}/ksplice-{msleep}.ko
insmod /tmp/msl/ksplice-{msleep}/ksplice-{msleep}-helper.ko
echo apply > {busy}/stage; echo "rc=$?"; cat {busy}/abort_cause {busy}/patches
rmmod {busy_mod}_helper; rmmod {busy_mod}
mark left_busy_raw; left
while [ "$(cat /sys/module/msleeper/parameters/done)" != 1 ]; do sleep 1; done
mark unbusy; $KS apply /run/msleep.tar.gz 2>&1; echo "rc=$?"
mark unbusy_undo; $KS undo {msleep} 2>&1; echo "rc=$?"
mark stress_apply; $KS apply /run/good.tar.gz 2>&1; echo "rc=$?"
reader() {{
    while :; do read l < /proc/loadavg; case "$l" in *" "*/*) ;; *) echo "BAD $l";; esac; done
}}
reader & r1=$!
reader & r2=$!
i=0
while [ $i -lt {CYCLES} ]; do
    echo reverse > {m}/stage || echo "FAIL reverse $i $(cat {m}/abort_cause)"
    cat {m}/pause_us >> /tmp/pauses
    echo apply > {m}/stage || echo "FAIL apply $i $(cat {m}/abort_cause)"
    cat {m}/pause_us >> /tmp/pauses
    i=$((i + 1))
done
kill $r1 $r2
mark cycles; echo $i
mark pauses; cat /tmp/pauses
mark timing; cat {m}/timing
mark stopped; dmesg | grep -o 'work [0-9]* us' | tail -5
mark stress_undo; $KS undo {good} 2>&1; echo "rc=$?"
mark final; cat /proc/loadavg
mark left_final; left
mark dmesg; dmesg | grep -E 'WARNING|BUG|Oops|ftrace|ksplice'
mark end
"""


@pytest.fixture(scope="module", params=["smp", "lp"])
def guest(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[str, dict[str, str]]:
    variant = request.param
    pb: Prebuilt = request.getfixturevalue(f"prebuilt_{variant}")
    kernel = pb.kernel
    other = testkernel.build_test_kernel(OTHER_VARIANT[variant])
    files = build_all(pb, other, tmp_path_factory.mktemp(f"updates-{variant}"))
    ids = {"good": update_id(files["good"]), "msleep": update_id(files["msleep"])}
    res = kernel.boot(guest_script(**ids), hostfs=True, timeout=900,
                      files=[(f"/m/{k}.tar.gz" if k != "sleeper" else "/m/sleeper.ko", v)
                             for k, v in files.items()])
    out = parse_marked(res.guest_output)
    assert res.ok and "end" in out, res.output[-6000:]
    out.update({f"id:{k}": v for k, v in ids.items()})
    return variant, out


def is_patched(line: str) -> bool:
    return line.endswith(" ksplice")


def test_behaviour_before_apply_after_undo(guest) -> None:
    _v, g = guest
    assert not is_patched(g["before"])
    assert exit_code(g["apply"]) == 0 and g["apply"].splitlines()[0] == "Done!"
    assert is_patched(g["after"])
    good = g["id:good"]
    assert g["left_applied"].split() == [f"ksplice_{good}", "end"], "helper must be unloaded"
    assert exit_code(g["reverse"]) == 0 and g["stage_reversed"] == "reversed"
    assert not is_patched(g["restored"])
    assert exit_code(g["undo"]) == 0 and g["left_undone"] == "end"
    assert exit_code(g["apply2"]) == 0 and is_patched(g["after2"])
    assert exit_code(g["undo2"]) == 0 and not is_patched(g["restored2"])


def test_undo_restores_the_bytes_exactly(guest) -> None:
    variant, g = guest
    fields = dict(f.split("=", 1) for f in g["patches"].split()[1:])
    assert g["patches"].split()[0] == "loadavg_proc_show"
    assert fields["before"] == fields["now"] and fields["before"] != "0" * 16
    site = int(fields["site"], 16) - int(fields["old"], 16)
    # lp: the jump goes after the ftrace NOP, which stays for ftrace.
    assert site == (5 if variant == "lp" else 0)


def test_view_lists_the_update(guest) -> None:
    _v, g = guest
    assert exit_code(g["view"]) == 0 and exit_code(g["view_id"]) == 0
    assert f"ksplice-{g['id:good']}: applied" in g["view"]
    assert "functions: loadavg_proc_show" in g["view_id"]
    assert re.search(r"stop_machine pause: \d+\.\d{3} us", g["view_id"])
    assert exit_code(g["view_none"]) != 0 and len(g["view_none"].splitlines()) == 2


def test_already_applied_is_refused(guest) -> None:
    _v, g = guest
    assert exit_code(g["again"]) == 1 and "already applied" in g["again"]


def test_other_builds_are_refused_by_run_pre_matching(guest) -> None:
    _v, g = guest
    assert exit_code(g["edited"]) == 1 and "(no match)" in g["edited"], g["edited"]
    assert exit_code(g["other"]) == 1 and "Aborted:" in g["other"], g["other"]
    assert "(no match)" in g["other"] or "System.map mismatch" in g["other"]
    assert g["left_refused"] == "end"
    assert not is_patched(g["untouched"])
    assert "run-pre: no running copy of loadavg_proc_show matches" in g["dmesg_refused"]


def test_bad_input_is_one_line_and_nonzero(guest) -> None:
    _v, g = guest
    for key in ("missing", "junk", "badid", "notloaded"):
        lines = g[key].splitlines()
        assert len(lines) == 2 and exit_code(g[key]) != 0, (key, g[key])


def test_sleeping_kthread_makes_apply_busy_until_it_leaves(guest) -> None:
    _v, g = guest
    assert exit_code(g["busy"]) == 1 and "(code busy)" in g["busy"], g["busy"]
    assert g["left_busy"] == "end"
    tries = re.findall(r"try (\d): ksplice_sleeper\[\d+\] is inside the code \(msleep\+",
                       g["dmesg_busy"])
    assert tries == ["1", "2", "3", "4", "5"], g["dmesg_busy"]
    assert exit_code(g["unbusy"]) == 0 and exit_code(g["unbusy_undo"]) == 0


def test_a_code_busy_apply_leaves_the_bytes_and_no_module(guest) -> None:
    """The same refusal through sysfs: the kernel side's own hashes of msleep's bytes,
    taken before the try and live after it, are equal; both modules unload."""
    _v, g = guest
    rc, cause, patches = g["busy_raw"].splitlines()[-3:]  # after sh's "write error"
    assert (rc, cause) == ("rc=1", "code_busy"), g["busy_raw"]
    fields = dict(f.split("=", 1) for f in patches.split()[1:])
    assert patches.split()[0] == "msleep" and fields["before"] != "0" * 16, patches
    assert fields["before"] == fields["now"], patches
    assert g["left_busy_raw"] == "end"


def pauses(g: dict[str, str]) -> list[float]:
    return [float(x) for x in g["pauses"].split()]


def test_apply_undo_cycles_under_load(guest) -> None:
    variant, g = guest
    assert exit_code(g["stress_apply"]) == 0
    assert int(g["cycles"]) == CYCLES
    p = pauses(g)
    assert len(p) == 2 * CYCLES and all(x >= 0 for x in p)
    # Under TCG the guest's TSC calibration fails in some boots (tsc_khz 0,
    # clocksource refined-jiffies): the pause then comes from a jiffy clock and
    # one shorter than a jiffy reads 0.  With a TSC rate every pause is > 0.
    tsc_khz = apply.parse_timing(g["timing"]).get("tsc_khz")
    assert tsc_khz is not None, g["timing"]
    if tsc_khz:
        assert all(x > 0 for x in p), p
    assert exit_code(g["stress_undo"]) == 0 and not is_patched(g["final"])
    assert g["left_final"] == "end"
    print(f"\n{variant}: {CYCLES} cycles, stop_machine pause median "
          f"{statistics.median(p):.1f} us, max {max(p):.1f} us, tsc_khz {tsc_khz}")


def test_no_oops_or_warning(guest) -> None:
    _v, g = guest
    for bad in ("WARNING", "BUG", "Oops", "FAIL", "ftrace failed", "BAD "):
        assert bad not in g["dmesg"] and bad not in g["stress_apply"], g["dmesg"][-3000:]


NO_TSC_CYCLES = 20


def test_a_kernel_without_a_tsc_rate_times_pauses_with_its_own_clock(
        prebuilt_smp: Prebuilt, tmp_path: Path) -> None:
    """``clearcpuid=tsc``: the SMP kernel never learns a TSC rate (tsc_khz 0) and counts
    time in refined-jiffies, as in the TCG boots whose TSC calibration fails.

    The update still applies, cycles and undoes; ``timing`` says ``tsc_khz 0``, the
    work inside stop_machine is not timed (``stopped_ns 0``) and ``ksplice-view``
    says the pause is the kernel clock's.
    """
    kernel = prebuilt_smp.kernel
    loadavg = (kernel.source / "fs/proc/loadavg.c").read_text()
    good = updates.create_update(prebuilt_smp, "fs/proc/loadavg.c", loadavg_post(loadavg),
                                 tmp_path / "good")
    uid = update_id(good)
    ks = updates.GUEST_KS
    m = f"/sys/module/{names.sysfs_module(uid)}/ksplice"
    script = f"""
cp /m/good.tar.gz /host/run/
KS="{ks}"
mark() {{ echo "@@$1"; }}
mark clocksource; cat /sys/devices/system/clocksource/clocksource0/current_clocksource
mark apply; $KS apply /run/good.tar.gz 2>&1; echo "rc=$?"
i=0
while [ $i -lt {NO_TSC_CYCLES} ]; do
    echo reverse > {m}/stage && cat {m}/pause_us >> /tmp/pauses
    echo apply > {m}/stage && cat {m}/pause_us >> /tmp/pauses
    i=$((i + 1))
done
mark pauses; cat /tmp/pauses
mark timing; cat {m}/timing
mark view; $KS view --id {uid} 2>&1; echo "rc=$?"
mark after; cat /proc/loadavg
mark undo; $KS undo {uid} 2>&1; echo "rc=$?"
mark final; cat /proc/loadavg
mark dmesg; dmesg | grep -E 'WARNING|BUG|Oops|divide error'
mark end
"""
    res = kernel.boot(script, hostfs=True, timeout=600, append="clearcpuid=tsc",
                      files=[("/m/good.tar.gz", good)])
    g = parse_marked(res.guest_output)
    assert res.ok and "end" in g, res.output[-4000:]
    assert g["clocksource"] == "refined-jiffies", g["clocksource"]
    assert exit_code(g["apply"]) == 0, g["apply"]
    timing = apply.parse_timing(g["timing"])
    assert timing["tsc_khz"] == 0 and timing["stopped_ns"] == 0, g["timing"]
    assert timing["operations"] == 2 * NO_TSC_CYCLES + 1, g["timing"]
    p = pauses(g)
    assert len(p) == 2 * NO_TSC_CYCLES and all(x >= 0 for x in p), p
    assert exit_code(g["view"]) == 0
    assert re.search(r"stop_machine pause: \d+\.\d{3} us \(kernel clock: this kernel has no"
                     r" TSC rate\)", g["view"]), g["view"]
    assert is_patched(g["after"]) and exit_code(g["undo"]) == 0 and not is_patched(g["final"])
    assert g["dmesg"] == "", g["dmesg"]
