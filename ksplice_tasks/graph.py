# SPDX-License-Identifier: GPL-2.0-only
"""The doit task graph, shared by `dodo.py` and the `ksplice-create` front end.

Task dicts only: the work lives in the stage modules. Settings come from doit
variables (KSRC=, ORIG=, POSTDIR=, JOBS=, VERBOSE=); the path variables are
persisted next to dodo.py so that a later `doit list` or `doit info` sees the
same graph.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doit import create_after
from doit.exceptions import TaskFailed
from doit.tools import config_changed

from ksplice_tasks.errors import UserError
from ksplice_tasks.files import write_if_changed
from ksplice_tasks.reporter import KspliceReporter
from ksplice_tasks.stages import (
    collect,
    extract,
    kmod,
    modules,
    package,
    patching,
    postbuild,
    prebuild,
)
from ksplice_tasks.stages.inputs import POST_MARKER, Settings, resolve

PERSISTED = ("KSRC", "ORIG", "POSTDIR", "PATCH", "DIFFEXT", "PATCH_OPT")
TREE_VARS = ("KSRC", "ORIG", "POSTDIR")


def guarded(fn: Callable[..., Any], *args: Any,
            cleanup: Callable[[], object] | None = None) -> Any:
    """Run a stage function; a UserError becomes a failure that prints as one line.

    ``cleanup`` runs first on failure (create tasks return the post tree to the
    snapshot), so a refused update leaves nothing half-done behind.
    """
    try:
        result = fn(*args)
    except UserError as e:
        if cleanup is not None:
            try:
                cleanup()
            except OSError as again:
                return TaskFailed(f"{e} (and cleaning up failed: {again})")
        return TaskFailed(str(e))
    return result if isinstance(result, dict) else None


def refuse(message: str) -> TaskFailed:
    return TaskFailed(message)


def load_vars(given: Mapping[str, str], persist: Path | None) -> dict[str, str]:
    """Command-line variables over persisted ones; new path variables are saved."""
    saved: dict[str, str] = {}
    if persist is not None and persist.is_file():
        try:
            saved = json.loads(persist.read_text())
        except ValueError:
            saved = {}
    fresh = {k: v for k, v in given.items() if v is not None}
    # A new tree forgets the old tree's ORIG and POSTDIR; a patch replaces a diffext.
    base = {k: v for k, v in saved.items() if "KSRC" not in fresh or k not in TREE_VARS}
    for a, b in (("PATCH", "DIFFEXT"), ("DIFFEXT", "PATCH")):
        if a in fresh:
            base.pop(b, None)
    merged = {**base, **fresh}
    if persist is not None and any(k in fresh for k in PERSISTED):
        keep = {k: merged[k] for k in PERSISTED if k in merged}
        tmp = persist.with_name(f".{persist.name}.{os.getpid()}")
        tmp.write_text(json.dumps(keep, indent=1) + "\n")
        os.replace(tmp, persist)
    return merged


def settings_from_vars(v: Mapping[str, str]) -> Settings:
    """Validated Settings, or UserError naming what is wrong."""
    if not v.get("KSRC"):
        raise UserError("KSRC is not set: run `doit prebuild KSRC=/path/to/linux [ORIG=DIR]`")
    jobs = v.get("JOBS")
    if jobs is not None and not str(jobs).isdigit():
        raise UserError(f"JOBS must be a number, not {jobs!r}")
    return resolve(
        v["KSRC"],
        orig=v.get("ORIG") or None,
        postdir=v.get("POSTDIR") or None,
        jobs=int(jobs) if jobs else None,
        verbose=str(v.get("VERBOSE", "")).lower() in ("1", "yes", "true", "y"),
        patch=v.get("PATCH") or None,
        diffext=v.get("DIFFEXT") or None,
        patch_opts=[v["PATCH_OPT"]] if v.get("PATCH_OPT") else None,
        outdir=v.get("OUTDIR") or None,
    )


def doit_config(settings: Settings | UserError, reporter: type = KspliceReporter) -> dict:
    """One dep file per ORIG_CONFIG, so each tree's state stays with that tree."""
    cfg: dict[str, Any] = {
        "reporter": reporter,
        "verbosity": 2,
        "backend": "json",
        "default_tasks": ["prebuild"],
    }
    if isinstance(settings, Settings):
        settings.state.mkdir(exist_ok=True)
        cfg["dep_file"] = str(settings.state / "doit-db.json")
    return cfg


