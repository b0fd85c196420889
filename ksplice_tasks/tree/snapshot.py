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
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from ksplice_tasks.commands import spawn
from ksplice_tasks.files import write_json

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
    can_link: bool = True


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


class _Roots:
    """The pre and post trees' absolute paths, as bytes, for relocating dependency files."""

    def __init__(self, src_root: Path, final_root: Path) -> None:
        self.old = os.fsencode(src_root) + b"/"
        self.new = os.fsencode(final_root) + b"/"


def _place(src: str, dest: str, st: os.stat_result, since: float | None, can_link: bool,
           roots: _Roots) -> str | None:
    """Put one pre-tree entry at dest as the snapshot has it.

    Returns what it made: "dir", "symlink", "linked", "copied", or None for
    an entry the snapshot leaves out (a device, fifo or socket). OSError
    EXDEV when ``can_link`` and dest is on another file system.
    """
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(dest)
        return "dir"
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dest)
        return "symlink"
    if not stat.S_ISREG(st.st_mode):
        return None
    name = os.path.basename(src)
    if can_link and may_link(name, st.st_mtime, since):
        os.link(src, dest)
        return "linked"
    if is_dependency_file(name):
        copy_relocated(src, dest, roots.old, roots.new)
    else:
        shutil.copy2(src, dest)
    return "copied"


def _populate(src_root: Path, dest_root: Path, exclude: Sequence[Path], since: float | None,
              can_link: bool, final_root: Path) -> SnapshotStats:
    t0 = time.monotonic()
    roots = _Roots(src_root, final_root)
    counts = {"linked": 0, "copied": 0, "symlink": 0, "dir": 0}
    copied_bytes = 0
    for rel, entry in walk(src_root, exclude):
        dest = os.path.join(dest_root, rel)
        st = entry.stat(follow_symlinks=False)
        try:
            made = _place(entry.path, dest, st, since, can_link, roots)
        except OSError as e:
            if e.errno != errno.EXDEV or not can_link:
                raise
            can_link = False
            made = _place(entry.path, dest, st, since, can_link, roots)
        if made is not None:
            counts[made] += 1
        if made == "copied":
            copied_bytes += st.st_size
    return SnapshotStats(counts["linked"], counts["copied"], counts["symlink"], counts["dir"],
                         copied_bytes, time.monotonic() - t0, can_link)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "file" if stat.S_ISREG(mode) else "other"


def _stats(root: Path, exclude: Sequence[Path]) -> dict[str, os.stat_result]:
    return {rel: entry.stat(follow_symlinks=False) for rel, entry in walk(root, exclude)}


@dataclass(frozen=True)
class SnapshotRule:
    """How make_post_tree made a post tree: from which tree, which files it linked.

    ``since``: the pre tree's first build (epoch seconds; None: never built);
    ``can_link``: False when the post tree is on another file system (all copies).
    """

    ksrc: Path
    since: float | None
    can_link: bool


def snapshot_rule(postdir: Path) -> SnapshotRule:
    """The rule from the post tree's marker file; OSError/ValueError when it has none
    or an unreadable one."""
    marker = json.loads((postdir / POST_MARKER).read_text())
    try:
        can_link = marker.get("can_link", marker.get("linked", 0) > 0)
        return SnapshotRule(Path(marker["ksrc"]), marker["build_start"], bool(can_link))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{postdir / POST_MARKER}: not a post-tree marker ({e!r})") from None


def _same(rel: str, a: os.stat_result, b: os.stat_result, rule: SnapshotRule,
          ksrc: Path, postdir: Path) -> bool:
    """Whether the post entry b is still what the snapshot made of the pre entry a."""
    kind = _kind(a.st_mode)
    if kind != _kind(b.st_mode):
        return False
    if kind == "dir":
        return True
    if kind == "symlink":
        return os.readlink(ksrc / rel) == os.readlink(postdir / rel)
    if rule.can_link and may_link(os.path.basename(rel), a.st_mtime, rule.since):
        return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)
    # A copy keeps the pre file's mtime (copy2/copystat); any later write sets a new one.
    return (a.st_mtime_ns == b.st_mtime_ns and a.st_mode == b.st_mode
            and (a.st_size == b.st_size or is_dependency_file(rel)))


def _classify(rel: str, a: os.stat_result | None, b: os.stat_result | None,
              rule: SnapshotRule, ksrc: Path, postdir: Path) -> str | None:
    """How one entry differs (pre entry a, post entry b; None: absent): see post_differences."""
    if a is None:
        return None if b is None else "extra"
    if b is None:
        return None if _kind(a.st_mode) == "other" else "missing"
    if _kind(a.st_mode) == "other":
        return "extra" if _kind(b.st_mode) != "other" else None
    return None if _same(rel, a, b, rule, ksrc, postdir) else "changed"


