# SPDX-License-Identifier: GPL-2.0-only
"""Phase 1a: put exactly one patch into the post tree.

The post tree is first brought back to the snapshot (every object and every
previously patched file is hard-linked again to the pre tree's), so a patch
that moved to other files leaves nothing stale behind. The patch's paths are
checked before patch(1) runs, a dry run must succeed before the real one,
and every failure leaves the post tree as the snapshot.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ksplice_tasks import artifacts
from ksplice_tasks.artifacts import PatchRecord
from ksplice_tasks.commands import echo, run_process
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import file_sha256, write_atomic, write_if_changed
from ksplice_tasks.stages import package
from ksplice_tasks.stages.inputs import Settings
from ksplice_tasks.tree import datalayout, snapshot

_ALLOWED_OPTS = re.compile(r"^(-p\d+|--strip=\d+|-F\d+|--fuzz=\d+|-l|--ignore-whitespace|"
                           r"-R|--reverse|--binary)$")


def strip_level(opts: Sequence[str]) -> int:
    """The -pN of the options; only options that cannot redirect patch(1) are allowed."""
    level = None
    for opt in opts:
        for word in opt.split():
            if not _ALLOWED_OPTS.match(word):
                raise UserError(f"unsupported --patch-opt {word!r} (allowed: -pN, -FN, -l, -R, "
                                "--binary)")
            m = re.match(r"^(?:-p|--strip=)(\d+)$", word)
            if m:
                level = int(m.group(1))
    if level is None:
        raise UserError("--patch-opt must include a strip level such as -p1")
    return level


def patch_words(opts: Sequence[str]) -> list[str]:
    return [w for opt in opts for w in opt.split()]


_C_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def unquote_name(quoted: str) -> str:
    """A C-quoted file name as git and GNU diff write it (``"a/x\tb.c"``), decoded.

    ``quoted`` starts with the opening quote; anything after the closing
    quote is ignored. Octal escapes are bytes of the UTF-8 name. UserError
    for a name that ends before its closing quote or holds an unknown escape.
    """
    out = bytearray()
    i = 1
    while i < len(quoted):
        ch = quoted[i]
        if ch == '"':
            return out.decode("utf-8", errors="surrogateescape")
        if ch != "\\":
            out += ch.encode("utf-8", errors="surrogateescape")
            i += 1
            continue
        nxt = quoted[i + 1:i + 2]
        if nxt in _C_ESCAPES:
            out.append(_C_ESCAPES[nxt])
            i += 2
        elif re.fullmatch(r"[0-7]{3}", quoted[i + 1:i + 4]):
            out.append(int(quoted[i + 1:i + 4], 8) & 0xFF)
            i += 4
        else:
            raise UserError(f"the patch names a file with a bad escape: {quoted}")
    raise UserError(f"the patch names a file with no closing quote: {quoted}")


def _header_path(line: str) -> str:
    """The file name of a ``---``/``+++`` header: C-quoted, or up to a tab (the timestamp)."""
    path = line[4:].rstrip("\n")
    if path.startswith('"'):
        return unquote_name(path)
    if "\t" in path:
        path = path.split("\t", 1)[0]
    return path.strip()


@dataclass(frozen=True)
class Section:
    """One file's part of a unified diff: its ``---``/``+++`` names and where it starts.

    ``start``: index (from 0) of its ``---`` line in the patch's lines.
    """

    old: str
    new: str
    start: int


# Lines GNU patch acts on that a plain unified diff of existing files never has
# (checked outside hunk bodies, at the start of a line): what each one does.
_REFUSED = (
    ("rename from ", "renames a file (git 'rename from')"),
    ("rename to ", "renames a file (git 'rename to')"),
    ("copy from ", "copies a file (git 'copy from')"),
    ("copy to ", "copies a file (git 'copy to')"),
    ("old mode ", "changes a file's mode (git 'old mode')"),
    ("new mode ", "changes a file's mode (git 'new mode')"),
    ("GIT binary patch", "is a binary patch (git 'GIT binary patch')"),
    ("Binary files ", "has a binary file (diff's 'Binary files ... differ')"),
    ("Only in ", "left a file out ('Only in ...': make it with diff -N)"),
    ("***************", "is a context diff"),
)
_GIT_MODE = re.compile(r"^(new|deleted) file mode (\d+)$")
_NORMAL = re.compile(r"^\d+(,\d+)?[acd](\d+(,\d+)?)?$")
_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_SUPPORTED = "only unified diffs of regular files (made with diff -u or git diff) are supported"


def _refuse(n: int, what: str) -> UserError:
    return UserError(f"the patch {what} at line {n + 1}; {_SUPPORTED}")


def _skip_hunks(lines: Sequence[str], i: int) -> int:
    """The index after the hunks that start at lines[i] (counted by their @@ headers)."""
    while i < len(lines) and lines[i].startswith("@@"):
        m = _HUNK.match(lines[i])
        if not m:
            raise _refuse(i, "has a malformed hunk header")
        old = int(m.group(1)) if m.group(1) is not None else 1
        new = int(m.group(2)) if m.group(2) is not None else 1
        i += 1
        while i < len(lines) and (old > 0 or new > 0):
            ch = lines[i][:1]
            if ch in (" ", ""):
                old, new = old - 1, new - 1
            elif ch == "-":
                old -= 1
            elif ch == "+":
                new -= 1
            elif ch != "\\":
                break  # a short hunk: patch's dry run names it
            i += 1
        while i < len(lines) and lines[i].startswith("\\"):
            i += 1
    return i


def sections(text: str) -> list[Section]:
    """The file sections of a plain unified diff; UserError for anything else patch(1) reads.

    Refused, naming the line: git renames, copies, mode changes and binary
    patches; a git section with no ``---``/``+++`` (an empty new file, or a
    mode-only change); new or deleted files other than regular ones; context
    and normal (ed-style) diffs; ``Only in`` lines of ``diff -r``; indented
    diffs. Hunk bodies are skipped by their line counts, so a removed line
    ``-- x`` is never taken for a header. Free text before and between
    sections (a mail, a commit message) is allowed.
    """
    lines = text.splitlines()
    out: list[Section] = []
    git_header: int | None = None  # the open 'diff --git' line with no ---/+++ yet
    i = 0
    while i < len(lines):
        line = lines[i]
        bare = line.lstrip(" \t")
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if bare != line and bare.startswith(("--- ", "+++ ", "*** ", "diff ", "@@ ")):
            raise _refuse(i, "is indented")
        if line.startswith("--- ") and nxt.startswith("+++ "):
            out.append(Section(_header_path(line), _header_path(nxt), i))
            git_header = None
            i = _skip_hunks(lines, i + 2)
            continue
        if line.startswith("*** ") and nxt.startswith("--- "):
            raise _refuse(i, "is a context diff")
        if line.startswith("diff --git "):
            if git_header is not None:
                raise _refuse(git_header, "has a git section with no hunk (an empty new file, "
                              "or a mode change)")
            git_header = i
        elif (m := _GIT_MODE.match(line)) and m.group(2) not in ("100644", "100755"):
            raise _refuse(i, f"makes a file that is not a regular file (mode {m.group(2)})")
        elif _NORMAL.match(line):
            raise _refuse(i, "is a normal (ed-style) diff")
        else:
            for prefix, what in _REFUSED:
                if line.startswith(prefix):
                    raise _refuse(i, what)
        i += 1
    if git_header is not None:
        raise _refuse(git_header, "has a git section with no hunk (an empty new file, "
                      "or a mode change)")
    if not out:
        raise UserError(f"the patch names no files ({_SUPPORTED})")
    return out


def patch_files(text: str) -> list[tuple[str, str]]:
    """(old, new) path pairs of a plain unified diff's sections (:func:`sections`)."""
    return [(sec.old, sec.new) for sec in sections(text)]


