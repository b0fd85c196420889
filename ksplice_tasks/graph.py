# SPDX-License-Identifier: GPL-2.0-only
"""The doit task graph, shared by `dodo.py` and the `ksplice-create` front end.

Declarations only: task dicts (file_dep, targets, uptodate) around stage
functions, which do the work. Settings come from doit variables (KSRC=,
ORIG=, POSTDIR=, JOBS=, VERBOSE=); the path variables are persisted next to
dodo.py so that a later `doit list` or `doit info` sees the same graph.

Building the graph runs nothing: for ``--diffext`` the patch is made by the
``diffext`` task, and the update id, which depends on the patch, reaches the
tasks that need it when they run (doit ``getargs`` from ``post_patch``);
their files in the state directory are named without it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import signal
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from doit import create_after
from doit.exceptions import TaskFailed
from doit.tools import config_changed

from ksplice_tasks.commands import Interrupted
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import hold_lock, write_atomic
from ksplice_tasks.names import ROLES, tarball_name
from ksplice_tasks.reporter import KspliceReporter
from ksplice_tasks.stages import kmod, package, patching, postbuild, prebuild
from ksplice_tasks.stages.inputs import POST_MARKER, Settings, resolve
from ksplice_tasks.stages.layout import CreateLayout
from ksplice_tasks.tree import cmdfile

PERSISTED = ("KSRC", "ORIG", "POSTDIR", "PATCH", "DIFFEXT", "PATCH_OPT")
TREE_VARS = ("KSRC", "ORIG", "POSTDIR")
VARIABLES = (*PERSISTED, "JOBS", "VERBOSE", "OUTDIR", "FULL")
VARS_FILE = ".ksplice-vars.json"
# The package's rooms whose code makes updates (top-level modules other than
# the front end count as the base room): a change to them redoes old work.
TOOL_ROOMS = ("obj", "tree", "encode", "stages")
FRONT_MODULES = ("graph.py", "cli.py", "reporter.py")
ID_SOURCE = "post_patch"  # the task whose result is {"update_id": ...}


def describe(err: BaseException, name: str = "") -> str:
    """One line naming what went wrong: a UserError's own message, else where and what."""
    if isinstance(err, UserError):
        return str(err)
    where = f"{name} failed: " if name else ""
    if isinstance(err, OSError) and err.strerror:
        files = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        what = f"{err.strerror}: {files}" if files else err.strerror
    else:
        what = f"{type(err).__name__}: {err}"
    return where + " ".join(what.split())


# A task's action is named "<stage module>:<function>", imported when the task
# runs: a rerun with nothing to do never loads the object layer.
Action = Callable[..., Any] | str


def stage_function(ref: Action) -> Callable[..., Any]:
    """The function an action names: ``"extract:diff_object"`` -> ``stages.extract.diff_object``.

    A callable is returned as it is. ImportError or AttributeError for a wrong name.
    """
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(f"ksplice_tasks.stages.{module}"), name)


def guarded(fn: Action, *args: Any,
            cleanup: Callable[[], object] | None = None, label: str = "",
            show_traceback: bool = False, **kwargs: Any) -> Any:
    """Run a stage function ``fn(*args, **kwargs)``; any exception becomes a one-line failure.

    ``fn`` is a callable or a ``"<stage module>:<function>"`` name (:func:`stage_function`).

    ``cleanup`` runs first on failure (create tasks return the post tree to the
    snapshot), so a refused update leaves nothing half-done behind. An
    exception other than UserError is named with the task (``label``) and its
    type; ``show_traceback`` (-v, VERBOSE=1) prints its traceback too. An
    interrupt (:class:`~ksplice_tasks.commands.Interrupted`, or a bare
    KeyboardInterrupt, which becomes one for SIGINT) runs ``cleanup`` and goes on.
    ``kwargs`` include the values doit passes (``getargs``).
    Returns ``fn``'s result when it is a dict (doit keeps it), else None.
    """
    try:
        result = stage_function(fn)(*args, **kwargs)
    except Exception as e:
        message = describe(e, label)
        if not isinstance(e, UserError):
            if show_traceback:
                traceback.print_exc()
            else:
                message += " (-v or VERBOSE=1 shows the traceback)"
        if cleanup is not None:
            try:
                cleanup()
            except Exception as again:
                return TaskFailed(f"{message} (and cleaning up failed: {again})")
        return TaskFailed(message)
    except BaseException as e:
        if cleanup is not None:
            cleanup()
        if isinstance(e, KeyboardInterrupt):  # raised by code, not our SIGINT handler
            raise Interrupted(signal.SIGINT) from None
        raise
    return result if isinstance(result, dict) else None


