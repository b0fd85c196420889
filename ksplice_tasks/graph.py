# SPDX-License-Identifier: GPL-2.0-only
"""The doit task graph, shared by `dodo.py` and the `ksplice-create` front end.

Task dicts only: the work lives in the stage modules. Settings come from doit
variables (KSRC=, ORIG=, POSTDIR=, JOBS=, VERBOSE=); the path variables are
persisted next to dodo.py so that a later `doit list` or `doit info` sees the
same graph.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from . import prebuild
from .errors import UserError
from .inputs import POST_MARKER, Settings, resolve
from .reporter import KspliceReporter

PERSISTED = ("KSRC", "ORIG", "POSTDIR")


def guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a stage function; a UserError becomes a failure that prints as one line."""
    try:
        result = fn(*args)
    except UserError as e:
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
    # A new tree forgets the old tree's ORIG and POSTDIR.
    merged = {**({} if "KSRC" in fresh else saved), **fresh}
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


def settings_or_error(v: Mapping[str, str]) -> Settings | UserError:
    try:
        return settings_from_vars(v)
    except UserError as e:
        return e


def namespace(s: Settings | UserError, reporter: type = KspliceReporter) -> dict[str, Any]:
    """The tasks as a module namespace, for doit's ModuleTaskLoader."""
    return {
        "DOIT_CONFIG": doit_config(s, reporter),
        "task_pre_config": lambda: pre_config(s),
        "task_pre_build": lambda: pre_build(s),
        "task_post_snapshot": lambda: post_snapshot(s),
        "task_prebuild": lambda: prebuild_group(s),
    }