def _strip(path: str, level: int) -> str:
    if path.startswith("/"):
        raise UserError(f"the patch names an absolute path: {path}")
    parts = [p for p in PurePosixPath(path).parts if p != "."]
    if ".." in parts:
        raise UserError(f"the patch names a path with '..': {path}")
    if len(parts) <= level:
        raise UserError(f"the patch path {path} has no components left after -p{level}")
    return "/".join(parts[level:])


def target_files(pairs: Iterable[tuple[str, str]], level: int) -> list[str]:
    """Tree-relative paths the patch touches (created, changed or deleted)."""
    out: set[str] = set()
    for old, new in pairs:
        for p in (old, new):
            if p != "/dev/null":
                out.add(_strip(p, level))
    return sorted(out)


def check_targets(tree: Path, rels: Iterable[str], excluded: Sequence[Path]) -> None:
    """Every target must resolve inside the tree, not through a symlink out of it."""
    root = tree.resolve()
    for rel in rels:
        full = (tree / rel).resolve()
        if root not in full.parents:
            raise UserError(f"the patch touches a file outside KERNEL_SOURCE: {rel}")
        if any(full == ex or ex in full.parents for ex in excluded):
            raise UserError(f"the patch touches ksplice's own directory: {rel}")


def sha256_file(path: Path) -> str | None:
    """:func:`~ksplice_tasks.files.file_sha256`, or None for a file the patch deleted."""
    try:
        return file_sha256(path)
    except FileNotFoundError:
        return None


