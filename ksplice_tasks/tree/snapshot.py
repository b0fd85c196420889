# SPDX-License-Identifier: GPL-2.0-only
"""The post tree: a hard-linked snapshot of the built pre tree, and tree fingerprints.

A post build must never write through a hard link into the pre tree. gcc, as
and ld give every object they write a new inode, and patch(1) replaces the
files it edits, so objects and sources are linked. Anything else the build
produced (Kbuild's .cmd files, System.map, .version, vmlinux, ...) may be
rewritten in place by a shell redirection, so it is copied. "Produced by the
build" means: modified no earlier than the oldest Kbuild .cmd file, which is
when the tree's first build began.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

# The file that marks a directory as a post tree ksplice made (and may empty).
POST_MARKER = ".ksplice-post"


def _excluded_set(root: Path, exclude: Sequence[Path]) -> set[str]:
    return {os.fspath(p) for p in exclude if p == root or root in p.parents}


def walk(root: Path, exclude: Sequence[Path] = ()) -> Iterator[tuple[str, os.DirEntry]]:
    """Every entry below root as (relative path, DirEntry), parents before children."""
    skip = _excluded_set(root, exclude)
    base = len(os.fspath(root)) + 1
    stack = [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.path in skip:
                    continue
                yield entry.path[base:], entry
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)


def tree_fingerprint(root: Path, exclude: Sequence[Path] = ()) -> str:
    """Names, sizes and mtimes of every file: cheap (one stat each) and enough for make."""
    rows = []
    for rel, entry in walk(root, exclude):
        st = entry.stat(follow_symlinks=False)
        rows.append(f"{rel}\0{st.st_mode:o}\0{st.st_size}\0{st.st_mtime_ns}")
    rows.sort()
    return hashlib.blake2b("\n".join(rows).encode(), digest_size=16).hexdigest()


def files_fingerprint(root: Path, rels: Sequence[str]) -> str:
    """Like tree_fingerprint, over a known list of files (absolute paths allowed)."""
    rows = []
    for rel in rels:
        try:
            st = os.stat(os.path.join(root, rel))
            rows.append(f"{rel}\0{st.st_mode:o}\0{st.st_size}\0{st.st_mtime_ns}")
        except FileNotFoundError:
            rows.append(f"{rel}\0missing")
    return hashlib.blake2b("\n".join(rows).encode(), digest_size=16).hexdigest()


def tree_digest(root: Path, exclude: Sequence[Path] = ()) -> dict[str, str]:
    """Content hash of every file and symlink: the proof that a tree is unchanged."""
    out: dict[str, str] = {}
    for rel, entry in walk(root, exclude):
        if entry.is_symlink():
            out[rel] = "link:" + os.readlink(entry.path)
        elif entry.is_file(follow_symlinks=False):
            h = hashlib.blake2b(digest_size=20)
            with open(entry.path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            out[rel] = f"{entry.stat(follow_symlinks=False).st_mode:o}:{h.hexdigest()}"
    return out


def build_start(root: Path, exclude: Sequence[Path] = ()) -> float | None:
    """When the tree's first build began: the oldest Kbuild .cmd file's mtime."""
    oldest = None
    for _rel, entry in walk(root, exclude):
        name = entry.name
        if name.startswith(".") and name.endswith(".cmd") and entry.is_file(follow_symlinks=False):
            m = entry.stat(follow_symlinks=False).st_mtime
            oldest = m if oldest is None else min(oldest, m)
    return oldest


def may_link(name: str, mtime: float, since: float | None) -> bool:
    """Objects and files older than the first build are safe to share with the pre tree."""
    if name.endswith(".o"):
        return True
    return since is None or mtime < since


@dataclass(frozen=True)
class SnapshotStats:
    linked: int
    copied: int
    symlinks: int
    dirs: int
    copied_bytes: int
    seconds: float


def is_dependency_file(name: str) -> bool:
    """Kbuild .cmd and tools/ .d files: the only build outputs that name the tree's path."""
    return name.endswith((".cmd", ".d"))


def copy_relocated(src: str, dest: str, old_root: bytes, new_root: bytes) -> None:
    """Copy a dependency file with the old tree's absolute path replaced by the new one.

    tools/objtool builds with absolute paths; left alone, the post build would
    see changed commands, rebuild objtool, and then every object (they all
    depend on objtool), and its dependency files would point into the pre tree.
    """
    with open(src, "rb") as f:
        data = f.read()
    with open(dest, "wb") as f:
        f.write(data.replace(old_root, new_root))
    shutil.copystat(src, dest)


def _populate(src_root: Path, dest_root: Path, exclude: Sequence[Path], since: float | None,
              can_link: bool, final_root: Path) -> SnapshotStats:
    t0 = time.monotonic()
    old_root, new_root = os.fsencode(src_root) + b"/", os.fsencode(final_root) + b"/"
    linked = copied = symlinks = dirs = copied_bytes = 0
    for rel, entry in walk(src_root, exclude):
        dest = os.path.join(dest_root, rel)
        if entry.is_dir(follow_symlinks=False):
            os.mkdir(dest)
            dirs += 1
        elif entry.is_symlink():
            os.symlink(os.readlink(entry.path), dest)
            symlinks += 1
        else:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            if can_link and may_link(entry.name, st.st_mtime, since):
                try:
                    os.link(entry.path, dest)
                    linked += 1
                    continue
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
                    can_link = False
            if is_dependency_file(entry.name):
                copy_relocated(entry.path, dest, old_root, new_root)
            else:
                shutil.copy2(entry.path, dest)
            copied += 1
            copied_bytes += st.st_size
    return SnapshotStats(linked, copied, symlinks, dirs, copied_bytes, time.monotonic() - t0)


def make_post_tree(
    ksrc: Path, postdir: Path, exclude: Sequence[Path] = (), *, verbose: bool = False
) -> SnapshotStats:
    """Replace postdir with a fresh snapshot of ksrc; the old one goes once the new one is whole."""
    exclude = tuple(exclude) + (postdir,)
    since = build_start(ksrc, exclude)
    postdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{postdir.name}.new-", dir=postdir.parent))
    try:
        stats = _populate(ksrc, tmp, exclude, since, can_link=True, final_root=postdir)
        marker = {"ksrc": os.fspath(ksrc), "build_start": since, **asdict(stats)}
        (tmp / POST_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        old = None
        if postdir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{postdir.name}.old-", dir=postdir.parent))
            os.rename(postdir, old / "post")
        os.rename(tmp, postdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if verbose:
        print(f"post tree: {stats.linked} files linked, {stats.copied} copied "
              f"({stats.copied_bytes / 1e6:.1f} MB), {stats.seconds:.1f} s", flush=True)
    return stats
