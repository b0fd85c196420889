# SPDX-License-Identifier: GPL-2.0-only
"""Atomic file writes: a reader (or a crash) never sees half a file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _temp_beside(path: Path) -> Iterator[str]:
    """A private temp file in path's directory, renamed over path when the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write via a private temp file in the same directory, then rename over."""
    raw = data.encode() if isinstance(data, str) else data
    with _temp_beside(path) as tmp, open(tmp, "wb") as f:
        f.write(raw)
    return path


def write_if_changed(path: Path, data: bytes | str) -> Path:
    """Leave an identical file alone, so its mtime (and doit's view of it) stays."""
    raw = data.encode() if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == raw:
        return path
    return write_atomic(path, raw)


def write_json(path: Path, data: object) -> Path:
    return write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def copy_atomic(src: Path, dest: Path) -> Path:
    """Copy with metadata through a temp file, then rename over."""
    with _temp_beside(dest) as tmp:
        shutil.copy2(src, tmp)
    return dest
