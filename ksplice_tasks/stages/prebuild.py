# SPDX-License-Identifier: GPL-2.0-only
"""Phase 0 (`--prebuild`): install ORIG_CONFIG's .config, pre build, snapshot the post tree.

Each function is a doit action and also a plain function: tests call them directly.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from ksplice_tasks import artifacts
from ksplice_tasks.artifacts import PreBuildStamp
from ksplice_tasks.commands import run
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import write_atomic
from ksplice_tasks.stages.inputs import Settings
from ksplice_tasks.tree import cmdfile, kbuild, snapshot

BUILD_FILES = ("Makefile", "Kbuild", "Kconfig")

# Symbols Kconfig computes from the compiler, assembler and linker that run it.
_TOOLCHAIN_PREFIXES = ("CC_", "GCC_", "CLANG_", "AS_", "LD_", "LLD_", "PAHOLE_", "RUSTC_",
                       "TOOLCHAIN_", "OBJTOOL_")


def parse_config(text: str) -> dict[str, str]:
    """CONFIG_ symbol -> value; unset symbols are absent."""
    out = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            name, val = line.split("=", 1)
            out[name[len("CONFIG_"):]] = val
    return out


def config_differences(want: dict[str, str], got: dict[str, str]) -> list[str]:
    """Human-readable differences, 'SYMBOL: want -> got', sorted by name."""
    names = sorted(set(want) | set(got))
    return [f"CONFIG_{n}: {want.get(n, 'unset')} -> {got.get(n, 'unset')}"
            for n in names if want.get(n) != got.get(n)]


def is_toolchain_symbol(diff: str) -> bool:
    name = diff.split(":", 1)[0][len("CONFIG_"):]
    return name.startswith(_TOOLCHAIN_PREFIXES) or "_VERSION" in name


def check_config_fits(s: Settings) -> list[str]:
    """Run Kconfig over a private copy of ORIG's .config; it must come back unchanged.

    A .config from another kernel version would be silently "fixed" by the
    build, and the update built from it would not match the running kernel.
    Toolchain-derived symbols only warn: they say the compiler differs.
    """
    with tempfile.TemporaryDirectory(prefix="ksplice-config-") as tmp:
        cfg = Path(tmp) / "config"
        cfg.write_bytes((s.orig / ".config").read_bytes())
        run(["make", "-C", s.ksrc, "-s", *s.make_vars, f"KCONFIG_CONFIG={cfg}", "olddefconfig"],
            verbose=s.verbose, what="make olddefconfig (checking ORIG_CONFIG/.config)")
        diffs = config_differences(parse_config((s.orig / ".config").read_text()),
                                   parse_config(cfg.read_text()))
    serious = [d for d in diffs if not is_toolchain_symbol(d)]
    if serious:
        more = f" (and {len(serious) - 3} more)" if len(serious) > 3 else ""
        raise UserError(
            "ORIG_CONFIG/.config does not fit KERNEL_SOURCE, is it the running kernel's "
            f"source? {'; '.join(serious[:3])}{more}"
        )
    return diffs


def install_config(s: Settings) -> None:
    """The seed copies ORIG_CONFIG/.config into the tree; we check that it fits first."""
    warnings = check_config_fits(s)
    for w in warnings:
        print(f"warning: toolchain differs from the running kernel's: {w}", flush=True)
    data = (s.orig / ".config").read_bytes()
    target = s.ksrc / ".config"
    if not target.is_file() or target.read_bytes() != data:
        write_atomic(target, data)


def load_stamp(s: Settings) -> PreBuildStamp | None:
    """The last pre build's stamp; None when there is none (or it is unreadable)."""
    try:
        return artifacts.PRE_BUILD.read(s.layout.pre_stamp)
    except (OSError, ValueError):
        return None


def previous_object_count(s: Settings) -> int | None:
    stamp = load_stamp(s)
    return stamp.objects_total if stamp else None


