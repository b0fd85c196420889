# SPDX-License-Identifier: GPL-2.0-only
"""Kills: ksplice-create and --prebuild killed mid-way leave no build running, and reruns work.

Each run is marked by a token in its environment (procs.py), so every make,
gcc, as and ld it started is found in /proc even after its parent is gone.
The points: the pre build (make prepare of a never-built tree), the post
build (make -C POSTDIR), kmod_build (make M=) and the tarball write (held
there by package.HOLD_ENV, a tests-only variable). After a SIGKILL or a
SIGTERM no process of the run may live on for more than 1 s, and a rerun
gives modules byte-identical to an uninterrupted create's.

The tree is this suite's own (``rkill``): kills never touch trees other tests share.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import tarfile
from pathlib import Path

import procs
import pytest
from helpers import PATCHES, Prebuilt, create, run_create, tarball_from

from ksplice_tasks.stages import package
from ksplice_tasks.testing import testkernel

PATCH_X = PATCHES / "umask-syscall.patch"  # kernel/sys.o: a compile of a few seconds
PATCH_Y = PATCHES / "loadavg-string.patch"
SIGNALS = (signal.SIGTERM, signal.SIGKILL)


def tree(kernel: testkernel.TestKernel, name: str = "rkill") -> Prebuilt:
    """This suite's own lp tree with its ORIG_CONFIG (not prebuilt by this call)."""
    ksrc, orig = testkernel.prebuild_tree(kernel, name)
    return Prebuilt(kernel, ksrc, orig)


def pre_make(pb: Prebuilt):
    """Matches the pre build's make (make -C KSRC ... prepare), not pre_config's olddefconfig."""
    return lambda c: procs.is_make(c, pb.ksrc) and "prepare" in c


def unprepare(pb: Prebuilt) -> None:
    """Take the tree back to never built (make mrproper), so a prebuild has minutes of work."""
    subprocess.run(["make", "-C", str(pb.ksrc), "-s", "mrproper"], check=True,
                   capture_output=True)


def prebuilt(pb: Prebuilt) -> None:
    res = run_create("--prebuild", f"--config={pb.orig}", str(pb.ksrc))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr


def modules(tarball: Path) -> dict[str, str]:
    """The .ko members of an update tarball: name -> SHA-256."""
    with tarfile.open(tarball) as tar:
        return {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()
                for m in tar.getmembers() if m.name.endswith(".ko")}


def kill_and_check(proc: subprocess.Popen, sig: int, token: str) -> str:
    """Send ``sig`` to ksplice-create; no process of its run may outlive it by 1 s.

    Returns its stderr. After SIGTERM: exit 128+15 and one line, no traceback.
    """
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    left = procs.survivors(token, 1.0)
    procs.reap(token)
    assert not left, f"still running 1 s after {signal.Signals(sig).name}: {left}"
    stderr = err.decode(errors="replace")
    assert "Traceback" not in stderr, stderr
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, stderr
        assert stderr.strip().splitlines()[-1].endswith("interrupted by SIGTERM"), stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    return stderr


@pytest.fixture(scope="module")
def rkill(kernel_lp: testkernel.TestKernel) -> Prebuilt:
    return tree(kernel_lp)