def post_differences(ksrc: Path, postdir: Path,
                     exclude: Sequence[Path] = ()) -> list[tuple[str, str]]:
    """Where the post tree is no longer the snapshot of ksrc as ksrc is now.

    One stat per entry of both trees (about 0.8 s for a built 6.1 tree of
    88,000 entries). Returns ``(relative path, what)`` sorted by path, parents
    before children; ``what`` is "extra" (only in the post tree), "missing"
    (only in ksrc) or "changed" (another inode, content, kind or mode).
    OSError/ValueError when the post tree has no marker.
    """
    rule = snapshot_rule(postdir)
    exclude = (*exclude, postdir)
    pre, post = _stats(ksrc, exclude), _stats(postdir, ())
    post.pop(POST_MARKER, None)
    out = []
    for rel in sorted(pre.keys() | post.keys()):
        what = _classify(rel, pre.get(rel), post.get(rel), rule, ksrc, postdir)
        if what is not None:
            out.append((rel, what))
    return out


# How far before a reference time :func:`post_changes` looks (ns): covers the
# coarse clock file systems stamp change times with, and small clock steps back.
CLOCK_MARGIN_NS = 1_000_000_000


def fs_clock(directory: Path) -> int:
    """The file system's clock now (ns since the epoch): the change time of a file
    made (and removed at once) in directory. OSError when it cannot be made."""
    fd, name = tempfile.mkstemp(prefix=".ksplice-clock-", dir=directory)
    try:
        return os.fstat(fd).st_ctime_ns
    finally:
        os.close(fd)
        os.unlink(name)


