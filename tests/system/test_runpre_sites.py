# SPDX-License-Identifier: GPL-2.0-only
"""Run-pre matching of code the boot rewrote, and which functions must match (issue 10).

One boot of the lp test kernel (SMP+KASLR, ftrace/livepatch/ORC), updates
built against its prebuilt tree:

* ``util`` (case 03, mm/util.c) and ``readdir`` (case 09, fs/readdir.c) are
  loaded by hand and applied, and the helper's ``runpre`` file is read
  before it goes: ``kvmalloc_node`` (its static_cpu_has() alternative:
  ``jmp .altinstr_aux`` in the object, ``eb`` + NOP3 or a NOP5 running),
  ``copy_siginfo_to_user``-like NOP padding ``90 90 90`` that
  optimize_nops() made ``0f 1f 00``, and ``filldir``/``filldir64``/
  ``fillonedir`` (stac/clac/lfence alternatives, some applied by the boot)
  must be *found* (kind 1); ``kstrdup_const`` (its tail call ``jmp rel32``
  relaxed to ``eb`` in the running kernel, the function 3 bytes shorter,
  kind 2) too.
* ``signal`` (kernel/signal.c, ``force_sigsegv`` patched: kind 2 in the
  patched function itself) is applied with ksplice-apply and undone.
* ``elsewhere``: msleep() changed, built from a pre source whose
  ``msleep_interruptible`` differs from what runs: applied (that function is
  not needed), and reported; ``edited``: the same change built from a pre
  source whose ``msleep`` itself differs: refused with no match (kind 3).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import updates
from helpers import Prebuilt, create, exit_code, parse_marked, tarball_from

import ksplice_tasks
from ksplice_tasks import names

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

ROOT = Path(ksplice_tasks.__file__).resolve().parent.parent
CASES = Path(os.environ.get("KSPLICE_CASES", ROOT.parent / "shared" / "cases"))
KS = (f"chroot /host env PYTHONPATH={ROOT} TMPDIR=/run {sys.executable}"
      " -m ksplice_tasks.target.apply")
MSLEEP_INT = "\tunsigned long timeout = msecs_to_jiffies(msecs) + 1;\n\n\twhile (timeout && "
SIGSEGV_LINE = "\tif (sig == SIGSEGV)\n\t\tforce_fatal_sig(SIGSEGV);\n"



def edit_msleep_interruptible(src: str) -> str:
    assert src.count(MSLEEP_INT) == 1
    return src.replace(MSLEEP_INT, MSLEEP_INT.replace("+ 1;", "+ 3;"))


def edit_msleep(src: str) -> str:
    return updates.msleep_post(src, 3)


def signal_post(src: str) -> str:
    assert src.count(SIGSEGV_LINE) == 1
    return src.replace(SIGSEGV_LINE, "\tif (sig == SIGSEGV || sig == SIGKILL)\n"
                                     "\t\tforce_fatal_sig(SIGSEGV);\n")


def raw_lines(key: str, tb: Path) -> list[str]:
    """Load both modules, apply, read the helper's runpre, reverse and unload."""
    uid = names.tarball_id(tb.name)
    mod = names.sysfs_module(uid)
    d = f"/sys/module/{mod}/ksplice"
    return [
        f"mkdir -p /tmp/{key}; tar xzf /m/{key}.tar.gz -C /tmp/{key}",
        f"insmod /tmp/{key}/ksplice-{uid}/ksplice-{uid}.ko",
        f"insmod /tmp/{key}/ksplice-{uid}/ksplice-{uid}-helper.ko",
        f"mark {key}_apply; echo apply > {d}/stage; echo rc=$?; cat {d}/abort_cause",
        f"mark {key}_runpre; cat /sys/module/{mod}_helper/ksplice/runpre",
        f"mark {key}_reverse; echo reverse > {d}/stage; echo rc=$?",
        f"rmmod {mod}_helper; rmmod {mod}",
    ]