DOCS = {
    "pre_config": "Install ORIG_CONFIG's .config in KERNEL_SOURCE, checked against its Kconfig",
    "pre_build": "Pre build of KERNEL_SOURCE with -ffunction-sections -fdata-sections",
    "post_snapshot": "Snapshot the built pre tree into the post dir as hard links",
    "prebuild": "Once per tree: pre build with section flags and a fresh post tree",
    "post_patch": "Reset the post tree to the snapshot and apply the patch to it",
    "post_build": "Rebuild the objects the patch touched in the post tree",
    "objdiff": "Per object: which functions the patch changed (relocation-aware)",
    "extract": "Per object: keep-primary, keep-helper, globalize, sizelist",
    "collect": "Link collection.o.primary and collection.o.helper; gather the tables",
    "tables_asm": "Write the .ksplice.* tables, with System.map candidates, as assembly",
    "tables_obj": "Assemble the tables and link them into the collection objects",
    "modcommon": "Write modcommon.auto.h: the update id and the KASLR anchor's address",
    "kmod_build": "Build the primary and helper modules with Kbuild against the pre tree",
    "rmsyms": "Check that the modules need no unexported symbol from the module loader",
    "tarball": "Pack ksplice-<id>.tar.gz",
    "create_update": "Create an update tarball from PATCH= (or DIFFEXT=)",
}


def _failing(name: str, err: UserError) -> dict:
    return {"basename": name, "doc": DOCS[name], "actions": [(refuse, [str(err)])],
            "verbosity": 2}


def pre_config(s: Settings | UserError) -> dict:
    if isinstance(s, UserError):
        return _failing("pre_config", s)
    return {
        "basename": "pre_config",
        "doc": DOCS["pre_config"],
        "actions": [(guarded, [prebuild.install_config, s])],
        "file_dep": [str(s.orig / ".config")],
        "targets": [str(s.ksrc / ".config")],
        "uptodate": [(_same_bytes, [s.orig / ".config", s.ksrc / ".config"])],
        "verbosity": 2,
    }


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def pre_build(s: Settings | UserError) -> dict:
    if isinstance(s, UserError):
        return _failing("pre_build", s)
    return {
        "basename": "pre_build",
        "doc": DOCS["pre_build"],
        "actions": [(guarded, [prebuild.build_pre, s])],
        "file_dep": [str(s.ksrc / ".config")],
        "targets": [str(s.state / prebuild.PRE_STAMP)],
        "uptodate": [(prebuild.pre_tree_unchanged, [s])],
        "verbosity": 2,
    }


def post_snapshot(s: Settings | UserError) -> dict:
    if isinstance(s, UserError):
        return _failing("post_snapshot", s)
    return {
        "basename": "post_snapshot",
        "doc": DOCS["post_snapshot"],
        "actions": [(guarded, [prebuild.snapshot_post, s])],
        "file_dep": [str(s.state / prebuild.PRE_STAMP)],
        "targets": [str(s.postdir / POST_MARKER)],
        "uptodate": [config_changed(str(s.postdir))],
        "verbosity": 2,
    }


def prebuild_group(s: Settings | UserError) -> dict:
    if isinstance(s, UserError):
        return _failing("prebuild", s)
    return {
        "basename": "prebuild",
        "doc": DOCS["prebuild"],
        "actions": None,
        "task_dep": ["pre_config", "pre_build", "post_snapshot"],
    }


@dataclass(frozen=True)
class CreatePlan:
    """What one create_update run is about: its patch file and its update id."""

    settings: Settings
    patch: Path
    uid: str
    tool: str

    @property
    def work(self) -> Path:
        return self.settings.state / "create"

    @property
    def tarball(self) -> Path:
        return self.settings.outdir / package.tarball_name(self.uid)

    @property
    def kos(self) -> list[Path]:
        return [modules.kmod_dir(self.settings) / n for n in kmod.module_names(self.uid)]


