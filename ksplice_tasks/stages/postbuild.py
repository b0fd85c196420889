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


def full_build_candidates(pre: Path, post: Path) -> list[str]:
    """After a full make: the rebuilt objects (:func:`rebuilt_objects`) that the patched
    kernel's image or modules link (:func:`kbuild.linked_objects` of the post tree).

    A relink also rebuilds objects that reach the image only as data or not
    at all (``init/version-timestamp.o``, ``arch/x86/boot/*.o``, the vDSO's
    own objects); those never count as changed. A tree that was never linked
    falls back to skipping link products by name.
    """
    rebuilt = rebuilt_objects(pre, post)
    linked = kbuild.linked_objects(post)
    if linked is None:
        return [r for r in rebuilt if not _SKIP.search(r)]
    return [r for r in rebuilt if r in linked]


def build_post(s: Settings) -> PostBuild:
    """Rebuild after the patch; on failure reset the post tree and say what broke.

    On a targeted prebuild the pre objects the patch can change are built
    first (:func:`targeted_objects`); otherwise the pre tree holds them all.
    """
    rec = patching.load_record(s)
    if rec is None:
        raise UserError("the post tree holds no patch; run the post_patch step first")
    try:
        result = _build_post(s, sorted(rec.files))
    except UserError:
        patching.reset_post(s)
        raise
    write_atomic(s.layout.create.post_build, artifacts.POST_BUILD.dumps(result))
    print(f"post build: {len(result.changed)} changed object(s): {', '.join(result.changed)}",
          flush=True)
    return result


def _build_post(s: Settings, touched: Sequence[str]) -> PostBuild:
    stamp = prebuild.load_stamp(s)
    pre_seconds = 0.0
    if stamp is not None and stamp.mode == prebuild.TARGETED:
        mode = "targeted"
        targets: list[str] | None = targeted_objects(s, touched)
        print(f"targeted build: {len(targets)} object(s) the patch can change", flush=True)
        pre = build_objects(s, s.ksrc, targets, "pre objects")
        pre_seconds = pre.seconds
        print(f"pre objects: {pre.objects} compiled, {len(targets) - pre.objects} reused "
              "from earlier creates", flush=True)
        for rel in targets:  # an earlier patch's post object must not look up to date
            for path in (s.postdir / rel, cmdfile.cmd_path(s.postdir, rel)):
                if path.is_file() or path.is_symlink():
                    path.unlink()
    else:
        targets = affected_objects(s.postdir, touched)
        mode = "objects" if targets is not None else "full"
        if targets == []:
            raise nothing_compiled(touched)
    try:
        post = build_objects(s, s.postdir, targets or [], "post build")
    except UserError as e:
        raise UserError("Aborting: Applying the patch appears to break the kernel build: "
                        + str(e).split(": ", 1)[-1]) from None
    candidates = (targets if targets is not None
                  else full_build_candidates(s.ksrc, s.postdir))
    changed = changed_objects(s.ksrc, s.postdir, candidates)
    if not changed:
        raise UserError("Aborting: No changes detected")
    return PostBuild(mode, targets or [], changed, round(pre_seconds + post.seconds, 2),
                     post.returncode)


def nothing_compiled(touched: Sequence[str]) -> UserError:
    """The refusal of a patch whose files this configuration compiles into no object."""
    return UserError("No changes detected: the patch touches no file that this "
                     f"configuration compiles ({', '.join(touched)})")


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
    units, scan = prebuild.load_inventory(s.layout)
    objects, why = deps.affected_objects(units, scan, touched)
    if objects is None:
        raise UserError(f"{why}; a targeted prebuild cannot tell which objects that changes: "
                        f"build the whole tree first with `ksplice-create --prebuild --full "
                        f"--config={s.orig} {s.ksrc}`")
    if not objects:
        raise nothing_compiled(touched)
    return objects


def build_objects(s: Settings, tree: Path, objects: Sequence[str],
                  phase: str) -> kbuild.MakeResult:
    """``make`` exactly these objects in ``tree`` with the section flags (none: everything).

    Returns make's result (``seconds``, ``objects`` compiled: those already
    up to date are not).

    UserError with the compiler's messages when make fails.
    """
    argv = kbuild.make_argv(tree, s.jobs, objects, make_vars=s.make_vars)
    log = s.layout.log(phase.replace(" ", "-"))
    res = kbuild.run_make(argv, log, kbuild.Progress(phase, total=len(objects) or None),
                          verbose=s.verbose)
    if res.returncode != 0:
        raise UserError(f"{phase} failed: {kbuild.error_excerpt(log) or 'make failed'} "
                        f"(make exited {res.returncode}; log: {log})")
    return res
