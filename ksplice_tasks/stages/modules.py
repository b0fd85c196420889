# SPDX-License-Identifier: GPL-2.0-only
"""Phase 4: the tables into the collections, modcommon.auto.h, Kbuild, and the rmsyms check.

The modules are built with Kbuild against the pre tree, which has the
running kernel's .config and release, so their vermagic is the running
kernel's.
"""

from __future__ import annotations

import json
from pathlib import Path

from elftools.elf.elffile import ELFFile

from ksplice_tasks.encode import ksplice_tables as metadata
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import copy_atomic, write_json
from ksplice_tasks.stages import kmod
from ksplice_tasks.stages.collect import collect_dir, tables_from_json
from ksplice_tasks.stages.inputs import Settings

ROLES = ("primary", "helper")


def kmod_dir(s: Settings) -> Path:
    return s.state / "create" / "kmod"


def system_map(s: Settings) -> metadata.SystemMap:
    return kmod.read_system_map(s.orig / "System.map")


def write_tables(s: Settings) -> None:
    """The .ksplice.* tables as assembly, one file per module (the seed's save_using_asm)."""
    smap = system_map(s)
    cd = collect_dir(s)
    for role in ROLES:
        tables = tables_from_json(json.loads((cd / f"tables.{role}.json").read_text()))
        kmod.write_tables_asm(cd / f"tables.{role}.s", tables, smap)


def assemble_tables(s: Settings) -> None:
    """Assemble the tables and link them into each collection object."""
    cd = collect_dir(s)
    for role in ROLES:
        obj = kmod.assemble(cd / f"tables.{role}.s", cd / f"tables.{role}.o", verbose=s.verbose)
        out = kmod.link_tables(cd / f"collection.o.{role}", obj,
                               cd / f"collection.o.{role}.linked", verbose=s.verbose)
        tables = tables_from_json(json.loads((cd / f"tables.{role}.json").read_text()))
        kmod.check_linked(out, tables)


def write_modcommon(s: Settings, update_id: str) -> None:
    kmod.write_modcommon(kmod_dir(s) / "modcommon.auto.h", update_id, system_map(s))


def build(s: Settings, update_id: str) -> dict:
    """Kbuild of kmodsrc/ plus the linked collections, against the pre tree."""
    md = kmod_dir(s)
    for src in kmod.all_kmodsrc_files():
        copy_atomic(src, md / src.name)
    cd = collect_dir(s)
    for role in ROLES:
        copy_atomic(cd / f"collection.o.{role}.linked", md / f"collection.o.{role}")
    primary, helper = kmod.build_modules(s.ksrc, md, update_id, jobs=s.jobs, verbose=s.verbose)
    return {"primary": str(primary), "helper": str(helper)}


def exported_symbols(tree: Path) -> set[str]:
    """Names in the pre tree's Module.symvers: what the module loader resolves by itself."""
    out = set()
    for line in (tree / "Module.symvers").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            out.add(parts[1])
    return out


def undefined_symbols(ko: Path) -> set[str]:
    with open(ko, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {sym.name for sym in symtab.iter_symbols()
                if sym.name and sym["st_shndx"] == "SHN_UNDEF"}


def rmsyms_check(s: Settings, update_id: str) -> dict:
    """The seed's rmsyms: no module may need an unexported symbol from the module loader.

    kmodsrc reaches unexported symbols through its imports table, resolved at
    load time like any other, so nothing is left to strip; this proves it.
    """
    exported = exported_symbols(s.ksrc)
    out = {}
    for ko in (kmod_dir(s) / n for n in kmod.module_names(update_id)):
        unexported = sorted(undefined_symbols(ko) - exported)
        if unexported:
            raise UserError(f"{ko.name} needs unexported kernel symbols: "
                            f"{', '.join(unexported[:8])}")
        out[ko.name] = sorted(undefined_symbols(ko))
    write_json(collect_dir(s) / "rmsyms.json", out)
    return {"checked": len(out)}