def guest_script(t: dict[str, Path]) -> str:
    ids = {k: names.tarball_id(v.name) for k, v in t.items()}
    lines = [f'KS="{KS}"', 'mark() { echo "@@$1"; }', "cp /m/*.tar.gz /host/run/"]
    lines += raw_lines("util", t["util"]) + raw_lines("readdir", t["readdir"])
    lines += [
        "mark signal; $KS apply /run/signal.tar.gz 2>&1; echo rc=$?",
        f"mark signal_undo; $KS undo {ids['signal']} 2>&1; echo rc=$?",
        "mark elsewhere; $KS apply /run/elsewhere.tar.gz 2>&1; echo rc=$?",
        f"mark elsewhere_undo; $KS undo {ids['elsewhere']} 2>&1; echo rc=$?",
        "mark edited; $KS apply /run/edited.tar.gz 2>&1; echo rc=$?",
        "mark left; ls /sys/module | grep ksplice; echo end",
        "mark dmesg; dmesg | grep -E 'WARNING|BUG|Oops|run-pre'",
        "mark end",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def guest(prebuilt_lp: Prebuilt, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    kernel = prebuilt_lp.kernel
    d = tmp_path_factory.mktemp("runpre-sites")
    files: dict[str, Path] = {}
    for key, case in (("util", "03-new-func-name-object"), ("readdir", "09-extable-alternatives")):
        res = create(prebuilt_lp, CASES / f"{case}.patch", d / key)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr
        files[key] = tarball_from(res.stdout, d / key)
    signal = (kernel.source / "kernel/signal.c").read_text()
    files["signal"] = updates.create_update(prebuilt_lp, "kernel/signal.c", signal_post(signal),
                                            d / "signal")
    timer = (kernel.source / "kernel/time/timer.c").read_text()
    obj = "kernel/time/timer.o"
    elsewhere = edit_msleep_interruptible(timer)
    files["elsewhere"] = updates.build_from_objects(kernel, obj, updates.msleep_post(elsewhere),
                                                    d / "elsewhere", pre_text=elsewhere)
    files["edited"] = updates.build_from_objects(kernel, obj, updates.msleep_post(timer),
                                                 d / "edited", pre_text=edit_msleep(timer))
    res = kernel.boot(guest_script(files), hostfs=True, timeout=900,
                      files=[(f"/m/{k}.tar.gz", v) for k, v in files.items()])
    out = parse_marked(res.guest_output)
    assert res.ok and "end" in out, res.output[-6000:]
    print("\n" + out["dmesg"])
    out.update({f"id:{k}": names.tarball_id(v.name) or "" for k, v in files.items()})
    return out


def runpre(block: str) -> dict[str, str]:
    return {p[0]: p[1] for p in (line.split() for line in block.splitlines()) if len(p) == 3}


@pytest.mark.parametrize("key, functions", [
    ("util", ("kvmalloc_node", "kstrdup_const", "overcommit_policy_handler")),
    ("readdir", ("filldir", "filldir64", "fillonedir")),
])
def test_boot_rewritten_functions_are_found(guest: dict[str, str], key: str,
                                            functions: tuple[str, ...]) -> None:
    assert guest[f"{key}_apply"].splitlines() == ["rc=0", "none"], guest[f"{key}_apply"]
    found = runpre(guest[f"{key}_runpre"])
    # the file lists every function not found first; found ones may be cut off ("+N more")
    assert all(found.get(f, "found") == "found" for f in functions), found
    assert "failed" not in found.values(), found
    assert guest[f"{key}_reverse"] == "rc=0"


def test_relaxed_jump_in_the_patched_function_applies(guest: dict[str, str]) -> None:
    """force_sigsegv (relaxed tail call) and copy_siginfo_to_user (alternatives): all match."""
    assert exit_code(guest["signal"]) == 0 and guest["signal"].splitlines() == ["Done!", "rc=0"], (
        guest["signal"] + guest["dmesg"])
    assert exit_code(guest["signal_undo"]) == 0
    summary = [line for line in guest["dmesg"].splitlines()
               if f"{guest['id:signal']} run-pre:" in line and "functions matched" in line]
    assert summary and summary[-1].endswith(" 0 failed, 0 failed but not needed"), summary


def test_unneeded_mismatch_is_reported_not_refused(guest: dict[str, str]) -> None:
    out = guest["elsewhere"]
    assert exit_code(out) == 0 and out.splitlines()[0] == "Done!", out + guest["dmesg"]
    assert "run-pre: msleep_interruptible: failed, not needed by the update" in out
    assert exit_code(guest["elsewhere_undo"]) == 0


def test_edit_in_the_patched_function_is_still_refused(guest: dict[str, str]) -> None:
    out = guest["edited"]
    assert exit_code(out) == 1 and "(no match)" in out, out
    assert "run-pre: msleep: failed" in out
    assert guest["left"] == "end"
    assert not [line for line in guest["dmesg"].splitlines()
                if any(b in line for b in ("WARNING", "BUG", "Oops"))], guest["dmesg"]
