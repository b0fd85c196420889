# SPDX-License-Identifier: GPL-2.0-only
"""Races: runs on one ORIG_CONFIG at once never damage it; all but one refuse with 'busy'.

ksplice-create and doit take ORIG_CONFIG's lock (``.ksplice/lock``) before
they read or write any state; a second run refuses at once. Uses the kill
suite's own tree (``rkill``), never a tree other tests share.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import procs
import pytest
from helpers import PATCHES, Prebuilt, create, run_create, tarball_from

from ksplice_tasks.stages.layout import state_layout
from ksplice_tasks.testing import testkernel
from ksplice_tasks.tree import snapshot

PATCH_X = PATCHES / "umask-syscall.patch"
PATCH_Y = PATCHES / "loadavg-string.patch"

BUSY = re.compile(r"busy: another ksplice-create holds (\S+) \(pid (\d+|\?)\)$")


@pytest.fixture(scope="module")
def rrace(kernel_lp: testkernel.TestKernel) -> Prebuilt:
    """The kill suite's own tree (test_kill.py), prebuilt."""
    ksrc, orig = testkernel.prebuild_tree(kernel_lp, "rkill")
    pb = Prebuilt(kernel_lp, ksrc, orig)
    res = run_create("--prebuild", f"--config={pb.orig}", str(pb.ksrc))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    return pb


def state_digest(pb: Prebuilt) -> dict[str, str]:
    return snapshot.tree_digest(pb.orig / ".ksplice")


def test_busy_refuses_at_once(rrace: Prebuilt, tmp_path: Path) -> None:
    """While ORIG_CONFIG's lock is held, ksplice-create and doit refuse with one line naming
    the lock and its holder's pid, and change nothing in the state directory."""
    from ksplice_tasks.files import hold_lock  # here: the race test below also runs on old code

    lock = state_layout(rrace.orig).lock
    with hold_lock(lock):
        before = state_digest(rrace)
        res = create(rrace, PATCH_Y, tmp_path / "cli")
        assert res.returncode == 1, res.stdout + res.stderr
        assert res.stderr.splitlines() == [
            f"ksplice-create: error: busy: another ksplice-create holds {lock} "
            f"(pid {os.getpid()})"], res.stderr
        doit = procs.start(["create_update", f"KSRC={rrace.ksrc}", f"ORIG={rrace.orig}",
                            f"PATCH={PATCH_Y}"], procs.new_token(), tmp_path / "doit",
                           tmp_path / "doit.log", doit=True)
        _, err = doit.communicate(timeout=120)
        out = (tmp_path / "doit.log").read_text() + err.decode()
        assert doit.returncode != 0, out
        assert f"busy: another ksplice-create holds {lock}" in out, out
        assert "Traceback" not in out
        assert state_digest(rrace) == before


def post_tree_damage(pb: Prebuilt, patch_files: set[str]) -> list[str]:
    """Sources (.c, .h, .S, Makefile, Kconfig) of the post tree that differ from the pre
    tree's, other than ``patch_files``, plus .rej/.orig leftovers of patch(1).

    (helper P's tests/helpers.py post_tree_diff was not on main yet: this is the
    snapshot comparison of this test's own.)
    """
    bad = []
    for rel, entry in snapshot.walk(pb.postdir):
        name = entry.name
        if name.endswith((".rej", ".orig")):
            bad.append(rel)
            continue
        if not (name.endswith((".c", ".h", ".S")) or name.startswith(("Makefile", "Kconfig"))):
            continue
        if rel in patch_files:
            continue
        pre = pb.ksrc / rel
        if not pre.is_file():
            bad.append(rel)
        elif pre.stat().st_ino != entry.stat().st_ino and pre.read_bytes() != Path(
                entry.path).read_bytes():
            bad.append(rel)
    return bad


def test_two_creates_and_two_prebuilds_at_once(rrace: Prebuilt, tmp_path: Path) -> None:
    """Two creates of different patches and two prebuilds start together, through both
    front ends: each succeeds or refuses 'busy' in one line; a later create works and the
    post tree is the snapshot plus that patch."""
    lock = state_layout(rrace.orig).lock
    runs = {
        "create X": (["--patch=" + str(PATCH_X), f"--config={rrace.orig}", str(rrace.ksrc)],
                     False),
        "create Y (doit)": (["create_update", f"KSRC={rrace.ksrc}", f"ORIG={rrace.orig}",
                             f"PATCH={PATCH_Y}"], True),
        "prebuild": (["--prebuild", f"--config={rrace.orig}", str(rrace.ksrc)], False),
        "prebuild (doit)": (["prebuild", f"KSRC={rrace.ksrc}", f"ORIG={rrace.orig}"], True),
    }
    started = {}
    for name, (args, doit) in runs.items():
        work = tmp_path / name.replace(" ", "_").replace("(", "").replace(")", "")
        started[name] = (procs.start(args, procs.new_token(), work, work / "out.log",
                                     doit=doit), work)
    busy = 0
    for name, (proc, work) in started.items():
        _, err = proc.communicate(timeout=900)
        out = (work / "out.log").read_text() + err.decode()
        assert "Traceback" not in out, f"{name}: {out}"
        if proc.returncode == 0:
            continue
        m = BUSY.search(out.strip().splitlines()[-1]) if out.strip() else None
        assert m and m.group(1) == str(lock), f"{name}: rc {proc.returncode}: {out[-3000:]}"
        busy += 1
    assert busy >= 1, "no run was refused: they did not overlap"
    res = create(rrace, PATCH_X, tmp_path / "after")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert tarball_from(res.stdout, tmp_path / "after").is_file()
    assert post_tree_damage(rrace, {"kernel/sys.c"}) == []
    check = subprocess.run(["patch", "-d", str(rrace.postdir), "-p1", "-R", "--dry-run",
                            "--batch", "-i", str(PATCH_X)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout  # the post tree holds exactly X once
