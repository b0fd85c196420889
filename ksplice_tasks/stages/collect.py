# SPDX-License-Identifier: GPL-2.0-only
"""Phase 3: the collection links and the tables the modules carry.

The per-object primaries (post code) and helpers (pre code) are linked with
`ld -r` into collection.o.primary and collection.o.helper; the relocation,
size and patch records become `.ksplice.*` tables (see kmodsrc/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from ksplice_tasks.artifacts import RelocRecord
from ksplice_tasks.commands import run
from ksplice_tasks.encode import ksplice_tables as metadata
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import write_json
from ksplice_tasks.stages import kmod
from ksplice_tasks.stages.extract import RECORDS, work_dir
from ksplice_tasks.stages.inputs import Settings

GLOBAL = "_global"
# Code the running kernel has freed after boot (or never keeps): nothing to match or patch.
DISCARDED = (".init.", ".exit.")


def discarded(section: str) -> bool:
    return section.startswith(DISCARDED)


def collect_dir(s: Settings) -> Path:
    return s.state / "create" / "collect"


def load_records(s: Settings, objects: Iterable[str]) -> list[dict]:
    return [json.loads((work_dir(s, rel) / RECORDS).read_text()) for rel in objects]


def original_name(name: str, tag: str, suffix: str) -> str:
    """f____tag_post -> f: the name the running kernel knows."""
    marker = tag + suffix
    return name[: -len(marker)] if name.endswith(marker) else name


def module_tables(records: Sequence[dict], role: str) -> metadata.ModuleTables:
    """The tables of one module ('primary' or 'helper') from the per-object records."""
    suffix = "_post" if role == "primary" else "_pre"
    relocs: list[RelocRecord] = []
    sizes: list[metadata.SizeInput] = []
    patches: list[metadata.PatchInput] = []
    for rec in records:
        if rec["empty"]:
            continue
        relocs += [RelocRecord(**r) for r in rec[f"{role}_relocs"]
                   if not discarded(r["section"])]
        sizes += [metadata.SizeInput(original_name(z["name"], rec["tag"], suffix), z["size"],
                                     z["name"] + GLOBAL)
                  for z in rec[f"{role}_sizes"] if not discarded(z["section"])]
        if role == "primary":
            renames = rec.get("renames", {})
            patches += [metadata.PatchInput(renames.get(f, f), f"{f}{rec['tag']}_post{GLOBAL}")
                        for f in patched_functions(rec)]
    tables = metadata.ModuleTables(relocs=metadata.relocs_from_records(relocs, GLOBAL),
                                   sizes=sizes, patches=patches)
    return kmod.with_primary_imports(tables) if role == "primary" else tables


def patched_functions(rec: dict) -> list[str]:
    """The changed functions that still run: __init/__exit code gets no jump."""
    section = {z["name"]: z["section"] for z in rec["primary_sizes"]}
    return [f for f in rec["changed"]
            if not discarded(section.get(f"{f}{rec['tag']}_post", ""))]


def link(objects: Sequence[Path], out: Path, verbose: bool = False) -> Path:
    """ld -r of the per-object results into one collection object."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    run(["ld", "-r", "-o", tmp, *objects], verbose=verbose, what="ld -r (collection)")
    tmp.replace(out)
    return out


def collect(s: Settings, objects: Sequence[str]) -> dict:
    """Link both collections and write both modules' tables (as JSON, for the next tasks)."""
    records = load_records(s, objects)
    live = [r for r in records if not r["empty"]]
    if not live:
        raise UserError("Aborting: No changes detected (only __LINE__ constants changed)")
    cd = collect_dir(s)
    for role in ("primary", "helper"):
        link([work_dir(s, r["object"]) / f"{role}.o" for r in live],
             cd / f"collection.o.{role}", s.verbose)
        tables = module_tables(live, role)
        write_json(cd / f"tables.{role}.json", tables_to_json(tables))
    changed = sorted({f for r in live for f in patched_functions(r)})
    skipped = sorted({f for r in live for f in r["changed"]} - set(changed))
    if skipped:
        print(f"collect: ignoring changes to code that has already run and been freed "
              f"(__init/__exit): {', '.join(skipped)}", flush=True)
    if not changed:
        raise UserError("Aborting: No changes detected (only __init/__exit code changed)")
    new = sorted({f for r in live for f in r["new"]})
    print(f"collect: {len(live)} object(s), {len(changed)} function(s) to patch "
          f"({', '.join(changed)}), {len(new)} new", flush=True)
    return {"changed": changed, "new": new}


def tables_to_json(t: metadata.ModuleTables) -> dict:
    return {k: [asdict(x) for x in getattr(t, k)] for k in ("relocs", "sizes", "patches",
                                                           "imports")}


def tables_from_json(data: dict) -> metadata.ModuleTables:
    return metadata.ModuleTables(
        relocs=[metadata.RelocInput(**x) for x in data["relocs"]],
        sizes=[metadata.SizeInput(**x) for x in data["sizes"]],
        patches=[metadata.PatchInput(**x) for x in data["patches"]],
        imports=[metadata.ImportInput(**x) for x in data["imports"]],
    )
