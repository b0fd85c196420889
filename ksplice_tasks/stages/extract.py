# SPDX-License-Identifier: GPL-2.0-only
"""Phases 1c and 2, one object at a time: objdiff, then the keep/globalize/sizelist passes.

Each function here is the action of one per-object doit task, so editing a
patch redoes only the objects whose bytes (or whose own hunks) changed. The
symbol tag is derived from the object's path, not from the update id, for
the same reason: a new id must not invalidate untouched objects.

Both take the pre and post object files and an
:class:`~ksplice_tasks.stages.layout.ObjectPaths` for their results
explicitly, so a test can run them on objects it compiled itself.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from ksplice_tasks import artifacts
from ksplice_tasks.artifacts import DiffRecord, ObjectRecords
from ksplice_tasks.files import file_sha256, write_atomic
from ksplice_tasks.names import POST, PRE, object_tag, side_suffix, symbol_suffix, tag_infix
from ksplice_tasks.obj import objdiff, objmanip
from ksplice_tasks.obj.elfread import STB_WEAK, STT_FUNC, ElfObject, read_object
from ksplice_tasks.obj.elfwrite import write_object
from ksplice_tasks.obj.kernel_sections import LOADER_SYMBOLS, is_discarded
from ksplice_tasks.stages.layout import ObjectPaths


def diff_object(pre: Path, post: Path, rel: str, out: ObjectPaths, source: str | None,
                patch_text: str, *, verbose: bool = False) -> DiffRecord:
    """objdiff of one object; the patch's own hunks tell __LINE__-only changes apart.

    ``rel`` is the object's tree-relative path, ``source`` its source file
    (``patch_text`` is that file's part of the patch). Writes and returns
    ``out.diff``. Raises what objdiff raises for objects it refuses.
    """
    line_map = objdiff.line_map_from_patch(patch_text, source) if source else None
    d = objdiff.diff_objects(pre, post, line_map)
    record = DiffRecord(pre=rel, post=rel, source=source, changed=list(d.changed),
                        new=list(d.new), removed=list(d.removed),
                        line_only=list(d.line_only), sections=list(d.sections),
                        section_indices=list(d.section_indices), new_data=list(d.new_data),
                        renames=dict(d.renames), keep=list(d.keep), empty=d.is_empty)
    write_atomic(out.diff, artifacts.DIFF.dumps(record))
    if verbose or d.line_only:
        print(f"objdiff {rel}: changed {d.changed} new {d.new} line-only {d.line_only}",
              flush=True)
    return record


def weak_functions(obj: ElfObject) -> dict[str, str]:
    """Weak functions (name -> section): the running kernel may hold another definition.

    A __weak default that another file overrides is linked in but nameless;
    System.map's address under its name is the overriding function's, so
    run-pre matching must not compare the two. They are left out of it.
    """
    return {sym.name: obj.sections[sym.shndx].name for sym in obj.symbols
            if sym.bind == STB_WEAK and sym.type == STT_FUNC and sym.in_section}


def discarded_functions(obj: ElfObject, names: Collection[str]) -> set[str]:
    """Those of ``names`` whose code the running kernel freed after boot (or never kept).

    Their main part is in an ``.init.*``/``.exit.*`` section
    (:func:`~ksplice_tasks.obj.kernel_sections.is_discarded`): nothing calls
    them any more and the update cannot patch them, so the primary carries
    none of them, nor their kernel-table entries.
    """
    want = set(names)
    return {s.name for s in obj.symbols
            if s.name in want and s.type == STT_FUNC and s.in_section
            and is_discarded(obj.sections[s.shndx].name)}


def extract_object(pre: Path, post: Path, rel: str, out: ObjectPaths,
                   loader_symbols: Collection[str] = LOADER_SYMBOLS) -> ObjectRecords:
    """keep-primary + globalize on the post object, keep-helper + globalize on the pre.

    Changed or new functions in discarded code (:func:`discarded_functions`)
    are left out of the primary.  Reads ``out.diff`` (from
    :func:`diff_object`); writes ``out.primary``,
    ``out.helper`` and the ``out.records`` it returns. Relocations against
    ``loader_symbols`` stay in the primary for the module loader (see
    :data:`ksplice_tasks.obj.kernel_sections.LOADER_SYMBOLS`); every other
    stripped relocation becomes a record the module resolves itself.
    """
    d = artifacts.DIFF.read(out.diff)
    tag = object_tag(rel)
    record = ObjectRecords(object=rel, tag=tag, changed=d.changed, new=d.new,
                           renames=d.renames, empty=d.empty)
    if not d.empty:
        post_obj = read_object(post)
        dropped = discarded_functions(post_obj, d.keep)
        prim, prim_relocs = objmanip.keep_primary(
            post_obj, [f for f in d.keep if f not in dropped], tag_infix(tag),
            side_suffix(POST), d.renames, d.new_data)
        for_loader = [r for r in prim_relocs if r.symbol in loader_symbols]
        prim = objmanip.restore_relocs(prim, for_loader)
        prim_relocs = [r for r in prim_relocs if r.symbol not in loader_symbols]
        prim, _ = objmanip.globalize(prim, symbol_suffix(tag, POST))
        pre_obj = read_object(pre)
        helper, helper_relocs = objmanip.keep_helper(pre_obj, tag_infix(tag), side_suffix(PRE))
        helper_sites = objmanip.helper_sites(pre_obj, tag_infix(tag), side_suffix(PRE))
        helper, _ = objmanip.globalize(helper, symbol_suffix(tag, PRE))
        weak = weak_functions(helper)
        write_object(prim, out.primary)
        write_object(helper, out.helper)
        record = ObjectRecords(
            object=rel, tag=tag, changed=d.changed, new=d.new, renames=d.renames,
            empty=False,
            primary_relocs=list(prim_relocs),
            helper_relocs=[r for r in helper_relocs if r.section not in weak.values()],
            primary_sizes=list(objmanip.sizelist(prim)[1]),
            helper_sizes=[r for r in objmanip.sizelist(helper)[1] if r.name not in weak],
            helper_sites=[z for z in helper_sites if z.section not in weak.values()],
            primary_sha256=file_sha256(out.primary),
            helper_sha256=file_sha256(out.helper),
        )
    write_atomic(out.records, artifacts.RECORDS.dumps(record))
    return record
