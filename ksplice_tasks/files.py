# SPDX-License-Identifier: GPL-2.0-only
"""Atomic file writes (a reader, or a crash, never sees half a file), the cache, extraction."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from ksplice_tasks.commands import run
from ksplice_tasks.errors import UserError


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


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """A private temp directory beside ``path``, renamed to ``path`` when the block ends.

    The directory twin of :func:`atomic_path`: it is filled under the temp
    name (mode 0700 meanwhile), given the umask's mode, and renamed over
    ``path``, which must be absent or an empty directory (rename(2)). On
    any exception the temp directory is removed and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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


# -- the cache outside any clone -------------------------------------------------------


def cache_root() -> Path:
    """KSPLICE_CACHE, else ~/.cache/ksplice-py (created): outside any clone, so reruns reuse it."""
    env = os.environ.get("KSPLICE_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    root = base if env else base / "ksplice-py"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def locked(name: str) -> Iterator[None]:
    """Hold ``cache_root()/locks/<name>.lock`` exclusively (flock) for the block.

    One process at a time per cache entry: tests, the demo and the commands
    may run side by side.
    """
    lockdir = cache_root() / "locks"
    lockdir.mkdir(exist_ok=True)
    with open(lockdir / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def hold_lock(path: Path, holder: str = "ksplice-create") -> TextIO:
    """Take ``path``'s exclusive flock at once, or refuse: the open file holds it.

    The lock lasts until the returned file is closed or this process ends
    (the kernel drops a dead process's flock, so a crash leaves no stale
    lock); the file then holds our pid. Children do not inherit it (Python's
    files are close-on-exec). UserError ``busy: another <holder> holds
    <path> (pid N)`` when another process has it; nothing is changed then.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="ascii", errors="replace")  # noqa: SIM115 - returned
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise UserError(f"busy: another {holder} holds {path} (pid {pid})") from None
    except BaseException:
        f.close()
        raise
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def extract_tarball(tarball: Path, dest: Path, out: TextIO = sys.stdout) -> Path:
    """Extract the tarball's single top directory to ``dest``, atomically; returns ``dest``.

    An existing ``dest`` is taken as done (it only ever appears whole). The
    tarball is unpacked by GNU tar into a private temp directory beside
    ``dest`` and its one top directory renamed to ``dest``; on any failure the
    temp directory is removed. GNU tar strips leading ``/`` and refuses
    members with ``..`` by default; ``--no-same-owner`` keeps files ours.
    UserError when tar fails or the tarball has not exactly one top directory.
    """
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    out.write(f"extract: {tarball} -> {dest}\n")
    out.flush()
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        run(["tar", "-xf", tarball, "-C", tmp, "--no-same-owner"], what="tar")
        tops = [p for p in tmp.iterdir() if p.is_dir()]
        if len(tops) != 1:
            raise UserError(f"{tarball}: expected one top-level directory, found {len(tops)}")
        os.rename(tops[0], dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