def reset_post(s: Settings) -> int:
    """Bring the post tree back to exactly the snapshot of the pre tree, and drop the record.

    Every entry that differs (:func:`snapshot.post_differences`: a patched or
    created file, an object, vmlinux, a .cmd or .d file, a generated header,
    a directory an earlier patch or make left) is removed or put back as
    make_post_tree would. Only what changed in either tree since the last
    reset or snapshot is looked at (:func:`snapshot.sync_post` with the
    record ``layout.post_clean``): about 0.3 s for a built 6.1 tree, plus the
    copies; a full comparison (about 1.5 s) when that is not known.
    A post tree without its marker is made again from the pre tree.
    Returns how many entries were fixed (for a remade tree: how many files it holds).
    """
    try:
        snapshot.snapshot_rule(s.postdir)
    except (OSError, ValueError) as e:
        print(f"post tree: {e}; making it again from {s.ksrc}", flush=True)
        stats = snapshot.make_post_tree(s.ksrc, s.postdir, s.excluded)
        snapshot.mark_clean(s.layout.post_clean, s.ksrc, s.postdir)
        restored = stats.linked + stats.copied
    else:
        restored = snapshot.sync_post(s.ksrc, s.postdir, s.excluded, s.layout.post_clean)
    drop_record(s)
    return restored


def _ancestors(rels: Iterable[str]) -> set[str]:
    return {str(p) for rel in rels for p in PurePosixPath(rel).parents if str(p) != "."}


def patched_files(s: Settings, rels: Sequence[str],
                  since_ns: int | None = None) -> dict[str, str | None]:
    """What patch(1) really changed in the post tree, checked against what the headers name.

    The post tree was the snapshot before patch(1) ran, so every difference
    is patch's. ``since_ns``: when patch(1) started, less
    :data:`snapshot.CLOCK_MARGIN_NS` (file-system clock, ns); only post-tree
    entries changed since are compared (:func:`snapshot.post_changes`).
    None: the whole trees are. Returns path -> SHA-256 (None: deleted) for
    the files it changed. UserError when it changed anything the
    ``---``/``+++`` headers do not name (other than the directories of
    created or deleted files), a file's mode, or nothing at all.
    """
    named, dirs = set(rels), _ancestors(rels)
    diffs = None
    if since_ns is not None:
        diffs = snapshot.post_changes(s.ksrc, s.postdir, since_ns, s.excluded, pre_side=False)
    if diffs is None:
        diffs = snapshot.post_differences(s.ksrc, s.postdir, s.excluded)
    stray = [rel for rel, what in diffs
             if rel not in named and not (rel in dirs and what in ("extra", "missing"))]
    if stray:
        more = f" (and {len(stray) - 1} more)" if len(stray) > 1 else ""
        raise UserError(f"patch(1) changed {stray[0]}{more}, which no ---/+++ header of the "
                        "patch names")
    files: dict[str, str | None] = {}
    for rel, _what in diffs:
        if rel not in named:
            continue
        pre, post = s.ksrc / rel, s.postdir / rel
        if post.is_symlink() or (post.exists() and not post.is_file()):
            raise UserError(f"the patch makes {rel} something other than a regular file")
        if pre.is_file() and post.is_file() and pre.stat().st_mode != post.stat().st_mode:
            raise UserError(f"the patch changes the mode of {rel}")
        files[rel] = sha256_file(post)
    if not files:
        raise UserError("the patch changes no file")
    return files


