# SPDX-License-Identifier: GPL-2.0-only
"""Phase 1b: rebuild what the patch touched in the post tree, and find the changed objects.

Kbuild's .cmd files list every object's source and headers, so the objects a
patch can change are known exactly; only those are rebuilt (`make a.o b.o`),
which skips the vmlinux link a full make would redo. A patch that touches
anything else (a Makefile, a new file) falls back to a full make, as the seed
always did. An object counts as changed when its bytes differ from the pre
tree's; objects produced by linking (more than one GCC .comment) are skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from elftools.elf.elffile import ELFFile

from ksplice_tasks import artifacts
from ksplice_tasks.artifacts import PostBuild
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import write_atomic
from ksplice_tasks.stages import patching, prebuild
from ksplice_tasks.stages.inputs import Settings
from ksplice_tasks.tree import cmdfile, deps, kbuild, snapshot

SOURCE_SUFFIXES = (".c", ".h", ".S")


def affected_objects(tree: Path, touched: Sequence[str]) -> list[str] | None:
    """Objects whose source or headers include a touched file; None if only a full make is safe."""
    if not touched or any(not t.endswith(SOURCE_SUFFIXES) for t in touched):
        return None
    needles = [t.encode() for t in touched]
    objects = []
    for _rel, entry in snapshot.walk(tree):
        if not cmdfile.is_object_cmd(entry.name):
            continue
        with open(entry.path, "rb") as f:
            data = f.read()
        if not any(n in data for n in needles):
            continue
        cmd = cmdfile.parse(data)
        if cmd.object and (cmd.source in touched or cmd.deps.intersection(touched)):
            objects.append(cmd.object)
    return sorted(objects)


def gcc_comments(path: Path) -> int:
    """How many compilations went into an object: more than one means it was linked."""
    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".comment")
        return sec.data().count(b"GCC:") if sec is not None else 0


def changed_objects(pre: Path, post: Path, candidates: Iterable[str]) -> list[str]:
    """Candidates whose post object differs in bytes from the pre object."""
    out = []
    for rel in candidates:
        a, b = pre / rel, post / rel
        if not b.is_file():
            continue
        if not a.is_file():
            raise UserError(f"the patch creates a new object file {rel}; new files are not "
                            "supported")
        if os.path.samefile(a, b) or a.read_bytes() == b.read_bytes():
            continue
        if gcc_comments(b) > 1:
            continue
        out.append(rel)
    return out


def rebuilt_objects(pre: Path, post: Path) -> list[str]:
    """After a full make: every object whose inode is no longer the pre tree's."""
    out = []
    for rel, entry in snapshot.walk(post):
        if rel.endswith(".o") and entry.is_file(follow_symlinks=False):
            p = pre / rel
            if not p.exists() or not os.path.samefile(p, entry.path):
                out.append(rel)
    return out


_SKIP = re.compile(r"(^|/)(\.tmp_|vmlinux\.o$|built-in|.*\.mod\.o$|.*\.lto\.o$)")


def build_post(s: Settings) -> PostBuild:
    """Rebuild after the patch; on failure reset the post tree and say what broke."""
    rec = patching.load_record(s)
    if rec is None:
        raise UserError("the post tree holds no patch; run the post_patch step first")
    touched = sorted(rec.files)
    stamp = prebuild.load_stamp(s)
    if stamp is not None and stamp.mode == prebuild.TARGETED:
        return build_targeted(s, touched)
    targets = affected_objects(s.postdir, touched)
    mode = "objects" if targets is not None else "full"
    if targets == []:
        patching.reset_post(s)
        raise UserError("No changes detected: the patch touches no file that this "
                        f"configuration compiles ({', '.join(touched)})")
    argv = kbuild.make_argv(s.postdir, s.jobs, targets or [], make_vars=s.make_vars)
    log = s.layout.log("post-build")
    res = kbuild.run_make(argv, log, kbuild.Progress("post build", total=len(targets or [])
                                                    or None), verbose=s.verbose)
    if res.returncode != 0:
        patching.reset_post(s)
        raise UserError("Aborting: Applying the patch appears to break the kernel build:\n"
                        + kbuild.error_excerpt(log))
    candidates = targets if targets is not None else [
        r for r in rebuilt_objects(s.ksrc, s.postdir) if not _SKIP.search(r)]
    changed = changed_objects(s.ksrc, s.postdir, candidates)
    if not changed:
        patching.reset_post(s)
        raise UserError("Aborting: No changes detected")
    result = PostBuild(mode, targets or [], changed, round(res.seconds, 2), res.returncode)
    write_atomic(s.layout.create.post_build, artifacts.POST_BUILD.dumps(result))
    print(f"post build: {len(changed)} changed object(s): {', '.join(changed)}", flush=True)
    return result


