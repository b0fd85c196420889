# SPDX-License-Identifier: GPL-2.0-only
"""Phases 1c and 2, one object at a time: objdiff, then the keep/globalize/sizelist passes.

Each function here is the action of one per-object doit task, so editing a
patch redoes only the objects whose bytes (or whose own hunks) changed. The
symbol tag is derived from the object's path, not from the update id, for
the same reason: a new id must not invalidate untouched objects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from ksplice_tasks.files import write_json
from ksplice_tasks.obj import objdiff, objmanip
from ksplice_tasks.obj.elfread import STB_WEAK, STT_FUNC, ElfObject, read_object
from ksplice_tasks.obj.elfwrite import write_object
from ksplice_tasks.stages.inputs import Settings

DIFF = "diff.json"
RECORDS = "records.json"
# Relocations the module loader must resolve itself: ftrace finds its call sites
# in a module through them, and turns them into NOPs when the module loads.
LOADER_SYMBOLS = frozenset({"__fentry__"})


def object_key(rel: str) -> str:
    """A directory name for an object's work files."""
    return rel.replace("/", "__")


def object_tag(rel: str) -> str:
    """The ____<tag> that keeps symbols of different objects apart in one module."""
    return "____" + hashlib.sha256(rel.encode()).hexdigest()[:8]


def work_dir(s: Settings, rel: str) -> Path:
    return s.state / "create" / "objects" / object_key(rel)


def diff_one(s: Settings, rel: str, source: str | None, patch_text: str) -> dict:
    """objdiff of one object; the patch's own hunks tell __LINE__-only changes apart."""
    line_map = objdiff.line_map_from_patch(patch_text, source) if source else None
    d = objdiff.diff_objects(s.ksrc / rel, s.postdir / rel, line_map)
    data = asdict(d)
    data.update(pre=rel, post=rel, source=source)
    write_json(work_dir(s, rel) / DIFF, data)
    if s.verbose or d.line_only:
        print(f"objdiff {rel}: changed {d.changed} new {d.new} line-only {d.line_only}",
              flush=True)
    return {"changed": len(d.changed), "new": len(d.new)}


def load_diff(path: Path) -> objdiff.ObjDiff:
    data = json.loads(path.read_text())
    data.pop("source", None)
    return objdiff.ObjDiff(**data)


def weak_functions(obj: ElfObject) -> dict[str, str]:
    """Weak functions (name -> section): the running kernel may hold another definition.

    A __weak default that another file overrides is linked in but nameless;
    System.map's address under its name is the overriding function's, so
    run-pre matching must not compare the two. They are left out of it.
    """
    return {sym.name: obj.sections[sym.shndx].name for sym in obj.symbols
            if sym.bind == STB_WEAK and sym.type == STT_FUNC and sym.in_section}


def extract_one(s: Settings, rel: str) -> dict:
    """keep-primary + globalize on the post object, keep-helper + globalize on the pre."""
    wd = work_dir(s, rel)
    d = load_diff(wd / DIFF)
    tag = object_tag(rel)
    record: dict = {"object": rel, "tag": tag, "changed": d.changed, "new": d.new,
                    "renames": d.renames, "empty": d.is_empty}
    if not d.is_empty:
        prim, prim_relocs = objmanip.keep_primary(read_object(s.postdir / rel), d.keep, tag,
                                                  "_post", d.renames, d.new_data)
        for_loader = [r for r in prim_relocs if r.symbol in LOADER_SYMBOLS]
        prim = objmanip.restore_relocs(prim, for_loader)
        prim_relocs = [r for r in prim_relocs if r.symbol not in LOADER_SYMBOLS]
        prim, _ = objmanip.globalize(prim, tag + "_post")
        helper, helper_relocs = objmanip.keep_helper(read_object(s.ksrc / rel), tag, "_pre")
        helper, _ = objmanip.globalize(helper, tag + "_pre")
        weak = weak_functions(helper)
        write_object(prim, wd / "primary.o")
        write_object(helper, wd / "helper.o")
        record.update(
            primary_relocs=[asdict(r) for r in prim_relocs],
            helper_relocs=[asdict(r) for r in helper_relocs if r.section not in weak.values()],
            primary_sizes=[asdict(r) for r in objmanip.sizelist(prim)[1]],
            helper_sizes=[asdict(r) for r in objmanip.sizelist(helper)[1]
                          if r.name not in weak],
        )
    write_json(wd / RECORDS, record)
    return {"empty": d.is_empty}
