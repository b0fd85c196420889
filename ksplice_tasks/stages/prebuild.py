# SPDX-License-Identifier: GPL-2.0-only
"""Phase 0 (`--prebuild`): install ORIG_CONFIG's .config, pre build, snapshot the post tree.

Each function is a doit action and also a plain function: tests call them directly.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ksplice_tasks import artifacts
from ksplice_tasks.artifacts import PreBuildStamp
from ksplice_tasks.commands import echo, run, spawn
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import file_sha256, write_atomic, write_json
from ksplice_tasks.stages import kmod
from ksplice_tasks.stages.inputs import Settings
from ksplice_tasks.stages.layout import StateLayout
from ksplice_tasks.tree import cmdfile, deps, kbuild, snapshot

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


# Symbols a distribution's shipped config lacks because its build system sets
# them outside Kconfig (Debian's /boot/config-6.1.0-*: signing keys, build
# salt); olddefconfig adds their defaults, which change no object's code.
PACKAGING_SYMBOLS = frozenset({"BUILD_SALT", "MODULE_SIG_ALL", "MODULE_SIG_KEY",
                               "SYSTEM_TRUSTED_KEYS", "SYSTEM_REVOCATION_KEYS"})


def is_packaging_default(diff: str) -> bool:
    """A signing/salt symbol the shipped config left unset and olddefconfig defaulted."""
    name, _, change = diff.partition(": ")
    return name[len("CONFIG_"):] in PACKAGING_SYMBOLS and change.startswith("unset -> ")


def check_config_fits(s: Settings) -> tuple[list[str], bytes]:
    """Run Kconfig over a private copy of ORIG's .config; it must come back unchanged.

    A .config from another kernel version would be silently "fixed" by the
    build, and the update built from it would not match the running kernel.
    Toolchain-derived symbols only warn: they say the compiler differs.
    Returns the differences and the .config as Kconfig wrote it back (what
    the build's own syncconfig would make of ORIG's).
    """
    with tempfile.TemporaryDirectory(prefix="ksplice-config-") as tmp:
        cfg = Path(tmp) / "config"
        cfg.write_bytes((s.orig / ".config").read_bytes())
        run(["make", "-C", s.ksrc, "-s", *s.make_vars, f"KCONFIG_CONFIG={cfg}", "olddefconfig"],
            verbose=s.verbose, what="make olddefconfig (checking ORIG_CONFIG/.config)")
        synced = cfg.read_bytes()
        diffs = config_differences(parse_config((s.orig / ".config").read_text()),
                                   parse_config(synced.decode(errors="replace")))
    serious = [d for d in diffs if not is_toolchain_symbol(d) and not is_packaging_default(d)]
    if serious:
        more = f" (and {len(serious) - 3} more)" if len(serious) > 3 else ""
        raise UserError(
            "ORIG_CONFIG/.config does not fit KERNEL_SOURCE, is it the running kernel's "
            f"source? {'; '.join(serious[:3])}{more}"
        )
    return diffs, synced


def install_config(s: Settings) -> None:
    """The seed copies ORIG_CONFIG/.config into the tree; we check that it fits first.

    The tree gets the .config as Kconfig writes it back (a distribution's
    config lacks a few signing defaults, :data:`PACKAGING_SYMBOLS`): the
    build's syncconfig then leaves it alone, so a rerun finds it current.
    """
    warnings, synced = check_config_fits(s)
    for w in warnings:
        if is_toolchain_symbol(w):
            print(f"warning: toolchain differs from the running kernel's: {w}", flush=True)
    target = s.ksrc / ".config"
    if not target.is_file() or target.read_bytes() != synced:
        write_atomic(target, synced)
    write_atomic(s.layout.config_stamp, json.dumps(
        {"orig": file_sha256(s.orig / ".config"), "tree": file_sha256(target)}))


def config_installed(s: Settings) -> bool:
    """doit uptodate check: the tree's .config is what install_config made of ORIG's."""
    try:
        stamp = json.loads(s.layout.config_stamp.read_text())
        return (stamp.get("orig") == file_sha256(s.orig / ".config")
                and stamp.get("tree") == file_sha256(s.ksrc / ".config"))
    except (OSError, ValueError, AttributeError):
        return False


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


FULL, TARGETED = "full", "targeted"
# The inventory's and include index's record versions: a change redoes a targeted prebuild.
INDEX_FORMAT = artifacts.INVENTORY.version * 100 + artifacts.INCLUDES.version


def pre_mode(s: Settings) -> str:
    """Which pre build a prebuild does: :data:`FULL` or :data:`TARGETED`.

    Full when asked (``--full``, ``FULL=1``), when the last pre build was
    full, or when the tree holds a built vmlinux (an incremental full build is
    then cheap); otherwise targeted: ``make prepare`` only, and each create
    builds the pre objects its patch touches.
    """
    if s.full:
        return FULL
    stamp = load_stamp(s)
    if stamp is not None and stamp.ksrc == str(s.ksrc):
        return stamp.mode
    if any((s.ksrc / name).is_file() for name in ("vmlinux", "vmlinux.o")):
        return FULL
    return TARGETED


def build_pre(s: Settings) -> dict:
    """The pre build of the mode :func:`pre_mode` chooses.

    From the moment make starts until the stamp is written, the state
    directory holds an *unfinished* record (:func:`record_unfinished`): a pre
    build that is killed, interrupted, runs out of disk or fails never counts
    as done. The next prebuild redoes it; a create refuses
    (:func:`unfinished_message`).
    """
    if pre_mode(s) == TARGETED:
        result = build_pre_targeted(s)
    else:
        result = build_pre_full(s)
    s.layout.pre_unfinished.unlink(missing_ok=True)
    return result


INTERRUPTED = "it was interrupted"
# Targets a full pre build may leave unbuilt and still count as done: those of
# the vmlinux and module links, which section flags can break (DESIGN.md 3).
_LINK_STAGE = re.compile(r"(^|/)(\.tmp_|\.vmlinux|vmlinux|version-timestamp\.o$)"
                         r"|\.mod\.o$|\.ko$|^arch/[^/]+/boot/")
_OBJECT_TAGS = ("CC", "CC [M]", "AS", "AS [M]")


def unbuilt_objects(outstanding: Sequence[tuple[str, str]]) -> list[str]:
    """The objects a dry run still compiles (Kbuild's ``CC``/``AS`` steps), link stage excluded.

    ``outstanding``: :func:`ksplice_tasks.tree.kbuild.dry_run`'s (tag, target) pairs.
    """
    return [target for tag, target in outstanding
            if tag in _OBJECT_TAGS and target.endswith(".o") and not _LINK_STAGE.search(target)]


def unfinished(mode: str, returncode: int,
               outstanding: Sequence[tuple[str, str]]) -> list[str] | None:
    """None when a pre build counts as done; else what it has still to build (maybe empty).

    A make that exited 0 is done. A targeted pre build (``make prepare
    modules_prepare``) must exit 0: everything its dry run still lists is
    missing. A full pre build killed by a signal (``returncode`` < 0) is never
    done; one that failed is done only when its dry run would compile no
    object but those of the vmlinux and module links (the seed's tolerated
    link failure): then None.
    """
    if returncode == 0:
        return None
    objects = unbuilt_objects(outstanding)
    if mode == TARGETED or returncode < 0:
        return objects or [target for _tag, target in outstanding]
    return objects or None


def make_failure(returncode: int) -> str:
    """``make was killed by SIGTERM`` / ``make exited 2``."""
    if returncode < 0:
        try:
            return f"make was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"make was killed by signal {-returncode}"
    return f"make exited {returncode}"


def record_unfinished(s: Settings, mode: str, reason: str, missing: Sequence[str] | None) -> None:
    """Write the unfinished record: ``mode``, ``reason``, ``missing`` (None: not known)."""
    write_json(s.layout.pre_unfinished, {"mode": mode, "reason": reason,
                                         "missing": None if missing is None else list(missing)})


def listing(names: Sequence[str], shown: int = 5) -> str:
    """``a, b, c, d, e and 174 more``."""
    head = ", ".join(names[:shown])
    return f"{head} and {len(names) - shown} more" if len(names) > shown else head


def unfinished_message(s: Settings) -> str | None:
    """Why the pre tree cannot be used, naming what its pre build did not build; None if it can.

    Read from the unfinished record (:func:`record_unfinished`); an
    unreadable record counts as an interrupted build.
    """
    path = s.layout.pre_unfinished
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
        reason, missing = str(rec["reason"]), rec["missing"]
    except (OSError, ValueError, KeyError, TypeError):
        reason, missing = INTERRUPTED, None
    what = f"; not built: {listing(missing)}" if missing else ""
    return (f"the pre build of {s.ksrc} did not finish ({reason}){what}; run "
            f"`ksplice-create --prebuild --config={s.orig} {s.ksrc}` to finish it")


def check_make(s: Settings, mode: str, argv: Sequence[str], res: kbuild.MakeResult) -> None:
    """After the pre build's make: UserError naming what is not built, unless it counts as done.

    Runs the dry run (:func:`ksplice_tasks.tree.kbuild.dry_run`) only when
    make failed, and records the outcome (:func:`record_unfinished`).
    """
    if res.returncode == 0:
        return
    missing = unfinished(mode, res.returncode, kbuild.dry_run(argv))
    if missing is None:
        return
    record_unfinished(s, mode, make_failure(res.returncode), missing)
    excerpt = kbuild.error_excerpt(res.log) if res.returncode > 0 else ""
    raise UserError(unfinished_message(s) + (f"; {excerpt}" if excerpt else "")
                    + f" (log: {res.log})")


def build_pre_full(s: Settings) -> dict:
    """The pre build, with one section per function; a vmlinux that fails to link is tolerated.

    Stock 6.1 x86 orphans .text.* sections in vmlinux (DESIGN.md section 3), so
    the seed never insists on the link; only the objects matter here. A make
    that fails is tolerated only when every object is built
    (:func:`check_make`); a killed make never is. The
    fingerprint of the built tree lets a rerun skip make entirely.
    """
    argv = kbuild.make_argv(s.ksrc, s.jobs, make_vars=s.make_vars)
    # A total is known only for a full rebuild of a tree built before (make clean);
    # an incremental build says how many objects it recompiled.
    fresh = count_objects(s.ksrc, s.excluded) == 0
    progress = kbuild.Progress("pre build", total=previous_object_count(s) if fresh else None)
    log = s.layout.log("pre-build")
    record_unfinished(s, FULL, INTERRUPTED, None)
    res = kbuild.run_make(argv, log, progress, verbose=s.verbose)
    check_make(s, FULL, argv, res)
    if res.returncode != 0:
        print(f"pre build: make exited {res.returncode} with every object built; tolerated "
              f"as the seed does (section flags can break the vmlinux link); log: {log}",
              flush=True)
    if not (s.ksrc / "scripts/mod/modpost").is_file():
        record_unfinished(s, FULL, make_failure(res.returncode), ["scripts/mod/modpost"])
        raise UserError(f"the pre build did not get far enough to build modpost: "
                        f"{kbuild.error_excerpt(log) or 'make failed'} (log: {log})")
    write_stamp(s, returncode=res.returncode, objects_compiled=res.objects,
                objects_total=count_objects(s.ksrc, s.excluded), seconds=res.seconds,
                mode=FULL)
    return {"returncode": res.returncode, "objects": res.objects}


def write_stamp(s: Settings, *, returncode: int, objects_compiled: int, objects_total: int,
                seconds: float, mode: str, index_format: int = 0) -> PreBuildStamp:
    """Record a finished pre build: the files it read or wrote, their fingerprint, its figures.

    ``pre-inputs.json`` lists the files (:func:`build_inputs`); the stamp's
    fingerprint covers them, so a rerun with none changed skips the build.
    """
    inputs = build_inputs(s.ksrc, s.excluded)
    write_atomic(s.layout.pre_inputs, json.dumps(inputs))
    stamp = PreBuildStamp(
        ksrc=str(s.ksrc),
        inputs=len(inputs),
        fingerprint=snapshot.files_fingerprint(s.ksrc, inputs),
        returncode=returncode,
        objects_compiled=objects_compiled,
        objects_total=objects_total,
        seconds=round(seconds, 1),
        finished=time.time(),
        mode=mode,
        index_format=index_format,
    )
    write_atomic(s.layout.pre_stamp, artifacts.PRE_BUILD.dumps(stamp))
    return stamp


def build_pre_targeted(s: Settings) -> dict:
    """The targeted pre build: ``make prepare modules_prepare``, the object inventory, includes.

    Builds no object. Writes the inventory of every object the config builds
    (``make -n``) and the tree's include index
    (:mod:`ksplice_tasks.tree.deps`); create then builds only the pre objects
    its patch touches. UserError when ``make prepare`` fails, or when there is
    no Module.symvers to build the update modules against.
    """
    if not (s.orig / "Module.symvers").is_file() and not (s.ksrc / "Module.symvers").is_file():
        raise UserError(
            "a targeted prebuild needs ORIG_CONFIG/Module.symvers (the running kernel's "
            "exported symbols and CRCs; on Debian /usr/src/linux-headers-$(uname -r)/"
            "Module.symvers), or build the whole kernel with --prebuild --full")
    started = time.monotonic()
    log = s.layout.log("pre-build")
    argv = kbuild.make_argv(s.ksrc, s.jobs, ["prepare", "modules_prepare"],
                            make_vars=s.make_vars)
    print("pre build (targeted): make prepare modules_prepare; objects are built per patch",
          flush=True)
    record_unfinished(s, TARGETED, INTERRUPTED, None)
    res = kbuild.run_make(argv, log, kbuild.Progress("pre build"), verbose=s.verbose)
    check_make(s, TARGETED, argv, res)
    kmod.install_symvers(s)
    units = inventory(s)
    print(f"pre build (targeted): {len(units)} objects in the config's inventory; "
          "scanning includes", flush=True)
    scan = deps.scan_includes(s.ksrc, (*s.excluded, *deps.scan_exclusions(s.ksrc, units)))
    write_atomic(s.layout.inventory, artifacts.INVENTORY.dumps(deps.inventory_record(units)))
    write_atomic(s.layout.includes, artifacts.INCLUDES.dumps(deps.index_record(scan)))
    seconds = time.monotonic() - started
    write_stamp(s, returncode=0, objects_compiled=0, objects_total=len(units), seconds=seconds,
                mode=TARGETED, index_format=INDEX_FORMAT)
    print(f"pre build (targeted): done in {seconds:.0f} s; {len(scan.files)} files scanned",
          flush=True)
    return {"returncode": 0, "objects": 0}


def inventory(s: Settings) -> dict[str, deps.CompileUnit]:
    """Every object the config builds, from ``make -n`` (run in a private temp file).

    UserError when make -n fails or lists no object.
    """
    argv = deps.dry_run_argv(s.ksrc, s.make_vars)
    if s.verbose:
        echo(argv)
    # make -n exits 2 at the vmlinux link (vmlinux.a was never made): expected.
    with tempfile.TemporaryDirectory(prefix="ksplice-dryrun-", dir=s.layout.root) as tmp:
        out = Path(tmp) / "make-n.txt"
        with open(out, "wb") as f, spawn(argv, stdout=f, stderr=subprocess.PIPE) as res:
            _, stderr = res.communicate()
        text = out.read_text(errors="replace")
    units = deps.parse_dry_run(text, str(s.ksrc))
    # make -n lists only objects out of date: add those built before (a rerun).
    for _rel, entry in snapshot.walk(s.ksrc, s.excluded):
        if cmdfile.is_object_cmd(entry.name):
            cmd = cmdfile.parse(Path(entry.path).read_bytes())
            if cmd.command and cmd.object and cmd.object not in units:
                units.update(deps.parse_dry_run(cmd.command, str(s.ksrc)))
    if not units:
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise UserError(f"make -n listed no object to build in {s.ksrc} "
                        f"(exit {res.returncode}): {' / '.join(tail)}")
    return units


def load_inventory(layout: StateLayout
                   ) -> tuple[dict[str, deps.CompileUnit], deps.IncludeScan]:
    """The targeted prebuild's inventory and include index (``layout``: its ORIG_CONFIG's
    state, ``Settings.layout``); UserError when unreadable."""
    try:
        units = deps.units_from_record(artifacts.INVENTORY.read(layout.inventory))
        scan = deps.scan_from_record(artifacts.INCLUDES.read(layout.includes))
    except (OSError, ValueError) as e:
        raise UserError(f"the targeted prebuild's inventory is unreadable ({e}); run "
                        "ksplice-create --prebuild again") from None
    return units, scan


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
    if s.layout.pre_unfinished.exists():
        return False
    stamp = load_stamp(s)
    try:
        inputs = json.loads(s.layout.pre_inputs.read_text())
    except (OSError, ValueError):
        return False
    if stamp is None or stamp.ksrc != str(s.ksrc) or (s.full and stamp.mode != FULL):
        return False
    if stamp.mode == TARGETED and stamp.index_format != INDEX_FORMAT:
        return False
    return stamp.fingerprint == snapshot.files_fingerprint(s.ksrc, inputs)


def snapshot_post(s: Settings) -> dict:
    """Hard-link the built pre tree into the post dir (seed: rsync --link-dest)."""
    print(f"post tree: snapshot of {s.ksrc} into {s.postdir}", flush=True)
    stats = snapshot.make_post_tree(s.ksrc, s.postdir, s.excluded, verbose=True)
    snapshot.mark_clean(s.layout.post_clean, s.ksrc, s.postdir)
    return {"linked": stats.linked, "copied": stats.copied}
