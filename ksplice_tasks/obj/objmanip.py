"""The per-object passes of ksplice-create, each ``object -> (object, records)``.

* :func:`keep_primary` - the changed post functions, the read-only data they
  use and the kernel-table entries about them; names uniquified; relocations
  that point outside what is kept are stripped and returned as records.
* :func:`keep_helper` - all pre text, every relocation stripped and returned,
  for run-pre matching against the running kernel.
* :func:`globalize` - global ``<name>_global`` aliases of the kept symbols.
* :func:`sizelist` - name and size of every function.
* :func:`rmsyms` - strip relocations against given symbols from a built .ko.

Records are plain data (:class:`RelocRecord`, :class:`SizeRecord`), never text
to parse again.  Objects are written with :mod:`elfwrite`.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from ksplice_tasks.artifacts import RelocRecord, SizeRecord
from ksplice_tasks.errors import UserError
from ksplice_tasks.obj.elfread import (
    SHF_GROUP,
    SHF_LINK_ORDER,
    SHN_ABS,
    SHN_UNDEF,
    SHT_GROUP,
    SIGNED_RELOCS,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    ElfFormatError,
    ElfObject,
    Reloc,
    Section,
    Symbol,
    read_object,
    reloc_info,
)
from ksplice_tasks.obj.elfwrite import write_object
from ksplice_tasks.obj.objdiff import ObjectView, is_special


class ObjmanipError(UserError):
    """A pass was asked for something the object does not have."""


# Kernel tables made of fixed-size entries, each about one spot of code.
# keep_primary keeps the entries that refer to kept code.
TABLE_ENTRY_SIZES = {
    "__bug_table": 12, "__ex_table": 12, ".altinstructions": 12, "__jump_table": 16,
    ".static_call_sites": 8, ".retpoline_sites": 4, ".return_sites": 4, ".call_sites": 4,
    ".ibt_endbr_seal": 4, "__mcount_loc": 8, ".smp_locks": 4, ".orc_unwind_ip": 4,
}
_PARALLEL = {".orc_unwind_ip": (".orc_unwind", 6)}


def uniquify(name: str, tag: str, suffix: str) -> str:
    """``foo`` -> ``foo____<objid>_<kid>_post`` (tag is ``____<objid>_<kid>``)."""
    return f"{name}{tag}{suffix}"


def _record(view: ObjectView, sec: Section, r: Reloc, out_section: str, function: str,
            renames: Mapping[str, str]) -> RelocRecord:
    kind, what, off = view.target(sec, r)
    s = view.obj.symbols[r.sym]
    if kind in ("undef", "abs"):
        name, addend = s.name, r.addend
    elif kind == "item":
        name, addend = what.name, off  # type: ignore[union-attr]
        name = renames.get(name, name)
    elif kind in ("str", "cst"):
        name, addend = what.name, off  # type: ignore[union-attr]
    else:
        tsec = view.obj.sections.get(s.shndx)
        name = s.name if s.type != STT_SECTION or tsec is None else tsec.name
        addend = r.addend + (s.value if s.type == STT_SECTION else 0)
    _n, size, pcrel = reloc_info(r.type)
    return RelocRecord(name, out_section, r.offset, pcrel, addend, size, r.type,
                       r.type in SIGNED_RELOCS, function)


def _function_at(view: ObjectView, shndx: int, off: int) -> str:
    it = view.covering(shndx, off)
    return it.name if it is not None and it.kind in ("func", "cold") else ""


def _assemble(obj: ElfObject, keep: Sequence[int], section_names: Mapping[int, str],
              section_data: Mapping[int, tuple[bytes, int]], relocs: Mapping[int, list[Reloc]],
              sym_names: Mapping[int, str]) -> ElfObject:
    """A new object holding ``keep`` (input indices) and the symbols they need.

    ``relocs`` hold input symbol indices; unreferenced undefined symbols and
    symbols of dropped sections are left out.
    """
    keepset = set(keep)
    sections: dict[int, Section] = {}
    for i in keep:
        sec = obj.sections[i]
        data, size = section_data.get(i, (sec.data, sec.size))
        flags = sec.flags
        if flags & SHF_GROUP and not any(
                s.type == SHT_GROUP and i in _group_members(s) for s in obj.sections.values()
                if s.index in keepset):
            flags &= ~SHF_GROUP
        sections[i] = replace(sec, name=section_names.get(i, sec.name), data=data, size=size,
                              flags=flags)
    used = {r.sym for rl in relocs.values() for r in rl}
    used |= {s.info for s in sections.values() if s.type == SHT_GROUP}
    symmap: dict[int, int] = {0: 0}
    symbols: list[Symbol] = [obj.symbols[0]]
    for i, s in enumerate(obj.symbols):
        if i == 0:
            continue
        if s.in_section and s.shndx not in keepset:
            continue
        if s.shndx == SHN_UNDEF and i not in used:
            continue
        if s.type == STT_FILE or s.in_section or s.shndx == SHN_ABS or i in used:
            symmap[i] = len(symbols)
            symbols.append(replace(s, name=sym_names.get(i, s.name)))
    out_relocs = {}
    for k, rl in relocs.items():
        if k in keepset and rl:
            out_relocs[k] = [replace(r, sym=symmap[r.sym]) for r in rl]
    for k, sec in sections.items():
        if sec.type == SHT_GROUP:
            sections[k] = replace(sec, info=symmap[sec.info])
    return ElfObject(obj.path, dict(obj.header), sections, symbols, out_relocs)


def _group_members(sec: Section) -> list[int]:
    return [m for (m,) in struct.iter_unpack("<I", sec.data[4:])]


def _rename_symbols(obj: ElfObject, keep: Collection[int], tag: str,
                    suffix: str) -> dict[int, str]:
    out = {}
    for i, s in enumerate(obj.symbols):
        if (s.in_section and s.shndx in keep and s.name and s.type != STT_SECTION
                and not is_special(obj.sections[s.shndx].name)):
            out[i] = uniquify(s.name, tag, suffix)
    return out


def _filter_table(view: ObjectView, sec: Section, entry: int, kept: set[int],
                  keep_target: set[int]) -> tuple[list[int], list[Reloc]] | None:
    """Entries (by index) of a table that refer to kept code, and their relocs.

    An entry is kept when one of its relocations points into kept code and
    every other one points at something the output can still refer to (kept
    sections, string constants, undefined symbols).  ``keep_target`` collects
    sections (such as string sections) the kept entries need.
    """
    if sec.size % entry:
        return None
    by_entry: dict[int, list[Reloc]] = {}
    for r in view.obj.relocs.get(sec.index, []):
        by_entry.setdefault(r.offset // entry, []).append(r)
    keep_idx = []
    for idx, rl in sorted(by_entry.items()):
        hits, ok, need = False, True, set()
        for r in rl:
            s = view.obj.symbols[r.sym]
            if s.shndx == SHN_UNDEF or s.shndx == SHN_ABS:
                continue
            tsec = view.obj.sections.get(s.shndx)
            if tsec is None:
                ok = False
            elif s.shndx in kept:
                hits = hits or tsec.is_exec
            elif not tsec.is_write and not tsec.is_exec and tsec.is_alloc:
                need.add(s.shndx)  # e.g. the file name string of a bug entry
            elif tsec.name == ".altinstr_replacement":
                need.add(s.shndx)
            else:
                ok = False
        if hits and ok:
            keep_idx.append(idx)
            keep_target |= need
    relocs = []
    new_pos = {idx: n for n, idx in enumerate(keep_idx)}
    for idx in keep_idx:
        for r in by_entry[idx]:
            relocs.append(replace(r, offset=new_pos[idx] * entry + r.offset % entry))
    return keep_idx, relocs


def keep_primary(obj: ElfObject, functions: Iterable[str], tag: str, suffix: str = "_post",
                 renames: Mapping[str, str] | None = None,
                 new_data: Iterable[str] = ()) -> tuple[ElfObject, list[RelocRecord]]:
    """Keep ``functions`` (changed and new) of a post object for the primary module.

    Kept: every part of each function (``.cold`` included), the read-only
    sections they reference (strings, constants, jump tables; copied, renamed),
    the sections of ``new_data``, and the entries of the kernel tables in
    ``TABLE_ENTRY_SIZES`` (plus per-function ``__patchable_function_entries``)
    that describe kept code.  Relocations from kept code to anything not kept -
    other functions, existing data, undefined symbols - are stripped and
    returned; ``renames`` (post -> pre, from objdiff) makes them name what the
    running kernel calls those symbols.  Relocations inside kept tables are kept
    as they are, because the module loader consumes those tables before the
    ksplice core could resolve anything; table entries that would need a
    stripped relocation are dropped.  Other metadata (``.discard.*``, notes,
    ``.eh_frame``, debug info, ``__ksymtab``...) is dropped.
    """
    renames = dict(renames or {})
    view = ObjectView(obj)
    wanted = list(dict.fromkeys(functions))
    kept: set[int] = set()
    for name in wanted:
        if name not in view.funcs:
            raise ObjmanipError(f"{obj.path}: no function {name!r}")
        kept |= {p.shndx for p in view.funcs[name]}
    data_names = set(new_data)
    for it in view.items:
        if it.kind in ("data", "section") and it.name in data_names:
            kept.add(it.shndx)
    # Closure over read-only data referenced from kept sections.
    todo = list(kept)
    while todo:
        i = todo.pop()
        for r in obj.relocs.get(i, []):
            s = obj.symbols[r.sym]
            if not s.in_section or s.shndx in kept:
                continue
            tsec = obj.sections.get(s.shndx)
            if tsec is None or is_special(tsec.name) or not tsec.is_alloc:
                continue
            if not tsec.is_exec and not tsec.is_write:
                kept.add(s.shndx)
                todo.append(s.shndx)
    # Kernel tables about kept code.
    section_data: dict[int, tuple[bytes, int]] = {}
    relocs: dict[int, list[Reloc]] = {}
    extra: set[int] = set()
    tables: list[int] = []
    for sec in obj.sections.values():
        if sec.name in TABLE_ENTRY_SIZES:
            res = _filter_table(view, sec, TABLE_ENTRY_SIZES[sec.name], kept, extra)
            if not res or not res[0]:
                continue
            idx, rl = res
            size = TABLE_ENTRY_SIZES[sec.name]
            section_data[sec.index] = (b"".join(sec.data[i * size:(i + 1) * size]
                                                for i in idx), len(idx) * size)
            relocs[sec.index] = rl
            tables.append(sec.index)
            if sec.name in _PARALLEL:
                pname, psize = _PARALLEL[sec.name]
                for p in obj.sections_named(pname):
                    section_data[p.index] = (b"".join(p.data[i * psize:(i + 1) * psize]
                                                      for i in idx), len(idx) * psize)
                    tables.append(p.index)
        elif (sec.flags & SHF_LINK_ORDER and sec.link in kept
              and sec.name == "__patchable_function_entries"):
            tables.append(sec.index)
            relocs[sec.index] = list(obj.relocs.get(sec.index, []))
    for i in extra:
        if i not in kept:
            kept.add(i)
            if obj.sections[i].name == ".altinstr_replacement":
                tables.append(i)
    keep_order = [i for i in obj.sections if i in kept or i in tables
                  or obj.sections[i].name == ".note.GNU-stack"]
    keepset = set(keep_order)
    names = {i: uniquify(obj.sections[i].name, tag, suffix) for i in kept
             if not is_special(obj.sections[i].name)}
    records: list[RelocRecord] = []
    for i in kept:
        if i in relocs:
            continue
        sec = obj.sections[i]
        out: list[Reloc] = []
        special = is_special(sec.name)
        for r in obj.relocs.get(i, []):
            s = obj.symbols[r.sym]
            if (s.in_section and s.shndx in keepset) or s.shndx == SHN_ABS or (
                    special and s.shndx == SHN_UNDEF):
                out.append(r)
                continue
            fn = _function_at(view, i, r.offset)
            records.append(_record(view, sec, r, names.get(i, sec.name),
                                   uniquify(fn, tag, suffix) if fn else "", renames))
        relocs[i] = out
    symnames = _rename_symbols(obj, kept, tag, suffix)
    return _assemble(obj, keep_order, names, section_data, relocs, symnames), records


def keep_helper(obj: ElfObject, tag: str, suffix: str = "_pre") -> tuple[ElfObject,
                                                                         list[RelocRecord]]:
    """Keep all code of a pre object, every relocation stripped and returned.

    The helper module only compares this code with the running kernel's, so
    nothing but the text sections is kept; each stripped relocation tells the
    kernel side where the running code holds an address and of what.
    """
    view = ObjectView(obj)
    keep = [i for i, s in obj.sections.items()
            if s.is_exec and s.is_alloc and not is_special(s.name)]
    names = {i: uniquify(obj.sections[i].name, tag, suffix) for i in keep}
    records = []
    for i in keep:
        sec = obj.sections[i]
        for r in obj.relocs.get(i, []):
            fn = _function_at(view, i, r.offset)
            records.append(_record(view, sec, r, names[i],
                                   uniquify(fn, tag, suffix) if fn else "", {}))
    keep_order = keep + [i for i, s in obj.sections.items() if s.name == ".note.GNU-stack"]
    out = _assemble(obj, keep_order, names, {}, {}, _rename_symbols(obj, keep, tag, suffix))
    return out, records


def globalize(obj: ElfObject, marker: str) -> tuple[ElfObject, list[str]]:
    """Add a global ``<name>_global`` alias of every symbol whose name ends in ``marker``.

    Section symbols count under their section's name.  The collection link and
    the ``.ksplice.*`` tables refer to kept code through these aliases, so the
    originals keep their binding (static functions stay static).
    """
    added: list[str] = []
    symbols = list(obj.symbols)
    have = {s.name for s in symbols}
    for s in obj.symbols:
        if not s.in_section:
            continue
        name = obj.sections[s.shndx].name if s.type == STT_SECTION else s.name
        if not name.endswith(marker) or name + "_global" in have:
            continue
        typ = s.type if s.type in (STT_FUNC, STT_OBJECT) else STT_NOTYPE
        size = obj.sections[s.shndx].size if s.type == STT_SECTION else s.size
        alias = Symbol(name + "_global", s.value, size, typ, STB_GLOBAL, 0, s.shndx)
        symbols.append(alias)
        have.add(alias.name)
        added.append(alias.name)
    # Every kept section gets its anchor, even when GCC emitted no section symbol
    # for it (no relocation pointed there): the relocation tables are relative to it.
    for idx, sec in obj.sections.items():
        alias_name = sec.name + "_global"
        if sec.name.endswith(marker) and alias_name not in have:
            symbols.append(Symbol(alias_name, 0, sec.size, STT_NOTYPE, STB_GLOBAL, 0, idx))
            have.add(alias_name)
            added.append(alias_name)
    return replace(obj, symbols=symbols), added


def sizelist(obj: ElfObject) -> tuple[ElfObject, list[SizeRecord]]:
    """Name, size and section of every defined function (aliases left out)."""
    names = {s.name for s in obj.symbols}
    out = []
    for s in obj.symbols:
        if s.type != STT_FUNC or not s.in_section:
            continue
        if s.name.endswith("_global") and s.name[:-7] in names:
            continue
        out.append(SizeRecord(s.name, s.size, obj.sections[s.shndx].name))
    return obj, out


def rmsyms(obj: ElfObject, names: Iterable[str]) -> tuple[ElfObject, list[RelocRecord]]:
    """Strip relocations against ``names`` (e.g. unexported kernel symbols) from a .ko.

    The module then loads without the kernel resolving those names; the ksplice
    core resolves the returned records itself.  Undefined symbols no longer
    referenced leave the symbol table, since the module loader would try to
    resolve every undefined symbol that is listed.
    """
    wanted = set(names)
    view = ObjectView(obj)
    relocs: dict[int, list[Reloc]] = {}
    records: list[RelocRecord] = []
    for i, rl in obj.relocs.items():
        sec = obj.sections.get(i)
        keep = []
        for r in rl:
            s = obj.symbols[r.sym]
            if s.name in wanted and s.type != STT_SECTION and sec is not None:
                records.append(_record(view, sec, r, sec.name, _function_at(view, i, r.offset),
                                       {}))
            else:
                keep.append(r)
        relocs[i] = keep
    used = {r.sym for rl in relocs.values() for r in rl}
    drop = {i for i, s in enumerate(obj.symbols)
            if s.shndx == SHN_UNDEF and s.name in wanted and i not in used}
    symbols = [s for i, s in enumerate(obj.symbols) if i not in drop]
    remap, n = {}, 0
    for i in range(len(obj.symbols)):
        if i not in drop:
            remap[i] = n
            n += 1
    relocs = {k: [replace(r, sym=remap[r.sym]) for r in v] for k, v in relocs.items()}
    sections = {k: (replace(s, info=remap[s.info]) if s.type == SHT_GROUP else s)
                for k, s in obj.sections.items()}
    return replace(obj, symbols=symbols, relocs=relocs, sections=sections), records


def restore_relocs(obj: ElfObject, records: Iterable[RelocRecord]) -> ElfObject:
    """Put stripped relocations back, against undefined symbols of the recorded names.

    The inverse of the strip in the passes, for tests and debugging: linking
    the result against the "running kernel" checks that the records are exact.
    """
    symbols = list(obj.symbols)
    index = {s.name: i for i, s in enumerate(symbols) if s.bind != STB_LOCAL}
    by_name = {s.name: k for k, s in obj.sections.items()}
    relocs = {k: list(v) for k, v in obj.relocs.items()}
    for rec in records:
        if rec.section not in by_name:
            raise ObjmanipError(f"no section {rec.section!r} for a relocation record")
        if rec.symbol not in index:
            index[rec.symbol] = len(symbols)
            symbols.append(Symbol(rec.symbol, 0, 0, STT_NOTYPE, STB_GLOBAL, 0, SHN_UNDEF))
        relocs.setdefault(by_name[rec.section], []).append(
            Reloc(rec.offset, rec.type, index[rec.symbol], rec.addend))
    for rl in relocs.values():
        rl.sort(key=lambda r: r.offset)
    return replace(obj, symbols=symbols, relocs=relocs)


# -- console command ----------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``ksplice-objmanip IN OUT MODE ...``: run one pass, print its records as JSON lines."""
    ap = argparse.ArgumentParser(prog="ksplice-objmanip",
                                 description="Run one ksplice object pass (for debugging).")
    ap.add_argument("input")
    ap.add_argument("output", help="object to write ('-' to write nothing)")
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("keep-primary")
    p.add_argument("tag")
    p.add_argument("suffix")
    p.add_argument("functions", nargs="+")
    p = sub.add_parser("keep-helper")
    p.add_argument("tag")
    p.add_argument("suffix")
    p = sub.add_parser("globalize")
    p.add_argument("marker")
    sub.add_parser("sizelist")
    p = sub.add_parser("rmsyms")
    p.add_argument("symbols", nargs="+")
    args = ap.parse_args(argv)
    try:
        obj = read_object(args.input)
        if args.mode == "keep-primary":
            out, recs = keep_primary(obj, args.functions, args.tag, args.suffix)
        elif args.mode == "keep-helper":
            out, recs = keep_helper(obj, args.tag, args.suffix)
        elif args.mode == "globalize":
            out, recs = globalize(obj, args.marker)
        elif args.mode == "sizelist":
            out, recs = sizelist(obj)
        else:
            out, recs = rmsyms(obj, args.symbols)
        if args.output != "-":
            write_object(out, Path(args.output))
    except (ObjmanipError, ElfFormatError, OSError) as exc:
        print(f"ksplice-objmanip: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    for rec in recs:
        print(json.dumps(rec if isinstance(rec, str) else asdict(rec)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = [
    "RelocRecord", "SizeRecord", "ObjmanipError", "keep_primary", "keep_helper", "globalize",
    "sizelist", "rmsyms", "restore_relocs", "uniquify", "TABLE_ENTRY_SIZES",
]