def refuse(message: str) -> TaskFailed:
    return TaskFailed(message)


def load_vars(given: Mapping[str, str | None], persist: Path | None) -> dict[str, str]:
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
        write_atomic(persist, json.dumps(keep, indent=1) + "\n")
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
        verbose=_truthy(v.get("VERBOSE")),
        patch=v.get("PATCH") or None,
        diffext=v.get("DIFFEXT") or None,
        patch_opts=[v["PATCH_OPT"]] if v.get("PATCH_OPT") else None,
        outdir=v.get("OUTDIR") or None,
        full=_truthy(v.get("FULL")),
    )


def _truthy(value: str | None) -> bool:
    return str(value or "").lower() in ("1", "yes", "true", "y")


def settings_or_error(v: Mapping[str, str]) -> Settings | UserError:
    try:
        return settings_from_vars(v)
    except UserError as e:
        return e


def hold_state_lock(s: Settings | UserError) -> tuple[Settings | UserError, TextIO | None]:
    """Take ORIG_CONFIG's lock (``.ksplice/lock``) for the rest of this process.

    Returns the settings and the open lock file (keep it: closing it, or the
    process ending, releases the lock). When another prebuild or create holds
    it, returns its ``busy: ...`` UserError instead of the settings, so every
    task refuses with it and nothing of that ORIG_CONFIG's state is read or
    written (not even doit's dep file). Settings that are already an error
    pass through.
    """
    if isinstance(s, UserError):
        return s, None
    try:
        return s, hold_lock(s.layout.lock)
    except UserError as e:
        return e, None


def doit_config(settings: Settings | UserError, reporter: type = KspliceReporter) -> dict:
    """One dep file per ORIG_CONFIG, so each tree's state stays with that tree."""
    cfg: dict[str, Any] = {
        "reporter": reporter,
        "verbosity": 2,
        "backend": "json",
        "default_tasks": ["prebuild"],
    }
    if isinstance(settings, Settings):
        settings.layout.root.mkdir(exist_ok=True)
        cfg["dep_file"] = str(settings.layout.doit_db)
    return cfg


