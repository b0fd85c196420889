# SPDX-License-Identifier: GPL-2.0-only
"""Atomic writes: the one implementation every stage uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ksplice_tasks import files


def test_atomic_path_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "out.bin"
    with files.atomic_path(dest) as tmp:
        tmp.write_bytes(b"one")
    assert dest.read_bytes() == b"one"
    with pytest.raises(RuntimeError), files.atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert dest.read_bytes() == b"one"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["out.bin"]


def test_copy_if_changed_keeps_or_refreshes_the_mtime(tmp_path: Path) -> None:
    src, dest = tmp_path / "src.c", tmp_path / "build" / "src.c"
    src.write_text("int a;\n")
    os.utime(src, (1_000_000, 1_000_000))  # older than anything built from an earlier copy
    files.copy_if_changed(src, dest)
    assert dest.read_text() == "int a;\n" and dest.stat().st_mtime > src.stat().st_mtime
    os.utime(dest, (2_000_000, 2_000_000))
    files.copy_if_changed(src, dest)
    assert dest.stat().st_mtime == 2_000_000  # unchanged: make has nothing to redo
    src.write_text("int b;\n")
    os.utime(src, (1_000_000, 1_000_000))
    files.copy_if_changed(src, dest)
    assert dest.read_text() == "int b;\n" and dest.stat().st_mtime > 2_000_000


def test_write_if_changed(tmp_path: Path) -> None:
    dest = files.write_atomic(tmp_path / "x", "same\n")
    os.utime(dest, (5, 5))
    files.write_if_changed(dest, "same\n")
    assert dest.stat().st_mtime == 5
    files.write_if_changed(dest, b"other\n")
    assert dest.read_text() == "other\n"


def test_atomic_dir_appears_whole_over_an_empty_directory(tmp_path: Path) -> None:
    dest = tmp_path / "target"
    dest.mkdir()
    with files.atomic_dir(dest) as tmp:
        assert tmp.parent == tmp_path and tmp != dest
        (tmp / "f").write_text("x")
        assert not (dest / "f").exists()
    assert (dest / "f").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["target"]
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o777 & ~umask


def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "target"
    with pytest.raises(RuntimeError), files.atomic_dir(dest) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
