# SPDX-License-Identifier: GPL-2.0-only
"""Atomic file writes: a reader (or a crash) never sees half a file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write via a private temp file in the same directory, then rename over."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
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
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest
