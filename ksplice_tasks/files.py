# SPDX-License-Identifier: GPL-2.0-only
"""Atomic file writes: a reader (or a crash) never sees half a file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A private temp file (mode 0600) beside ``path``, renamed over it when the block ends.

    Whatever fills it (this process, ``ld -o``, ``tarfile``) does so under the
    temp name; on any exception the temp file is removed and ``path`` is left
    as it was. ``path``'s directory is created if needed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes; OSError when it cannot be read."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write ``data`` (str as UTF-8) via a private temp file in the same directory, then rename."""
    raw = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(raw)
    return path


def write_if_changed(path: Path, data: bytes | str) -> Path:
    """Leave an identical file alone, so its mtime (and doit's view of it) stays."""
    raw = data.encode() if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == raw:
        return path
    return write_atomic(path, raw)


def write_json(path: Path, data: object) -> Path:
    """``data`` as JSON (sorted keys, one-space indent, final newline), atomically."""
    return write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def copy_if_changed(src: Path, dest: Path) -> Path:
    """Copy ``src``'s bytes to ``dest`` unless it already holds them, atomically.

    An unchanged ``dest`` keeps its mtime; a changed one gets a fresh mtime
    (not ``src``'s), so make rebuilds what depends on it even when ``src`` is
    older than the objects an earlier copy produced.
    """
    data = src.read_bytes()
    if dest.is_file() and dest.read_bytes() == data:
        return dest
    return write_atomic(dest, data)


def copy_atomic(src: Path, dest: Path) -> Path:
    """Copy with metadata through a temp file, then rename over."""
    with atomic_path(dest) as tmp:
        shutil.copy2(src, tmp)
    return dest