def count_objects(tree: Path, exclude: tuple[Path, ...]) -> int:
    return sum(1 for rel, e in snapshot.walk(tree, exclude)
               if rel.endswith(".o") and e.is_file(follow_symlinks=False))


def build_pre(s: Settings) -> dict:
    """The pre build, with one section per function; a vmlinux that fails to link is tolerated.

    Stock 6.1 x86 orphans .text.* sections in vmlinux (DESIGN.md section 3), so
    the seed never insists on the link; only the objects matter here. The
    fingerprint of the built tree lets a rerun skip make entirely.
    """
    argv = kbuild.make_argv(s.ksrc, s.jobs, make_vars=s.make_vars)
    # A total is known only for a full rebuild of a tree built before (make clean);
    # an incremental build says how many objects it recompiled.
    fresh = count_objects(s.ksrc, s.excluded) == 0
    progress = kbuild.Progress("pre build", total=previous_object_count(s) if fresh else None)
    log = s.layout.log("pre-build")
    res = kbuild.run_make(argv, log, progress, verbose=s.verbose)
    if res.returncode != 0:
        print(f"pre build: make exited {res.returncode}; tolerated as the seed does "
              f"(section flags can break the vmlinux link); log: {log}", flush=True)
    if not (s.ksrc / "scripts/mod/modpost").is_file():
        raise UserError(f"the pre build did not get far enough to build modpost; see {log}:\n"
                        + kbuild.error_excerpt(log))
    inputs = build_inputs(s.ksrc, s.excluded)
    write_atomic(s.layout.pre_inputs, json.dumps(inputs))
    stamp = PreBuildStamp(
        ksrc=str(s.ksrc),
        inputs=len(inputs),
        fingerprint=snapshot.files_fingerprint(s.ksrc, inputs),
        returncode=res.returncode,
        objects_compiled=res.objects,
        objects_total=count_objects(s.ksrc, s.excluded),
        seconds=round(res.seconds, 1),
        finished=time.time(),
    )
    write_atomic(s.layout.pre_stamp, artifacts.PRE_BUILD.dumps(stamp))
    return {"returncode": res.returncode, "objects": res.objects}


def build_inputs(tree: Path, exclude: tuple[Path, ...]) -> list[str]:
    """Every file the pre build read or wrote an object to, from Kbuild's own .cmd files.

    Sources, the headers they included, the objects, every Makefile, Kbuild
    and Kconfig file, and the config: a change to any of them is what makes
    make do work. Checking only these (not all 80,000 files of the tree)
    keeps a no-op rerun well under a second.
    """
    files = {".config", "include/config/auto.conf"}
    for rel, entry in snapshot.walk(tree, exclude):
        name = entry.name
        if name.startswith(BUILD_FILES):
            files.add(rel)
        elif name.startswith(".") and name.endswith(".cmd"):
            with open(entry.path, "rb") as f:
                cmd = cmdfile.parse(f.read())
            if cmd.object and cmd.source:
                files.update((cmd.object, cmd.source), cmd.deps)
    return sorted(files)


def pre_tree_unchanged(s: Settings) -> bool:
    """doit uptodate check: nothing the last pre build read or made has changed since."""
    stamp = load_stamp(s)
    try:
        inputs = json.loads(s.layout.pre_inputs.read_text())
    except (OSError, ValueError):
        return False
    if stamp is None or stamp.ksrc != str(s.ksrc):
        return False
    return stamp.fingerprint == snapshot.files_fingerprint(s.ksrc, inputs)


def snapshot_post(s: Settings) -> dict:
    """Hard-link the built pre tree into the post dir (seed: rsync --link-dest)."""
    print(f"post tree: snapshot of {s.ksrc} into {s.postdir}", flush=True)
    stats = snapshot.make_post_tree(s.ksrc, s.postdir, s.excluded, verbose=True)
    return {"linked": stats.linked, "copied": stats.copied}
