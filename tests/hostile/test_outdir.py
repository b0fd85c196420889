# SPDX-License-Identifier: GPL-2.0-only
"""The tarball write fails after the whole pipeline: a read-only and a full output
directory (tmpfs mounts, so root is needed: CI runs as root).

Validation refuses an output directory it can see is unwritable; these two it
cannot see (a read-only mount checked before it became read-only, a disk that
fills during the build), so they are met at the write. Each must be one line
naming the tarball, exit 1 from both front ends, leave no temp file behind,
and the post tree back at its snapshot.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Prebuilt, post_tree_diff, run_create, run_doit

import ksplice_tasks

pytestmark = pytest.mark.kernel

EXAMPLE = (Path(ksplice_tasks.__file__).resolve().parent / "data" / "example-loadavg.patch")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 KiB tmpfs: far too small for an update tarball."""
    if os.geteuid() != 0:
        pytest.fail("tests/hostile/test_outdir.py mounts tmpfs: run the suite as root "
                    "(./run tests does in CI)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _check(res: subprocess.CompletedProcess, prefix: str, outdir: Path, what: str,
           pb: Prebuilt) -> None:
    """``what``: how the one error line ends."""
    output = res.stdout + res.stderr
    assert res.returncode == 1, output[-2000:]
    assert "Traceback" not in output
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1, output[-2000:]
    assert errors[0].startswith(f"{prefix}: error: ")
    assert str(outdir) in errors[0], errors[0]
    assert errors[0].endswith(what), errors[0]
    assert "==> tarball" in res.stdout  # it was met at the write, after the build
    assert os.listdir(outdir) == [] or os.listdir(outdir) == ["lost+found"]
    assert post_tree_diff(pb) == []


def test_a_full_output_directory(hostile_lp: Prebuilt, small_fs: Path) -> None:
    res = run_create(f"--patch={EXAMPLE}", f"--config={hostile_lp.orig}", str(hostile_lp.ksrc),
                     cwd=small_fs)
    _check(res, "ksplice-create", small_fs, ".tar.gz: No space left on device", hostile_lp)


def test_a_full_output_directory_through_doit(hostile_lp: Prebuilt, small_fs: Path,
                                              tmp_path: Path) -> None:
    res = run_doit(tmp_path / "work", "create_update", f"KSRC={hostile_lp.ksrc}",
                   f"ORIG={hostile_lp.orig}", f"PATCH={EXAMPLE}", f"OUTDIR={small_fs}")
    _check(res, "ksplice", small_fs, ".tar.gz: No space left on device", hostile_lp)


def test_an_output_directory_that_turns_read_only(hostile_lp: Prebuilt, small_fs: Path,
                                                  tmp_path: Path) -> None:
    """Remounted read-only once validation passed (by the first make the create runs)."""
    hook = tmp_path / "bin"
    hook.mkdir()
    real_make = subprocess.run(["sh", "-c", "command -v make"], capture_output=True, text=True,
                               check=True).stdout.strip()
    (hook / "make").write_text(
        "#!/bin/sh\n"
        f"mount -o remount,ro {small_fs}\n"
        f"exec {real_make} \"$@\"\n")
    (hook / "make").chmod(0o755)
    res = run_doit(tmp_path / "work", "create_update", f"KSRC={hostile_lp.ksrc}",
                   f"ORIG={hostile_lp.orig}", f"PATCH={EXAMPLE}", f"OUTDIR={small_fs}",
                   path_prefix=hook)
    _check(res, "ksplice", small_fs, f"the output directory {small_fs} is not writable",
           hostile_lp)