def check_layout(pre_tree: Path, post_tree: Path, files: dict[str, str | None]) -> None:
    """UserError naming the first data-layout change in the patched ``.c``/``.h`` files.

    ``files``: what :func:`patched_files` returned (tree-relative path ->
    SHA-256, None: deleted); each is compared between the pre tree and the
    post tree with :func:`ksplice_tasks.tree.datalayout.layout_changes`. A
    created or deleted file has no definition on one side: nothing to compare.
    """
    for rel in sorted(files):
        if files[rel] is None or not rel.endswith((".c", ".h")):
            continue
        try:
            pre = (pre_tree / rel).read_text(errors="surrogateescape")
        except FileNotFoundError:
            continue
        post = (post_tree / rel).read_text(errors="surrogateescape")
        changes = datalayout.layout_changes(pre, post)
        if changes:
            raise UserError(datalayout.refusal(rel, changes[0]))


def load_record(s: Settings) -> PatchRecord | None:
    """The patch the post tree holds; None when it holds none (or the record is unreadable)."""
    try:
        return artifacts.POST_PATCH.read(s.layout.create.post_patch)
    except (OSError, ValueError):
        return None


def drop_record(s: Settings) -> None:
    s.layout.create.post_patch.unlink(missing_ok=True)


def _run_patch(s: Settings, patch: Path, dry: bool) -> subprocess.CompletedProcess:
    argv = ["patch", "-d", str(s.postdir), "--batch", "--forward", "--no-backup-if-mismatch",
            *patch_words(s.patch_opts), "-i", str(patch)]
    if dry:
        argv.insert(1, "--dry-run")
    if s.verbose:
        echo(argv)
    return run_process(argv)


@dataclass(frozen=True)
class PatchResult:
    """What :func:`apply_patch` did: the files it patched (path -> SHA-256, None: deleted),
    how many files the reset before it restored, and the update id of the patch."""

    files: dict[str, str | None]
    restored: int
    update_id: str


def apply_patch(s: Settings, patch: Path) -> PatchResult:
    """Reset the post tree, check the patch, dry-run it, apply it, record what it touched.

    UserError (post tree left as the snapshot) for a bad path, a patch that
    does not apply, or one that changes a data layout (:func:`check_layout`).
    """
    text = patch.read_text(errors="surrogateescape")
    level = strip_level(s.patch_opts)
    rels = target_files(patch_files(text), level)
    check_targets(s.ksrc, rels, list(s.excluded))
    restored = reset_post(s)
    dry = _run_patch(s, patch, dry=True)
    if dry.returncode != 0:
        rejected = [ln for ln in dry.stdout.splitlines() if "FAILED" in ln or "rej" in ln
                    or "can't find" in ln.lower() or "malformed" in ln.lower()]
        detail = "; ".join(ln.strip() for ln in (
            rejected or dry.stdout.splitlines()[-3:] or dry.stderr.splitlines()[-3:])
            if ln.strip())
        raise UserError(f"the patch does not apply to KERNEL_SOURCE: {detail}")
    since = snapshot.fs_clock(s.postdir) - snapshot.CLOCK_MARGIN_NS
    real = _run_patch(s, patch, dry=False)
    if real.returncode != 0:
        reset_post(s)
        last = "; ".join(ln.strip() for ln in real.stdout.splitlines()[-4:] if ln.strip())
        raise UserError(f"patch failed after a clean dry run: {last}")
    try:
        files = patched_files(s, rels, since)
        check_layout(s.ksrc, s.postdir, files)
    except UserError:
        reset_post(s)
        raise
    uid = package.settings_id(s, patch)
    # A fresh apply always rewrites the record (applied_ns), so the post build reruns.
    record = PatchRecord(applied_ns=time.time_ns(), patch_sha256=sha256_file(patch),
                         patch_opts=list(s.patch_opts), files=files, update_id=uid)
    write_atomic(s.layout.create.post_patch, artifacts.POST_PATCH.dumps(record))
    if s.verbose:
        print(real.stdout, end="", flush=True)
    return PatchResult(files, restored, uid)