def plan_create(s: Settings | UserError) -> CreatePlan | UserError:
    """Check that a prebuild exists and a patch is given; derive the update id."""
    if isinstance(s, UserError):
        return s
    if not (s.state / prebuild.PRE_STAMP).is_file() or not (s.postdir / POST_MARKER).is_file():
        return UserError(
            f"No prebuild for {s.ksrc}: run `ksplice-create --prebuild --config={s.orig} "
            f"{s.ksrc}` (or `doit prebuild KSRC={s.ksrc} ORIG={s.orig}`) first")
    try:
        if s.diffext is not None:
            patch = s.state / "create" / "diffext.patch"
            write_if_changed(patch, patching.diffext_patch(s, s.diffext))
        elif s.patch is not None:
            patch = s.patch
        else:
            return UserError("no patch: give PATCH=FILE or DIFFEXT=EXT "
                             "(or ksplice-create --patch/--diffext)")
        patching.strip_level(s.patch_opts)
        return CreatePlan(s, patch, package.settings_id(s, patch), tool_stamp())
    except UserError as e:
        return e


def tool_stamp() -> str:
    """A hash of this package's code: a new ksplice-py redoes the work an old one did."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(str(path.relative_to(Path(__file__).parent)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _task(basename: str, p: CreatePlan, action: Callable[..., Any], *args: Any,
          config: str = "", **kw: Any) -> dict:
    # One config_changed per task: doit keeps a single saved value for all of them.
    kw["uptodate"] = [*kw.get("uptodate", []), config_changed({"tool": p.tool, "task": config})]
    reset = functools.partial(patching.reset_post, p.settings)
    return {"basename": basename, "doc": DOCS[basename], "verbosity": 2,
            "actions": [(guarded, [action, *args], {"cleanup": reset})], **kw}


def create_static(p: CreatePlan | UserError) -> list[dict]:
    """The create tasks whose inputs and outputs are known before the post build."""
    names = ("post_patch", "post_build", "tables_asm", "tables_obj", "modcommon",
             "kmod_build", "rmsyms", "tarball")
    if isinstance(p, UserError):
        return [_failing(n, p) for n in names] + [_failing("create_update", p)]
    s, cd = p.settings, collect.collect_dir(p.settings)
    roles = modules.ROLES
    linked = [cd / f"collection.o.{r}.linked" for r in roles]
    return [
        _task("post_patch", p, patching.apply_patch, s, p.patch,
              task_dep=["prebuild"],
              file_dep=[p.patch, s.postdir / POST_MARKER, s.state / prebuild.PRE_STAMP],
              targets=[patching.record_path(s)],
              uptodate=[(patching.patch_is_applied, [s, p.patch])],
              config=" ".join(s.patch_opts)),
        _task("post_build", p, postbuild.build_post, s,
              file_dep=[patching.record_path(s)],
              targets=[p.work / postbuild.RECORD]),
        _task("tables_asm", p, modules.write_tables, s, task_dep=["collect"],
              file_dep=[cd / f"tables.{r}.json" for r in roles] + [s.orig / "System.map"],
              targets=[cd / f"tables.{r}.s" for r in roles]),
        _task("tables_obj", p, modules.assemble_tables, s,
              file_dep=[cd / f"tables.{r}.s" for r in roles]
              + [cd / f"collection.o.{r}" for r in roles],
              targets=linked),
        _task("modcommon", p, modules.write_modcommon, s, p.uid,
              file_dep=[s.orig / "System.map"],
              targets=[modules.kmod_dir(s) / "modcommon.auto.h"],
              config=p.uid),
        _task("kmod_build", p, modules.build, s, p.uid,
              file_dep=[*linked, modules.kmod_dir(s) / "modcommon.auto.h",
                        *kmod.all_kmodsrc_files()],
              targets=p.kos),
        _task("rmsyms", p, modules.rmsyms_check, s, p.uid,
              file_dep=[*p.kos, s.ksrc / "Module.symvers"],
              targets=[cd / "rmsyms.json"]),
        _task("tarball", p, write_tarball, p,
              file_dep=[*p.kos, p.patch, cd / "rmsyms.json"],
              targets=[p.tarball]),
        {"basename": "create_update", "doc": DOCS["create_update"], "actions": None,
         "task_dep": ["tarball"]},
    ]


def _object_source(s: Settings, rel: str) -> str | None:
    cmd = s.postdir / Path(rel).parent / f".{Path(rel).name}.cmd"
    try:
        return postbuild.parse_cmd(cmd.read_bytes())[1]
    except OSError:
        return None


PER_OBJECT = ("objdiff", "extract", "collect")
PER_OBJECT_DOC = "Per changed object: objdiff and extract, then collect (known after post_build)"


def create_objects(p: CreatePlan | UserError) -> list[dict]:
    """objdiff and extract tasks, one per changed object, plus collect (after post_build)."""
    if isinstance(p, UserError):
        return [_failing(n, p) for n in PER_OBJECT]
    s = p.settings
    built = postbuild.load_result(s)
    objects = built.changed if built else []
    chunks = patching.file_chunks(p.patch.read_text(errors="replace"),
                                  patching.strip_level(s.patch_opts))
    tasks = []
    for rel in objects:
        wd = extract.work_dir(s, rel)
        source = _object_source(s, rel)
        chunk = chunks.get(source or "", "")
        tasks.append(_task("objdiff", p, extract.diff_one, s, rel, source, chunk, name=rel,
                           file_dep=[s.ksrc / rel, s.postdir / rel],
                           targets=[wd / extract.DIFF],
                           config=chunk))
        tasks.append(_task("extract", p, extract.extract_one, s, rel, name=rel,
                           file_dep=[wd / extract.DIFF, s.ksrc / rel, s.postdir / rel],
                           targets=[wd / extract.RECORDS]))
    cd = collect.collect_dir(s)
    tasks.append(_task("collect", p, collect.collect, s, objects,
                       file_dep=[extract.work_dir(s, r) / extract.RECORDS for r in objects],
                       targets=[cd / f"collection.o.{r}" for r in modules.ROLES]
                       + [cd / f"tables.{r}.json" for r in modules.ROLES],
                       config=" ".join(objects)))
    return tasks


def write_tarball(p: CreatePlan) -> None:
    s, cd = p.settings, collect.collect_dir(p.settings)
    md = modules.kmod_dir(s)
    sources = [src.name for src in kmod.all_kmodsrc_files()] + ["modcommon.auto.h"]
    debug = [("collect", cd), *((f"kmodsrc/{n}", md / n) for n in sources),
             *((f"objects/{extract.object_key(r)}", extract.work_dir(s, r))
               for r in postbuild.load_result(s).changed),
             ("post-build.json", p.work / postbuild.RECORD)]
    package.pack(p.tarball, p.uid, p.patch, p.kos[0], p.kos[1], debug)
    print(f"Ksplice update tarball written to {p.tarball.name}"
          + (f" (in {p.tarball.parent})" if p.tarball.parent != Path.cwd() else ""), flush=True)


def settings_or_error(v: Mapping[str, str]) -> Settings | UserError:
    try:
        return settings_from_vars(v)
    except UserError as e:
        return e


def namespace(s: Settings | UserError, reporter: type = KspliceReporter) -> dict[str, Any]:
    """The tasks as a module namespace, for doit's ModuleTaskLoader."""
    plan = plan_create(s)
    per_object = create_after(executed="post_build", creates=list(PER_OBJECT))(
        lambda: (yield from create_objects(plan)))
    per_object.__doc__ = PER_OBJECT_DOC
    return {
        "DOIT_CONFIG": doit_config(s, reporter),
        "task_pre_config": lambda: pre_config(s),
        "task_pre_build": lambda: pre_build(s),
        "task_post_snapshot": lambda: post_snapshot(s),
        "task_prebuild": lambda: prebuild_group(s),
        "task_create_update": lambda: (yield from create_static(plan)),
        "task_per_object": per_object,
    }