def test_interrupted_pre_build_is_not_done(rkill: Prebuilt, tmp_path: Path) -> None:
    """make killed with SIGTERM mid pre build: not recorded done; create refuses naming
    what is not built; the next --prebuild finishes it and a create works."""
    unprepare(rkill)
    token = procs.new_token()
    proc = procs.start(["--prebuild", f"--config={rkill.orig}", str(rkill.ksrc)], token,
                       tmp_path, tmp_path / "out.log")
    try:
        make = procs.wait_for(token, pre_make(rkill), 60, proc)
        assert make is not None, "no make started"
        assert procs.wait_for(token, procs.is_compiler, 30, proc), "make compiled nothing"
        subprocess.run(["kill", "-TERM", str(make)], check=True)
        _, err = proc.communicate(timeout=120)
    finally:
        procs.reap(token)
    stderr = err.decode()
    assert proc.returncode == 1, stderr
    assert "did not finish (make was killed by SIGTERM); not built: " in stderr, stderr
    assert "Traceback" not in stderr

    res = create(rkill, PATCH_Y, tmp_path / "refused")
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert "did not finish (make was killed by SIGTERM); not built: " in lines[0]
    assert "--prebuild" in lines[0]

    again = run_create("--prebuild", f"--config={rkill.orig}", str(rkill.ksrc))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr
    assert "Nothing to do" not in again.stdout
    res = create(rkill, PATCH_Y, tmp_path / "works")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_kill_prebuild(rkill: Prebuilt, tmp_path: Path, sig: int) -> None:
    """--prebuild killed while make prepare compiles: its make and compilers end within 1 s;
    a create then refuses (interrupted) and the next --prebuild completes."""
    unprepare(rkill)
    token = procs.new_token()
    proc = procs.start(["--prebuild", f"--config={rkill.orig}", str(rkill.ksrc)], token,
                       tmp_path, tmp_path / "out.log")
    try:
        assert procs.wait_for(token, pre_make(rkill), 60, proc)
        assert procs.wait_for(token, procs.is_compiler, 30, proc), "make compiled nothing"
        kill_and_check(proc, sig, token)
    finally:
        procs.reap(token)
    res = create(rkill, PATCH_Y, tmp_path / "refused")
    assert res.returncode == 1 and "did not finish" in res.stderr, res.stdout + res.stderr
    prebuilt(rkill)


@pytest.fixture(scope="module")
def reference(rkill: Prebuilt, tmp_path_factory: pytest.TempPathFactory) -> dict[Path, dict]:
    """Uninterrupted creates of both patches on the prebuilt tree: patch -> its modules."""
    if "did not finish" in create(rkill, PATCH_Y, tmp_path_factory.mktemp("probe")).stderr:
        prebuilt(rkill)
    out = {}
    for patch in (PATCH_X, PATCH_Y):
        outdir = tmp_path_factory.mktemp("ref")
        res = create(rkill, patch, outdir)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr
        out[patch] = modules(tarball_from(res.stdout, outdir))
    return out


def holds(pb: Prebuilt, patch: Path) -> bool:
    """The post tree holds ``patch``: a create of it may have nothing left to do."""
    rec = pb.orig / ".ksplice" / "create" / "post-patch.json"
    try:
        return json.loads(rec.read_text())["patch_sha256"] == hashlib.sha256(
            patch.read_bytes()).hexdigest()
    except (OSError, ValueError, KeyError):
        return False


POINTS = {
    "post_build": (PATCH_X, lambda pb: lambda c: procs.is_make(c, pb.postdir)),
    "kmod_build": (PATCH_Y, lambda pb: lambda c: Path(c[0]).name == "make"
                   and any(a.startswith("M=") for a in c)),
    "tarball": (PATCH_X, None),
}


@pytest.mark.parametrize("point", POINTS)
def test_kill_create(rkill: Prebuilt, reference: dict, tmp_path: Path, point: str) -> None:
    """ksplice-create killed (SIGTERM, then SIGKILL) at ``point``: nothing outlives it by
    1 s, and the rerun's modules are byte-identical to an uninterrupted create's."""
    patch, matcher = POINTS[point]
    if holds(rkill, patch):  # make the kill run redo the work up to the point
        other = PATCH_Y if patch == PATCH_X else PATCH_X
        assert create(rkill, other, tmp_path / "other").returncode == 0
    for sig in SIGNALS:
        token = procs.new_token()
        work = tmp_path / signal.Signals(sig).name
        hold = work / "held"
        env = {package.HOLD_ENV: str(hold)} if matcher is None else {}
        proc = procs.start([f"--patch={patch}", f"--config={rkill.orig}", str(rkill.ksrc)],
                           token, work, work / "out.log", env=env)
        try:
            if matcher is None:
                assert procs.wait_for(token, lambda _c, h=hold: h.exists(), 300, proc), point
            else:
                assert procs.wait_for(token, matcher(rkill), 300, proc), point
                procs.wait_for(token, procs.is_compiler, 5, proc)
            kill_and_check(proc, sig, token)
        finally:
            procs.reap(token)
        assert not list(work.glob("*.tar.gz")), "a killed create left a tarball"
    outdir = tmp_path / "rerun"
    res = create(rkill, patch, outdir)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert modules(tarball_from(res.stdout, outdir)) == reference[patch]