def _glob_quote(path: str) -> str:
    """path as a find -path pattern that matches only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in path)


def _find_argv(root: Path, exclude: Sequence[Path], since_ns: int) -> list[str]:
    argv = ["find", os.fspath(root)]
    for path in sorted(_excluded_set(root, exclude)):
        argv += ["-path", _glob_quote(path), "-prune", "-o"]
    sec, ns = divmod(since_ns, 1_000_000_000)
    return [*argv, "-newerct", f"@{sec}.{ns:09d}", "-printf", "%P\\0"]


def changed_since(roots: Sequence[tuple[Path, Sequence[Path]]],
                  since_ns: int) -> list[set[str]] | None:
    """Per (root, exclude): the relative paths below root (``""``: root itself)
    whose change time is later than since_ns (ns, the file system's clock).

    Every entry created, written, truncated, renamed, linked or unlinked,
    chmod-ed or touched gets a new change time, and so does a directory whose
    entries were added, removed or renamed; nobody can set one back. One GNU
    find walk per root, all at once. None when a walk fails (an unreadable
    directory, an entry removed while find read it): look at everything then.
    """
    with ExitStack() as stack:
        procs = [stack.enter_context(spawn(_find_argv(root, exclude, since_ns),
                                           stdout=subprocess.PIPE,
                                           stderr=subprocess.DEVNULL))
                 for root, exclude in roots]
        outs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode != 0 for proc in procs):
        return None
    return [{os.fsdecode(name) for name in out.split(b"\0")[:-1]} for out in outs]


def _lstat(path: Path, rel: str, skip: set[str]) -> os.stat_result | None:
    full = os.path.join(path, rel) if rel else os.fspath(path)
    if full in skip:
        return None
    try:
        return os.lstat(full)
    except FileNotFoundError:
        return None


def _subtree(root: Path, rel: str, exclude: Sequence[Path]) -> Iterator[tuple[str, int]]:
    """(relative path, mode) of every entry below root/rel, paths relative to root."""
    for sub, entry in walk(root / rel, exclude):
        yield f"{rel}/{sub}", entry.stat(follow_symlinks=False).st_mode


def post_changes(ksrc: Path, postdir: Path, since_ns: int, exclude: Sequence[Path] = (),
                 *, pre_side: bool = True) -> list[tuple[str, str]] | None:
    """:func:`post_differences`, looking only where something changed after since_ns.

    Exact when the post tree was the snapshot of ksrc at since_ns (file-system
    clock, ns): an entry that differs now was changed since on one side, or
    left or joined a directory that was (:func:`changed_since`). So only
    those entries, and every entry of those directories, are compared.
    ``pre_side=False`` looks for changes in the post tree only (ksrc known
    unchanged since). Same result shape as post_differences; None when a
    walk failed (use post_differences). About 0.15 s a tree for a built 6.1
    tree, plus one stat per candidate.
    """
    rule = snapshot_rule(postdir)
    pre_exclude = (*exclude, postdir)
    roots = [(postdir, ()), (ksrc, pre_exclude)] if pre_side else [(postdir, ())]
    found = changed_since(roots, since_ns)
    if found is None:
        return None
    skip = _excluded_set(ksrc, pre_exclude)
    out: dict[str, str] = {}

    def check(rel: str) -> None:
        if rel == POST_MARKER or rel in out:
            return
        a, b = _lstat(ksrc, rel, skip), _lstat(postdir, rel, set())
        what = _classify(rel, a, b, rule, ksrc, postdir)
        if what is None:
            return
        out[rel] = what
        a_dir = a is not None and stat.S_ISDIR(a.st_mode)
        b_dir = b is not None and stat.S_ISDIR(b.st_mode)
        if a_dir and not b_dir:
            for sub, mode in _subtree(ksrc, rel, pre_exclude):
                if _kind(mode) != "other":
                    out[sub] = "missing"
        if b_dir and not a_dir:
            for sub, _mode in _subtree(postdir, rel, ()):
                out[sub] = "extra"

    for rel in sorted(set().union(*found)):
        if rel:
            check(rel)
        pre_dir, post_dir = ksrc / rel, postdir / rel
        if (os.fspath(pre_dir) not in skip and pre_dir.is_dir() and not pre_dir.is_symlink()
                and post_dir.is_dir() and not post_dir.is_symlink()):
            names = set(os.listdir(pre_dir)) | set(os.listdir(post_dir))
            for name in sorted(names):
                check(f"{rel}/{name}" if rel else name)
    return sorted(out.items())


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def restore_post(ksrc: Path, postdir: Path, differences: Sequence[tuple[str, str]]) -> int:
    """Make each differing entry (:func:`post_differences`) the snapshot's again.

    An extra entry is removed (a directory with all below it); a missing or
    changed one is put back as make_post_tree would (hard link or copy).
    Never writes through a link into ksrc. Returns how many entries it fixed.
    """
    rule = snapshot_rule(postdir)
    roots = _Roots(ksrc, postdir)
    fixed = 0
    for rel, what in differences:
        dest = os.path.join(postdir, rel)
        _remove(dest)
        if what != "extra":
            src = os.path.join(ksrc, rel)
            try:
                st = os.lstat(src)
            except FileNotFoundError:
                continue  # gone from ksrc meanwhile: removing it from the post tree was right
            _place(src, dest, st, rule.since, rule.can_link, roots)
        fixed += 1
    return fixed


def _marker_id(postdir: Path) -> list[int]:
    st = os.lstat(postdir / POST_MARKER)
    return [st.st_dev, st.st_ino, st.st_ctime_ns]


def mark_clean(record: Path, ksrc: Path, postdir: Path, since_ns: int | None = None) -> None:
    """Record that the post tree was exactly the snapshot of ksrc at since_ns.

    record: a JSON file outside both trees, ``{"ksrc", "marker", "since_ns"}``
    (``marker``: the post marker's device, inode and change time, so a remade
    tree or a touched marker voids it). since_ns None: when the marker was
    written, less :data:`CLOCK_MARGIN_NS` (right after make_post_tree).
    """
    marker = _marker_id(postdir)
    if since_ns is None:
        since_ns = marker[2] - CLOCK_MARGIN_NS
    write_json(record, {"ksrc": os.fspath(ksrc), "marker": marker, "since_ns": since_ns})


def clean_since(record: Path, ksrc: Path, postdir: Path, now_ns: int) -> int | None:
    """When the post tree was last exactly the snapshot of ksrc (:func:`mark_clean`).

    None when that is not known or cannot be trusted: no or an unreadable
    record, another marker or ksrc, ksrc and the post tree on different file
    systems (clocks), or a clock now (``now_ns``) earlier than the record.
    """
    try:
        data = json.loads(record.read_text())
        since = data["since_ns"]
        if (data["ksrc"] != os.fspath(ksrc) or data["marker"] != _marker_id(postdir)
                or os.stat(ksrc).st_dev != os.stat(postdir).st_dev):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return since if isinstance(since, int) and since <= now_ns else None


def sync_post(ksrc: Path, postdir: Path, exclude: Sequence[Path] = (),
              record: Path | None = None) -> int:
    """Bring the post tree back to exactly the snapshot of ksrc; how many entries it fixed.

    With a ``record`` (:func:`mark_clean`) that says since when the tree was
    clean, only what changed since is compared (:func:`post_changes`);
    otherwise, or when that fails, everything (:func:`post_differences`).
    The record then says the tree is clean from the start of this call.
    """
    now = fs_clock(postdir)
    since = clean_since(record, ksrc, postdir, now) if record is not None else None
    diffs = post_changes(ksrc, postdir, since, exclude) if since is not None else None
    if diffs is None:
        diffs = post_differences(ksrc, postdir, exclude)
    fixed = restore_post(ksrc, postdir, diffs)
    if record is not None:
        mark_clean(record, ksrc, postdir, now - CLOCK_MARGIN_NS)
    return fixed


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