def load_result(s: Settings) -> PostBuild | None:
    """The last post build's record; None when there is none (or it is unreadable)."""
    try:
        return artifacts.POST_BUILD.read(s.layout.create.post_build)
    except (OSError, ValueError):
        return None


def targeted_objects(s: Settings, touched: Sequence[str]) -> list[str]:
    """The objects a patch can change in a targeted tree (:func:`deps.affected_objects`).

    UserError when only a full build could tell (a Makefile, Kconfig, ...), or
    when the config builds nothing the patch touches.
    """
    units, scan = prebuild.load_inventory(s)
    objects, why = deps.affected_objects(units, scan, touched)
    if objects is None:
        raise UserError(f"{why}; a targeted prebuild cannot tell which objects that changes: "
                        f"build the whole tree first with `ksplice-create --prebuild --full "
                        f"--config={s.orig} {s.ksrc}`")
    if not objects:
        raise UserError("No changes detected: the patch touches no file that this "
                        f"configuration compiles ({', '.join(touched)})")
    return objects


def build_objects(s: Settings, tree: Path, objects: Sequence[str],
                  phase: str) -> kbuild.MakeResult:
    """``make`` exactly these objects in ``tree`` with the section flags.

    Returns make's result (``seconds``, ``objects`` compiled: those already
    up to date are not).

    UserError with the compiler's messages when make fails.
    """
    argv = kbuild.make_argv(tree, s.jobs, objects, make_vars=s.make_vars)
    log = s.layout.log(phase.replace(" ", "-"))
    res = kbuild.run_make(argv, log, kbuild.Progress(phase, total=len(objects)),
                          verbose=s.verbose)
    if res.returncode != 0:
        raise UserError(f"{phase} failed: make exited {res.returncode}; see {log}:\n"
                        + kbuild.error_excerpt(log))
    return res


def build_targeted(s: Settings, touched: Sequence[str]) -> PostBuild:
    """A create on a targeted prebuild: the touched pre objects, then the post objects.

    The pre objects are built in the pre tree, where they stay: make rebuilds
    none of them for a later patch to the same files. In the post tree, any
    object left by an earlier patch is removed first, so make cannot take it
    for up to date.
    """
    try:
        objects = targeted_objects(s, touched)
        print(f"targeted build: {len(objects)} object(s) the patch can change", flush=True)
        pre = build_objects(s, s.ksrc, objects, "pre objects")
        print(f"pre objects: {pre.objects} compiled, {len(objects) - pre.objects} reused "
              "from earlier creates", flush=True)
        for rel in objects:
            for path in (s.postdir / rel, cmdfile.cmd_path(s.postdir, rel)):
                if path.is_file() or path.is_symlink():
                    path.unlink()
        try:
            post = build_objects(s, s.postdir, objects, "post build")
        except UserError as e:
            raise UserError("Aborting: Applying the patch appears to break the kernel build:\n"
                            + str(e).split("\n", 1)[-1]) from None
        changed = changed_objects(s.ksrc, s.postdir, objects)
        if not changed:
            raise UserError("Aborting: No changes detected")
    except UserError:
        patching.reset_post(s)
        raise
    result = PostBuild("targeted", list(objects), changed,
                       round(pre.seconds + post.seconds, 2), 0)
    write_atomic(s.layout.create.post_build, artifacts.POST_BUILD.dumps(result))
    print(f"post build: {len(changed)} changed object(s): {', '.join(changed)}", flush=True)
    return result