DOCS = {
    "pre_config": "Install ORIG_CONFIG's .config in KERNEL_SOURCE, checked against its Kconfig",
    "pre_build": "Pre build of KERNEL_SOURCE with -ffunction-sections -fdata-sections "
                 "(targeted: make prepare and the object inventory; FULL=1: every object)",
    "post_snapshot": "Snapshot the built pre tree into the post dir as hard links",
    "prebuild": "Once per tree: pre build with section flags and a fresh post tree",
    "diffext": "Make the patch from every FILE<ext> beside FILE (DIFFEXT=, --diffext)",
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


def _action(fn: Action, *args: Any, label: str, show_traceback: bool,
            cleanup: Callable[[], object] | None = None,
            fn_kwargs: Mapping[str, Any] | None = None) -> tuple:
    """A doit python-action running ``fn(*args, **fn_kwargs)`` under :func:`guarded`."""
    return (guarded, [fn, *args], {"cleanup": cleanup, "label": label,
                                   "show_traceback": show_traceback, **(fn_kwargs or {})})


def pre_config(s: Settings | UserError) -> dict:
    if isinstance(s, UserError):
        return _failing("pre_config", s)
    return {
        "basename": "pre_config",
        "doc": DOCS["pre_config"],
        "actions": [_action("prebuild:install_config", s, label="pre_config",
                                    show_traceback=s.verbose)],
        "file_dep": [str(s.orig / ".config")],
        "targets": [str(s.ksrc / ".config")],
        "uptodate": [(prebuild.config_installed, [s])],
        "verbosity": 2,
    }


def pre_build(s: Settings | UserError) -> dict:
    if isinstance(s, UserError):
        return _failing("pre_build", s)
    return {
        "basename": "pre_build",
        "doc": DOCS["pre_build"],
        "actions": [_action("prebuild:build_pre", s, label="pre_build",
                                    show_traceback=s.verbose)],
        "file_dep": [str(s.ksrc / ".config")],
        "targets": [str(s.layout.pre_stamp)],
        "uptodate": [(prebuild.pre_tree_unchanged, [s])],
        "verbosity": 2,
    }


def post_snapshot(s: Settings | UserError) -> dict:
    if isinstance(s, UserError):
        return _failing("post_snapshot", s)
    return {
        "basename": "post_snapshot",
        "doc": DOCS["post_snapshot"],
        "actions": [_action("prebuild:snapshot_post", s, label="post_snapshot",
                            show_traceback=s.verbose)],
        "file_dep": [str(s.layout.pre_stamp)],
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
    """What one create_update run is about.

    ``patch`` is the user's patch file, or for ``--diffext`` the file the
    diffext task will write. ``uid`` is the update id when it is known
    before anything runs (a given patch file), else None.
    """

    settings: Settings
    patch: Path
    uid: str | None
    tool: str

    @property
    def work(self) -> CreateLayout:
        return self.settings.layout.create

    @property
    def tarball(self) -> Path | None:
        """The tarball's path, when the id is known before anything runs."""
        return self.settings.outdir / tarball_name(self.uid) if self.uid else None


def plan_create(s: Settings | UserError) -> CreatePlan | UserError:
    """Check that a prebuild exists and a patch is given; nothing is run or written."""
    if isinstance(s, UserError):
        return s
    unfinished = prebuild.unfinished_message(s)
    if unfinished is not None:
        return UserError(unfinished)
    if not s.layout.pre_stamp.is_file() or not (s.postdir / POST_MARKER).is_file():
        return UserError(
            f"No prebuild for {s.ksrc}: run `ksplice-create --prebuild --config={s.orig} "
            f"{s.ksrc}` (or `doit prebuild KSRC={s.ksrc} ORIG={s.orig}`) first")
    if s.diffext is None and s.patch is None:
        return UserError("no patch: give PATCH=FILE or DIFFEXT=EXT "
                         "(or ksplice-create --patch/--diffext)")
    try:
        patching.strip_level(s.patch_opts)
        if s.diffext is not None:
            return CreatePlan(s, s.layout.create.diffext_patch, None, tool_stamp())
        assert s.patch is not None
        return CreatePlan(s, s.patch, package.settings_id(s, s.patch), tool_stamp())
    except UserError as e:
        return e
    except OSError as e:
        return UserError(describe(e, "reading the patch"))


def tool_files() -> list[Path]:
    """The package's files whose code makes updates: base, obj, tree, encode, stages."""
    pkg = Path(__file__).resolve().parent
    files = [p for p in pkg.glob("*.py") if p.name not in FRONT_MODULES]
    files += [p for room in TOOL_ROOMS for p in (pkg / room).rglob("*.py")]
    return sorted(files)


@functools.cache
def tool_stamp() -> str:
    """A hash of the code that makes updates: a new ksplice-py redoes the work an old one did.

    The front end, the target-side commands and the test harness are left out.
    """
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in tool_files():
        h.update(str(path.relative_to(pkg)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _task(basename: str, p: CreatePlan, fn: Action, *args: Any,
          config: str = "", kwargs: Mapping[str, Any] | None = None, **kw: Any) -> dict:
    """A create task: on any failure its action returns the post tree to the snapshot."""
    # One config_changed per task: doit keeps a single saved value for all of them.
    kw["uptodate"] = [*kw.get("uptodate", []), config_changed({"tool": p.tool, "task": config})]
    s = p.settings
    label = f"{basename}:{kw['name']}" if "name" in kw else basename
    action = _action(fn, *args, label=label, show_traceback=s.verbose,
                     cleanup=functools.partial(patching.reset_post, s), fn_kwargs=kwargs)
    return {"basename": basename, "doc": DOCS[basename], "verbosity": 2,
            "actions": [action], **kw}


# Tasks given the update id when they run (it depends on the patch, which for
# --diffext is made by a task).
WITH_ID = {"getargs": {"update_id": (ID_SOURCE, "update_id")}, "task_dep": [ID_SOURCE]}
STATIC = ("diffext", "post_patch", "post_build", "tables_asm", "tables_obj", "modcommon",
          "kmod_build", "rmsyms", "tarball", "create_update")


def create_static(p: CreatePlan | UserError) -> list[dict]:
    """The create tasks whose inputs and outputs are known before the post build."""
    if isinstance(p, UserError):
        return [_failing(n, p) for n in STATIC]
    s, work = p.settings, p.work
    smap = s.map_file
    # ORIG_CONFIG's Module.symvers and kernel.release, when it has them.
    target_files = [f for f in (s.orig / "Module.symvers", s.orig / "kernel.release")
                    if f.is_file()]
    linked = [work.linked(r) for r in ROLES]
    kmodsrc = [str(f) for f in kmod.all_kmodsrc_files()]
    tasks = []
    if s.diffext is not None:
        tasks.append(_task("diffext", p, "patching:write_diffext_patch", s, s.diffext, p.patch,
                           targets=[p.patch],
                           uptodate=[(patching.diffext_is_current, [s, s.diffext, p.patch])],
                           config=s.diffext))
    tasks += [
        _task("post_patch", p, "patching:post_patch", s, p.patch,
              task_dep=["prebuild"],
              file_dep=[p.patch, s.postdir / POST_MARKER, s.layout.pre_stamp,
                        s.orig / ".config", smap],
              targets=[work.post_patch],
              uptodate=[(patching.patch_is_applied, [s, p.patch])],
              config=" ".join(s.patch_opts)),
        _task("post_build", p, "postbuild:build_post", s,
              file_dep=[work.post_patch],
              targets=[work.post_build]),
        _task("tables_asm", p, "kmod:write_tables", work, smap, s.ksrc, task_dep=["collect"],
              file_dep=[work.tables_json(r) for r in ROLES] + [smap, work.post_build],
              targets=[work.tables_asm(r) for r in ROLES]),
        _task("tables_obj", p, "kmod:assemble_tables", work, kwargs={"verbose": s.verbose},
              file_dep=[work.tables_asm(r) for r in ROLES]
              + [work.tables_json(r) for r in ROLES]
              + [work.collection(r) for r in ROLES],
              targets=linked),
        _task("modcommon", p, "kmod:write_modcommon", work, smap, **WITH_ID,
              file_dep=[smap],
              targets=[work.modcommon]),
        _task("kmod_build", p, "kmod:build", work, s.ksrc, **WITH_ID,
              kwargs={"jobs": s.jobs, "verbose": s.verbose, "make_vars": list(s.make_vars),
                      "orig": s.orig},
              file_dep=[*linked, work.modcommon, *kmodsrc, *target_files],
              targets=[work.modules]),
        _task("rmsyms", p, "kmod:rmsyms_check", work, s.ksrc, s.orig,
              file_dep=[work.modules, s.ksrc / "Module.symvers", *target_files],
              targets=[work.rmsyms]),
        _task("tarball", p, "package:write_tarball", s.outdir, work, p.patch,
              [Path(f).name for f in kmodsrc],
              file_dep=[work.modules, p.patch, work.rmsyms, work.post_build],
              targets=[p.tarball] if p.tarball else [],
              uptodate=[(package.tarball_is_written, [s.outdir, work])]),
        {"basename": "create_update", "doc": DOCS["create_update"], "actions": None,
         "task_dep": ["tarball"]},
    ]
    return tasks


PER_OBJECT = ("objdiff", "extract", "collect")
PER_OBJECT_DOC = "Per changed object: objdiff and extract, then collect (known after post_build)"


def _raise(err: Exception) -> None:
    raise err


def create_objects(p: CreatePlan | UserError) -> list[dict]:
    """objdiff and extract tasks, one per changed object, plus collect (after post_build)."""
    if isinstance(p, UserError):
        return [_failing(n, p) for n in PER_OBJECT]
    s, work = p.settings, p.work
    try:
        built = postbuild.load_result(s)
        objects = built.changed if built else []
        chunks = patching.file_chunks(p.patch.read_text(errors="replace"),
                                      patching.strip_level(s.patch_opts))
        sources = {rel: cmdfile.read(s.postdir, rel) for rel in objects}
    except Exception as e:  # reading what the post build left: report it like a task would
        return [_task(n, p, _raise, e) for n in PER_OBJECT]
    tasks = []
    for rel in objects:
        out = work.object(rel)
        pre, post = s.ksrc / rel, s.postdir / rel
        cmd = sources[rel]
        source = cmd.source if cmd else None
        chunk = chunks.get(source or "", "")
        tasks.append(_task("objdiff", p, "extract:diff_object", pre, post, rel, out, source,
                           chunk, kwargs={"verbose": s.verbose}, name=rel,
                           file_dep=[pre, post],
                           targets=[out.diff],
                           config=chunk))
        tasks.append(_task("extract", p, "extract:extract_object", pre, post, rel, out,
                           name=rel,
                           file_dep=[out.diff, pre, post],
                           targets=[out.records]))
    tasks.append(_task("collect", p, "collect:collect", [work.object(r) for r in objects], work,
                       kwargs={"verbose": s.verbose},
                       file_dep=[work.object(r).records for r in objects],
                       targets=[work.collection(r) for r in ROLES]
                       + [work.tables_json(r) for r in ROLES],
                       config=" ".join(objects)))
    return tasks


def namespace(s: Settings | UserError, reporter: type = KspliceReporter) -> dict[str, Any]:
    """The tasks as a module namespace: dodo.py's globals, or doit's ModuleTaskLoader's."""
    plan = plan_create(s)

    def task_per_object():
        yield from create_objects(plan)

    per_object = create_after(executed="post_build", creates=list(PER_OBJECT))(task_per_object)
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
