# SPDX-License-Identifier: GPL-2.0-only
"""Phase 1a: put exactly one patch into the post tree.

The post tree is first brought back to the snapshot (every object and every
previously patched file is hard-linked again to the pre tree's), so a patch
that moved to other files leaves nothing stale behind. The patch's paths are
checked before patch(1) runs, a dry run must succeed before the real one,
and every failure leaves the post tree as the snapshot.
"""

from __future__ import annotations

import os
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
from ksplice_tasks.tree import snapshot

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


def _header_path(line: str) -> str:
    path = line[4:].rstrip("\n")
    if "\t" in path:
        path = path.split("\t", 1)[0]
    return path.strip()


def patch_files(text: str) -> list[tuple[str, str]]:
    """(old, new) path pairs from a unified diff's ---/+++ headers."""
    pairs = []
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("--- ") and lines[i + 1].startswith("+++ "):
            pairs.append((_header_path(line), _header_path(lines[i + 1])))
    if not pairs:
        raise UserError("the patch names no files (only unified diffs are supported)")
    return pairs


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


def _relink(pre: Path, post: Path) -> None:
    """Make post the pre tree's file again (an atomic replace; never writes through)."""
    tmp = post.with_name(f".{post.name}.ksplice-relink")
    if tmp.exists():
        tmp.unlink()
    os.link(pre, tmp)
    os.replace(tmp, post)


def reset_post(s: Settings) -> int:
    """Undo every earlier patch and post build: objects and patched files back to the pre's.

    The patch record says which files a patch touched. A record that exists
    but cannot be read (another ksplice-py version's, or a damaged one) leaves
    that unknown, so the post tree is then made again from the pre tree.
    Returns how many files were restored (for a remade tree: how many it holds).
    """
    restored = 0
    try:
        record: PatchRecord | None = artifacts.POST_PATCH.read(s.layout.create.post_patch)
    except FileNotFoundError:
        record = None
    except (OSError, ValueError) as e:
        print(f"post tree: {e}; making it again from {s.ksrc}", flush=True)
        stats = snapshot.make_post_tree(s.ksrc, s.postdir, s.excluded)
        drop_record(s)
        return stats.linked + stats.copied
    for rel in record.files if record else {}:
        pre, post = s.ksrc / rel, s.postdir / rel
        if pre.is_file():
            if not post.exists() or not os.path.samefile(pre, post):
                _relink(pre, post)
                restored += 1
        elif post.exists() or post.is_symlink():
            post.unlink()
            restored += 1
    for rel, entry in snapshot.walk(s.postdir):
        if not rel.endswith(".o") or not entry.is_file(follow_symlinks=False):
            continue
        pre = s.ksrc / rel
        st = entry.stat(follow_symlinks=False)
        try:
            pst = pre.stat()
        except FileNotFoundError:
            os.unlink(entry.path)  # an object only a patch made
            restored += 1
            continue
        if (st.st_ino, st.st_dev) != (pst.st_ino, pst.st_dev):
            _relink(pre, Path(entry.path))
            restored += 1
    drop_record(s)
    return restored


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

    UserError (post tree left as the snapshot) for a bad path or a patch that
    does not apply.
    """
    text = patch.read_text(errors="replace")
    level = strip_level(s.patch_opts)
    rels = target_files(patch_files(text), level)
    check_targets(s.ksrc, rels, list(s.excluded))
    restored = reset_post(s)
    dry = _run_patch(s, patch, dry=True)
    if dry.returncode != 0:
        rejected = [ln for ln in dry.stdout.splitlines() if "FAILED" in ln or "rej" in ln
                    or "can't find" in ln.lower() or "malformed" in ln.lower()]
        detail = "\n".join(rejected or dry.stdout.splitlines()[-8:] or [dry.stderr.strip()])
        raise UserError(f"the patch does not apply to KERNEL_SOURCE:\n{detail}")
    real = _run_patch(s, patch, dry=False)
    if real.returncode != 0:
        reset_post(s)
        raise UserError(f"patch failed after a clean dry run:\n{real.stdout[-2000:]}")
    files = {rel: sha256_file(s.postdir / rel) for rel in rels}
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
    starts = [i for i in range(len(lines) - 1)
              if lines[i].startswith("--- ") and lines[i + 1].startswith("+++ ")]
    out: dict[str, str] = {}
    for n, i in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        old, new = _header_path(lines[i]), _header_path(lines[i + 1])
        rel = _strip(new if new != "/dev/null" else old, level)
        out[rel] = out.get(rel, "") + "".join(lines[i:end])
    return out