def post_patch(s: Settings, patch: Path) -> dict[str, str]:
    """The post_patch task: :func:`apply_patch`, then hand its update id on.

    The id is a doit value (``{"update_id": id}``) that the id-dependent
    tasks receive when they run: for ``--diffext`` it is not known before.
    """
    return {"update_id": apply_patch(s, patch).update_id}


def patch_is_applied(s: Settings, patch: Path) -> bool:
    """doit uptodate: this patch, with these options, is what the post tree holds."""
    rec = load_record(s)
    if not rec or rec.patch_sha256 != sha256_file(patch):
        return False
    if rec.patch_opts != list(s.patch_opts):
        return False
    return all(sha256_file(s.postdir / rel) == h for rel, h in rec.files.items())


def diffext_patch(s: Settings, ext: str) -> str:
    """The seed's --diffext: a -p0 patch from every FILE<ext> against FILE in KERNEL_SOURCE."""
    if not ext or "/" in ext:
        raise UserError(f"--diffext needs a file name extension, not {ext!r}")
    chunks = []
    for rel, entry in sorted(snapshot.walk(s.ksrc, s.excluded)):
        if not rel.endswith(ext) or rel == ext or not entry.is_file(follow_symlinks=False):
            continue
        orig = rel[: -len(ext)]
        old = s.ksrc / orig
        argv = ["diff", "-u", "--label", orig if old.exists() else "/dev/null",
                "--label", orig, str(old) if old.exists() else "/dev/null", entry.path]
        res = run_process(argv)
        if res.returncode > 1:
            raise UserError(f"diff failed for {rel}: {res.stderr.strip()}")
        chunks.append(res.stdout)
    if not any(chunks):
        raise UserError(f"No changes detected: no file in KERNEL_SOURCE ends with {ext!r} "
                        "and differs from its original")
    return "".join(chunks)


def write_diffext_patch(s: Settings, ext: str, out: Path) -> Path:
    """The diffext task: :func:`diffext_patch` into ``out``, left alone when unchanged."""
    return write_if_changed(out, diffext_patch(s, ext))


def diffext_is_current(s: Settings, ext: str, out: Path) -> bool:
    """doit uptodate: ``out`` already holds the patch the FILE<ext> copies make now.

    False when there is none or it cannot be made (the task then says why).
    """
    try:
        return out.read_text() == diffext_patch(s, ext)
    except (OSError, UserError):
        return False


def file_chunks(text: str, level: int) -> dict[str, str]:
    """The patch split per target file: tree-relative path -> that file's part of the patch."""
    lines = text.splitlines(keepends=True)
    secs = sections(text)
    out: dict[str, str] = {}
    for n, sec in enumerate(secs):
        end = secs[n + 1].start if n + 1 < len(secs) else len(lines)
        rel = _strip(sec.new if sec.new != "/dev/null" else sec.old, level)
        out[rel] = out.get(rel, "") + "".join(lines[sec.start:end])
    return out
