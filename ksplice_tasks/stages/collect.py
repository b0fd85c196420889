# SPDX-License-Identifier: GPL-2.0-only
"""Phase 3: the collection links and the tables the modules carry.

The per-object primaries (post code) and helpers (pre code) are linked with
`ld -r` into collection.o.primary and collection.o.helper; the relocation,
size and patch records become `.ksplice.*` tables (see kmodsrc/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ksplice_tasks import artifacts
from ksplice_tasks.artifacts import ObjectRecords
from ksplice_tasks.commands import run
from ksplice_tasks.encode import ksplice_tables as metadata
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import atomic_path, write_atomic
from ksplice_tasks.names import (
    GLOBAL_SUFFIX,
    POST,
    PRE,
    PRIMARY,
    ROLES,
    global_alias,
    kernel_name,
    symbol_label,
    tagged_name,
)
from ksplice_tasks.obj.kernel_sections import is_discarded
from ksplice_tasks.stages.layout import CreateLayout, ObjectPaths

# The JSON form of one module's tables (collect writes it, the module build reads it).
TABLES = artifacts.Codec(metadata.ModuleTables, "module-tables")
def side_of(role: str) -> str:
    """The symbol side a module's code comes from: the primary's is post, the helper's pre."""
    return POST if role == PRIMARY else PRE


def module_tables(records: Sequence[ObjectRecords], role: str) -> metadata.ModuleTables:
    """The tables of one module ('primary' or 'helper') from the per-object records.

    The kernel side's own imports are not among them: the module build adds those.
    """
    side = side_of(role)
    relocs: list[metadata.RelocInput] = []
    sizes: list[metadata.SizeInput] = []
    patches: list[metadata.PatchInput] = []
    sites: list[metadata.SiteInput] = []
    for rec in records:
        if rec.empty:
            continue
        relocs += metadata.relocs_from_records(
            [r for r in getattr(rec, f"{role}_relocs") if not is_discarded(r.section)],
            GLOBAL_SUFFIX, rec.tag)
        for z in getattr(rec, f"{role}_sizes"):
            if is_discarded(z.section):
                continue
            name = kernel_name(z.name, rec.tag, side)
            sizes.append(metadata.SizeInput(name, z.size, global_alias(z.name),
                                            symbol_label(name, rec.tag, z.local)))
        if role != PRIMARY:
            sites += metadata.sites_from_records(
                [z for z in rec.helper_sites if not is_discarded(z.section)], GLOBAL_SUFFIX)
        if role == PRIMARY:
            local = {z.name: z.local for z in rec.primary_sizes}
            for f in patched_functions(rec):
                old = rec.renames.get(f, f)
                patches.append(metadata.PatchInput(
                    old, tagged_name(f, rec.tag, POST, is_global=True),
                    label=symbol_label(old, rec.tag, local[tagged_name(f, rec.tag, POST)])))
    return metadata.ModuleTables(relocs=relocs, sizes=sizes, patches=patches, sites=sites)


def patched_functions(rec: ObjectRecords) -> list[str]:
    """The changed functions that still run: __init/__exit code gets no jump.

    The primary does not carry discarded code at all (extract's
    ``discarded_functions``), so a changed function it lacks is one of them.
    """
    section = {z.name: z.section for z in rec.primary_sizes}
    return [f for f in rec.changed
            if (sec := section.get(tagged_name(f, rec.tag, POST))) is not None
            and not is_discarded(sec)]


def link(objects: Sequence[Path], out: Path, verbose: bool = False) -> Path:
    """ld -r of the per-object results into one collection object."""
    with atomic_path(out) as tmp:
        run(["ld", "-r", "-o", tmp, *objects], verbose=verbose, what="ld -r (collection)")
    return out


def collect(objects: Sequence[ObjectPaths], work: CreateLayout, *,
            verbose: bool = False) -> dict:
    """Link both collections and write both modules' tables (as JSON, for the next tasks).

    ``objects`` are the changed objects' work files (their records, primary
    and helper objects); the results go to ``work.collection(role)`` and
    ``work.tables_json(role)``. Returns the patched and new function names.
    UserError when nothing is left to patch.
    """
    records = [artifacts.RECORDS.read(o.records) for o in objects]
    live = [(o, r) for o, r in zip(objects, records, strict=True) if not r.empty]
    if not live:
        raise UserError("Aborting: No changes detected (only __LINE__ constants changed)")
    for role in ROLES:
        link([o.module_object(role) for o, _ in live], work.collection(role), verbose)
        tables = module_tables([r for _, r in live], role)
        write_atomic(work.tables_json(role), TABLES.dumps(tables))
    live_records = [r for _, r in live]
    changed = sorted({f for r in live_records for f in patched_functions(r)})
    skipped = sorted({f for r in live_records for f in r.changed} - set(changed))
    if skipped:
        print(f"collect: ignoring changes to code that has already run and been freed "
              f"(__init/__exit): {', '.join(skipped)}", flush=True)
    if not changed:
        raise UserError("Aborting: No changes detected (only __init/__exit code changed)")
    new = sorted({f for r in live_records for f in r.new})
    print(f"collect: {len(live)} object(s), {len(changed)} function(s) to patch "
          f"({', '.join(changed)}), {len(new)} new", flush=True)
    return {"changed": changed, "new": new}
