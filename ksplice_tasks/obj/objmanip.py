"""The per-object passes of ksplice-create, each ``object -> (object, records)``.

* :func:`keep_primary` - the changed post functions, the read-only data they
  use and the kernel-table entries about them; names uniquified; relocations
  that point outside what is kept are stripped and returned as records.
* :func:`keep_helper` - all pre text, every relocation stripped and returned,
  for run-pre matching against the running kernel.
* :func:`helper_sites` - the spots of that text the kernel rewrites at boot
  (return thunks, retpolines, inline static calls, jump labels), from the
  pre object's own tables.
* :func:`globalize` - global ``<name>_global`` aliases of the kept symbols.
* :func:`sizelist` - name and size of every function.
* :func:`rmsyms` - strip relocations against given symbols from a built .ko.

Records are plain data (:class:`RelocRecord`, :class:`SizeRecord`), never text
to parse again.  Objects are written with :mod:`elfwrite`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ksplice_tasks.artifacts import RelocRecord, SiteRecord, SizeRecord
from ksplice_tasks.errors import UserError
from ksplice_tasks.obj.bootpatch import (
    ALT_ORIGINAL,
    ALT_PARAVIRT,
    alternative_sites,
    branch_sites,
    paravirt_sites,
    relaxable_jump,
    smp_lock_sites,
)
from ksplice_tasks.obj.elfread import (
    SHF_GROUP,
    SHF_LINK_ORDER,
    SHN_ABS,
    SHN_UNDEF,
    SHT_GROUP,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    ElfObject,
    Reloc,
    Section,
    Symbol,
    error_line,
    group_members,
    read_object,
    reloc_info,
)
from ksplice_tasks.obj.elfwrite import write_object
from ksplice_tasks.obj.kernel_sections import (
    CARRIED_TABLES,
    PER_FUNCTION_TABLES,
    RETPOLINE_THUNKS,
    Kind,
    Role,
    TableEntry,
    TableLayoutError,
    is_special,
    parallel_size,
    row,
    table_entries,
)
from ksplice_tasks.obj.view import ObjectView


class ObjmanipError(UserError):
    """A pass was asked for something the object does not have."""


def uniquify(name: str, tag: str, suffix: str) -> str:
    """``foo`` -> ``foo____<objid>_<kid>_post`` (tag is ``____<objid>_<kid>``)."""
    return f"{name}{tag}{suffix}"


def _record(view: ObjectView, sec: Section, r: Reloc, out_section: str, function: str,
            renames: Mapping[str, str]) -> RelocRecord:
    kind, what, off = view.target(sec, r)
    s = view.obj.symbols[r.sym]
    if kind in ("undef", "abs"):
        name, addend, local = s.name, r.addend, False
    elif kind == "item":
        name, addend, local = what.name, off, what.local  # type: ignore[union-attr]
        name = renames.get(name, name)
    elif kind in ("str", "cst"):
        name, addend, local = what.name, off, True  # type: ignore[union-attr]
    else:
        tsec = view.obj.sections.get(s.shndx)
        name = s.name if s.type != STT_SECTION or tsec is None else tsec.name
        addend = r.addend + (s.value if s.type == STT_SECTION else 0)
        local = s.bind == STB_LOCAL
    info = reloc_info(r.type)
    return RelocRecord(name, out_section, r.offset, info.pcrel, addend, info.size, r.type,
                       info.signed, function, local)


def _function_at(view: ObjectView, shndx: int, off: int) -> str:
    it = view.covering(shndx, off)
    return it.name if it is not None and it.kind in ("func", "cold") else ""


def _assemble(obj: ElfObject, keep: Sequence[int], section_names: Mapping[int, str],
              section_data: Mapping[int, tuple[bytes, int]], relocs: Mapping[int, list[Reloc]],
              sym_names: Mapping[int, str]) -> ElfObject:
    """A new object holding ``keep`` (input indices) and the symbols they need.

    ``relocs`` hold input symbol indices; unreferenced undefined symbols and
    symbols of dropped sections are left out.  Relocation sections get the
    compiler's names (``.rela<new name>``), since sections may be renamed.
    """
    keepset = set(keep)
    sections: dict[int, Section] = {}
    for i in keep:
        sec = obj.sections[i]
        data, size = section_data.get(i, (sec.data, sec.size))
        flags = sec.flags
        if flags & SHF_GROUP and not any(
                s.type == SHT_GROUP and i in group_members(s) for s in obj.sections.values()
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


def _rename_symbols(obj: ElfObject, keep: Collection[int], tag: str,
                    suffix: str) -> dict[int, str]:
    out = {}
    for i, s in enumerate(obj.symbols):
        if (s.in_section and s.shndx in keep and s.name and s.type != STT_SECTION
                and not is_special(obj.sections[s.shndx].name)):
            out[i] = uniquify(s.name, tag, suffix)
    return out


# -- keep_primary, step by step ---------------------------------------------------

@dataclass
class TableCut:
    """The kernel-table entries keep-primary carries (see :func:`filter_kernel_tables`).

    ``section_data`` maps a table's index to its new (bytes, size);
    ``relocs`` to its kept relocations (offsets in the new bytes);
    ``tables`` lists the table sections kept; ``needed`` the sections kept
    entries point at that must come along (strings, replacement code);
    ``loader_ranges`` the byte ranges (section index -> [start, end)) whose
    relocations the module loader must resolve because it rewrites those
    bytes before the ksplice core could (see :func:`_loader_ranges`).
    """

    section_data: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    relocs: dict[int, list[Reloc]] = field(default_factory=dict)
    tables: list[int] = field(default_factory=list)
    needed: set[int] = field(default_factory=set)
    loader_ranges: dict[int, list[tuple[int, int, str]]] = field(default_factory=dict)


def select_functions(view: ObjectView, functions: Iterable[str],
                     new_data: Iterable[str]) -> set[int]:
    """Sections of every part of ``functions`` and of the ``new_data`` items.

    Raises ObjmanipError for a function the object does not define.
    """
    kept: set[int] = set()
    for name in dict.fromkeys(functions):
        if name not in view.funcs:
            raise ObjmanipError(f"{view.obj.path}: no function {name!r}")
        kept |= {p.shndx for p in view.funcs[name]}
    data_names = set(new_data)
    for it in view.items:
        if it.kind in ("data", "section") and it.name in data_names:
            kept.add(it.shndx)
    return kept


def close_over_rodata(obj: ElfObject, kept: set[int]) -> set[int]:
    """Add to ``kept`` (in place; returned) the read-only data kept sections refer to."""
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
    return kept


def _describe(view: ObjectView, shndx: int, off: int) -> str:
    """``function+0x12`` (or ``section+0x12``) for byte ``off`` of section ``shndx``."""
    it = view.covering(shndx, off)
    if it is not None and it.kind in ("func", "cold"):
        return f"{it.name}+{off - it.start:#x}"
    sec = view.obj.sections.get(shndx)
    return f"{sec.name if sec is not None else f'section #{shndx}'}+{off:#x}"


def _target_name(view: ObjectView, sec: Section, r: Reloc) -> str:
    """What a relocation of ``sec`` points at, for a message: a function, data or symbol."""
    kind, what, _off = view.target(sec, r)
    if kind == "item":
        return what.name  # type: ignore[union-attr]
    s = view.obj.symbols[r.sym]
    if s.type != STT_SECTION and s.name:
        return s.name
    return str(what)


def _about_kept_code(view: ObjectView, entry: TableEntry, kept: set[int],
                     ranges: Mapping[int, Sequence[tuple[int, int, str]]] | None = None,
                     ) -> bool:
    """Whether a table entry describes kept code: its code field points into it.

    An entry whose layout is unknown (only its size is) counts when any of
    its relocations points into kept code.  With ``ranges`` (replacement
    code of carried alternatives, :class:`TableCut` ``loader_ranges``), an
    entry whose code field points inside one of them counts too.
    """
    obj = view.obj
    code = entry.field_reloc(Role.CODE) if entry.layout is not None else None
    relocs = (code,) if code is not None else entry.relocs
    for r in relocs:
        s = obj.symbols[r.sym]
        tsec = obj.sections.get(s.shndx) if s.in_section else None
        if tsec is not None and s.shndx in kept and tsec.is_exec:
            return True
    if code is not None and ranges:
        site = entry.site(obj, Role.CODE)
        if site is not None and any(lo <= site.offset < hi
                                    for lo, hi, _ in ranges.get(site.shndx, ())):
            return True
    return False


def _entry_verdict(view: ObjectView, sec: Section, entry: TableEntry,
                   kept: set[int],
                   ranges: Mapping[int, Sequence[tuple[int, int, str]]] | None = None,
                   ) -> tuple[bool, set[int]]:
    """Whether a table entry is about kept code, and the sections it needs then.

    It is when its code field points into kept code.  Every other relocation
    must then point at something the module loader can resolve in the output:
    kept sections, read-only data, replacement code, undefined (exported:
    checked when the module is built) or absolute symbols.  An entry about
    kept code with any other target (a local key, a fixup in code not kept)
    cannot be carried, and dropping it would leave the new code unpatched:
    ObjmanipError naming the table, the function and the target.
    """
    obj = view.obj
    if not _about_kept_code(view, entry, kept, ranges):
        return False, set()
    need = set()
    ours = entry.field_reloc(Role.KEY) if sec.name == JUMP_TABLE else None
    for r in entry.relocs:
        if r is ours:
            continue  # written by the ksplice core (see move_jump_keys)
        s = obj.symbols[r.sym]
        if s.shndx == SHN_UNDEF or s.shndx == SHN_ABS:
            continue
        tsec = obj.sections.get(s.shndx)
        if tsec is not None and s.shndx in kept:
            continue
        if tsec is not None and not tsec.is_write and not tsec.is_exec and tsec.is_alloc:
            need.add(s.shndx)  # e.g. the file name string of a bug entry
        elif tsec is not None and (rw := row(tsec.name)) is not None \
                and rw.kind == Kind.REPLACEMENT:
            need.add(s.shndx)
        else:
            code = entry.site(obj, Role.CODE)
            where = _describe(view, code.shndx, code.offset) if code else f"entry {entry.index}"
            field_name = next((f.name for f in (entry.layout.fields if entry.layout else ())
                               if f.offset == r.offset - entry.start), "field")
            raise ObjmanipError(
                f"{obj.path}: cannot carry the {sec.name} entry about {where}: its "
                f"{field_name} points at {_target_name(view, sec, r)}, which the module loader "
                "cannot resolve in the update (dropping the entry would run the new code "
                "unpatched)")
    return True, need


JUMP_TABLE = "__jump_table"
# The primary's jump entries, out of the loader's sight (kmodsrc/patch.c
# registers them); kmod's collection link script merges every object's piece.
KSPLICE_JUMP_TABLE = "__ksplice_jump_table"


def move_jump_keys(view: ObjectView, sec: Section, relocs: Sequence[Reloc], out_name: str,
                   keepset: Collection[int], renames: Mapping[str, str],
                   ) -> tuple[list[Reloc], list[RelocRecord]]:
    """Split a cut ``__jump_table``'s relocations: those that stay, and key records.

    ``relocs`` are the kept entries' relocations at their offsets in the cut
    table (16-byte ``struct jump_entry``, key at +8: R_X86_64_PC64 whose
    addend carries the branch/init flag bits).  A key pointing into the
    output (``keepset``) or at an absolute symbol stays for the loader; every
    other key (exported or not, the file's own static key, a tracepoint) is
    returned as a :class:`RelocRecord` against ``out_name``, so the ksplice
    core writes it like any relocation (addend, flags included, kept
    exactly).  The code and target fields always stay: they point into kept
    code.  Source: include/linux/jump_label.h ``jump_entry_key()``.
    """
    lay = row(JUMP_TABLE).layouts[0]  # type: ignore[union-attr]
    key = lay.field(Role.KEY)
    assert key is not None
    stay: list[Reloc] = []
    records: list[RelocRecord] = []
    for r in relocs:
        s = view.obj.symbols[r.sym]
        if r.offset % lay.size != key.offset or (s.in_section and s.shndx in keepset) \
                or s.shndx == SHN_ABS:
            stay.append(r)
        else:
            records.append(_record(view, sec, r, out_name, "", renames))
    return stay, records


def _filter_table(view: ObjectView, sec: Section, kept: set[int],
                  needed: set[int],
                  ranges: Mapping[int, Sequence[tuple[int, int, str]]] | None = None,
                  ) -> tuple[list[TableEntry], list[Reloc]]:
    """The entries of a table that are about kept code, and their relocations moved.

    ``needed`` collects the sections (strings, replacement code) the kept
    entries point at; ``ranges`` as in :func:`_about_kept_code`.  Raises TableLayoutError as
    :func:`~ksplice_tasks.obj.kernel_sections.table_entries` does, and
    ObjmanipError as :func:`_entry_verdict` does.
    """
    keep: list[TableEntry] = []
    for e in table_entries(view.obj, sec):
        if not e.relocs:
            continue
        hit, need = _entry_verdict(view, sec, e, kept, ranges)
        if hit:
            keep.append(e)
            needed |= need
    relocs = [replace(r, offset=n * e.size + r.offset - e.start)
              for n, e in enumerate(keep) for r in e.relocs]
    return keep, relocs


def _loader_ranges(view: ObjectView, sec: Section,
                   entries: Iterable[TableEntry]) -> dict[int, list[tuple[int, int, str]]]:
    """Byte ranges the module loader rewrites from kept ``.altinstructions`` entries.

    Section index -> (start, end, the alternative's ``function+offset``)
    for each entry's original instructions
    (``instr_offset``, ``instrlen``) and replacement (``repl_offset``,
    ``replacementlen``).  arch/x86/kernel/alternative.c apply_alternatives()
    copies the replacement over the original at module_finalize(), before
    the ksplice core writes any relocation, so relocations in these ranges
    must be the loader's.
    """
    out: dict[int, list[tuple[int, int, str]]] = {}
    for e in entries:
        code = e.site(view.obj, Role.CODE)
        where = _describe(view, code.shndx, code.offset) if code is not None else ""
        for role, length in ((Role.CODE, Role.CODE_LEN),
                             (Role.REPLACEMENT, Role.REPLACEMENT_LEN)):
            site = e.site(view.obj, role)
            n = e.value(sec.data, length)
            if site is not None and n and site.shndx:
                out.setdefault(site.shndx, []).append((site.offset, site.offset + n, where))
    return out


def _replacement_spot(view: ObjectView, sec: Section, r: Reloc) -> tuple[int, int] | None:
    """(section index, offset) a relocation of code ``sec`` jumps to in replacement code."""
    s = view.obj.symbols[r.sym]
    tsec = view.obj.sections.get(s.shndx) if s.in_section else None
    rw = row(tsec.name) if tsec is not None else None
    if tsec is None or rw is None or rw.kind != Kind.REPLACEMENT:
        return None
    return s.shndx, s.value + r.addend + view.pc_adjust(sec, r)


def aux_blocks(view: ObjectView, ranges: Mapping[int, Sequence[tuple[int, int, str]]],
               ) -> dict[int, list[tuple[int, int, str]]]:
    """The out-of-line blocks (``.altinstr_aux``) that kept alternatives jump to.

    ``ranges`` are the alternatives' original instructions (:class:`TableCut`
    ``loader_ranges``).  A block starts where such an instruction jumps and
    ends where the next block any code of the object jumps to starts (or at
    the section's end): arch/x86/include/asm/cpufeature.h _static_cpu_has()
    emits one ``testb; jnz; jmp`` block per use.  Section index ->
    (start, end, the alternative's ``function+offset``).
    """
    obj = view.obj
    starts: dict[int, set[int]] = {}
    for k, rl in obj.relocs.items():
        sec = obj.sections.get(k)
        if sec is None or not sec.is_exec or is_special(sec.name):
            continue
        for r in rl:
            spot = _replacement_spot(view, sec, r)
            if spot is not None:
                starts.setdefault(spot[0], set()).add(spot[1])
    out: dict[int, list[tuple[int, int, str]]] = {}
    for k, rng in ranges.items():
        sec = obj.sections[k]
        if not sec.is_exec or is_special(sec.name):
            continue
        for r in obj.relocs.get(k, []):
            where = _range_of(rng, r)
            spot = _replacement_spot(view, sec, r) if where is not None else None
            if spot is None or spot[0] in ranges:  # replacement code: its own entries' ranges
                continue
            t, lo = spot
            hi = min((x for x in starts[t] if x > lo), default=obj.sections[t].size)
            out.setdefault(t, []).append((lo, hi, where or ""))
    return out


def _cut(data: bytes, size: int, indices: Sequence[int]) -> tuple[bytes, int]:
    return b"".join(data[i * size:(i + 1) * size] for i in indices), len(indices) * size


def filter_kernel_tables(view: ObjectView, kept: set[int]) -> TableCut:
    """Cut every carried kernel table down to the entries about kept code.

    Tables are the :data:`~ksplice_tasks.obj.kernel_sections.CARRIED_TABLES`,
    their parallel sections cut alike, and the per-function
    ``SHF_LINK_ORDER`` sections of kept code, kept whole.  A table whose entry
    layout cannot be derived is refused (ObjmanipError) when it refers to kept
    code, and left out otherwise; so is an entry about kept code that cannot
    be carried (:func:`_entry_verdict`).  Alternatives come first: an entry
    of another table about their carried replacement code (a return thunk
    jump there, which apply_returns() rewrites before apply_alternatives()
    copies it: arch/x86/kernel/module.c module_finalize()) is carried too.
    """
    obj = view.obj
    cut = TableCut()
    replacement: dict[int, list[tuple[int, int, str]]] = {}
    for sec in sorted(obj.sections.values(), key=lambda t: not _has_replacement(t.name)):
        if sec.name in CARRIED_TABLES:
            try:
                entries, rl = _filter_table(view, sec, kept, cut.needed, replacement)
            except TableLayoutError as exc:
                code = {i for i in kept if obj.sections[i].is_exec}
                if any(obj.symbols[r.sym].shndx in code for r in obj.relocs.get(sec.index, [])):
                    raise ObjmanipError(f"{exc}; cannot keep its entries about the kept "
                                        "code") from None
                continue
            if not entries:
                continue
            idx = [e.index for e in entries]
            size = entries[0].size
            if _has_replacement(sec.name):
                for k, rng in _loader_ranges(view, sec, entries).items():
                    cut.loader_ranges.setdefault(k, []).extend(rng)
                    rw = row(obj.sections[k].name)
                    if rw is not None and rw.kind == Kind.REPLACEMENT:
                        replacement.setdefault(k, []).extend(rng)
            cut.section_data[sec.index] = _cut(sec.data, size, idx)
            cut.relocs[sec.index] = rl
            cut.tables.append(sec.index)
            parallel = row(sec.name).parallel  # type: ignore[union-attr]
            if parallel:
                psize = parallel_size(parallel)
                for p in obj.sections_named(parallel):
                    if p.size != (sec.size // size) * psize:
                        raise ObjmanipError(f"{obj.path}: {p.name} has {p.size} bytes, not "
                                            f"{psize} per {sec.name} entry")
                    cut.section_data[p.index] = _cut(p.data, psize, idx)
                    cut.tables.append(p.index)
        elif (sec.flags & SHF_LINK_ORDER and sec.link in kept
              and sec.name in PER_FUNCTION_TABLES):
            cut.tables.append(sec.index)
            cut.relocs[sec.index] = list(obj.relocs.get(sec.index, []))
    return cut


def _has_replacement(name: str) -> bool:
    """Whether a table's entries name replacement code (``.altinstructions``)."""
    rw = row(name)
    return rw is not None and any(lay.field(Role.REPLACEMENT) for lay in rw.layouts)


def _range_of(ranges: Sequence[tuple[int, int, str]], r: Reloc) -> str | None:
    """The ``function+offset`` of the range holding relocation ``r``, or None."""
    return next((where for lo, hi, where in ranges if lo <= r.offset < hi), None)


def strip_relocations(view: ObjectView, kept: set[int], keepset: set[int],
                      preserved: Mapping[int, list[Reloc]], names: Mapping[int, str],
                      tag: str, suffix: str, renames: Mapping[str, str],
                      loader_ranges: Mapping[int, Sequence[tuple[int, int, str]]] | None = None,
                      ) -> tuple[dict[int, list[Reloc]], list[RelocRecord]]:
    """Relocations of the kept sections that stay, and records of the stripped ones.

    A relocation stays when it points into the output (``keepset``), at an
    absolute symbol, or (in a kernel table) at an undefined symbol; tables in
    ``preserved`` keep theirs as they are.  Every other one is returned as a
    :class:`RelocRecord` naming what the running kernel calls its target.

    In ``loader_ranges`` (bytes the module loader rewrites, see
    :class:`TableCut`) a relocation must stay for the loader: one at an
    undefined symbol stays (it must be exported; the module build checks),
    and one at anything else outside the output is refused (ObjmanipError
    naming the section, the function and the target).  In replacement code
    (``.altinstr_replacement``) the relocations outside those ranges belong
    to entries not carried, whose bytes are never used: they are left out.
    """
    obj = view.obj
    ranges = loader_ranges or {}
    relocs: dict[int, list[Reloc]] = dict(preserved)
    records: list[RelocRecord] = []
    for i in kept:
        if i in relocs:
            continue
        sec = obj.sections[i]
        out: list[Reloc] = []
        special = is_special(sec.name)
        rw = row(sec.name)
        replacement = rw is not None and rw.kind == Kind.REPLACEMENT
        mine = ranges.get(i, ())
        for r in obj.relocs.get(i, []):
            s = obj.symbols[r.sym]
            where = _range_of(mine, r)
            if replacement and where is None:
                continue
            resolvable = (s.in_section and s.shndx in keepset) or s.shndx == SHN_ABS
            if resolvable or (special and s.shndx == SHN_UNDEF):
                out.append(r)
                continue
            if where is not None:
                if s.shndx == SHN_UNDEF:
                    out.append(r)
                    continue
                raise ObjmanipError(
                    f"{obj.path}: cannot carry the alternative at {where or '?'} ({sec.name}"
                    f" at {r.offset:#x}): it refers to {_target_name(view, sec, r)}, which the "
                    "module loader cannot resolve before it applies the alternative")
            fn = _function_at(view, i, r.offset)
            records.append(_record(view, sec, r, names.get(i, sec.name),
                                   uniquify(fn, tag, suffix) if fn else "", renames))
        relocs[i] = out
    return relocs, records


def keep_primary(obj: ElfObject, functions: Iterable[str], tag: str, suffix: str = "_post",
                 renames: Mapping[str, str] | None = None,
                 new_data: Iterable[str] = ()) -> tuple[ElfObject, list[RelocRecord]]:
    """Keep ``functions`` (changed and new) of a post object for the primary module.

    Kept: every part of each function (``.cold`` included), the read-only
    sections they reference (strings, constants, jump tables; copied, renamed),
    the sections of ``new_data``, and the entries of the carried kernel tables
    (:mod:`~ksplice_tasks.obj.kernel_sections`; plus per-function
    ``__patchable_function_entries``) that describe kept code.  Relocations
    from kept code to anything not kept - other functions, existing data,
    undefined symbols - are stripped and returned; ``renames`` (post -> pre,
    from objdiff) makes them name what the running kernel calls those symbols.
    Relocations inside kept tables are kept as they are, because the module
    loader consumes those tables before the ksplice core could resolve
    anything; so are those inside the instructions an alternative rewrites
    and inside its replacement.  An entry about kept code that would need a
    stripped relocation is refused, never dropped (ObjmanipError).
    Other metadata (``.discard.*``, notes, ``.eh_frame``, debug info,
    ``__ksymtab``...) is dropped.  Raises ObjmanipError for an unknown function
    or a kernel table about kept code whose entry layout cannot be derived.
    """
    renames = dict(renames or {})
    view = ObjectView(obj)
    kept = close_over_rodata(obj, select_functions(view, functions, new_data))
    cut = filter_kernel_tables(view, kept)
    for k, blocks in aux_blocks(view, cut.loader_ranges).items():
        cut.needed.add(k)
        cut.loader_ranges.setdefault(k, []).extend(blocks)
    for i in cut.needed:
        if i not in kept:
            kept.add(i)
            rw = row(obj.sections[i].name)
            if rw is not None and rw.kind == Kind.REPLACEMENT:
                cut.tables.append(i)
    keep_order = [i for i in obj.sections if i in kept or i in cut.tables
                  or obj.sections[i].name == ".note.GNU-stack"]
    names = {i: uniquify(obj.sections[i].name, tag, suffix) for i in kept
             if not is_special(obj.sections[i].name)}
    key_records: list[RelocRecord] = []
    jump = [i for i in cut.tables if obj.sections[i].name == JUMP_TABLE]
    for n, i in enumerate(jump):
        names[i] = uniquify(KSPLICE_JUMP_TABLE + (f".{n}" if n else ""), tag, suffix)
        cut.relocs[i], recs = move_jump_keys(view, obj.sections[i], cut.relocs[i], names[i],
                                             set(keep_order), renames)
        key_records += recs
    relocs, records = strip_relocations(view, kept, set(keep_order), cut.relocs, names, tag,
                                        suffix, renames, cut.loader_ranges)
    records += key_records
    symnames = _rename_symbols(obj, kept, tag, suffix)
    return _assemble(obj, keep_order, names, cut.section_data, relocs, symnames), records


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


# Tables whose sites run-pre matching checks against the encodings the
# kernel's own patching can write there (kmodsrc/runpre.c), by kind.
SITE_TABLES: dict[str, str] = {
    ".return_sites": "return",
    ".retpoline_sites": "retpoline",
    ".static_call_sites": "static_call",
    "__jump_table": "jump_label",
}
SITE_KINDS = tuple(SITE_TABLES.values())

RETPOLINE_THUNK = "__x86_indirect_thunk_"

_NOP5 = bytes.fromhex("0f1f440000")  # <asm/nops.h> BYTES_NOP5
_NOP2 = bytes.fromhex("6690")  # BYTES_NOP2


def _branch_length(code: bytes, off: int) -> int:
    """Bytes of the rel32 call/jmp/jcc at ``off`` (with a CS prefix), or 0 if it is none."""
    b = code[off:off + 2]
    if b[:1] in (b"\xe8", b"\xe9"):
        return 5
    if b in (b"\x2e\xe8", b"\x2e\xe9") or (b[:1] == b"\x0f" and len(b) == 2
                                           and b[1] & 0xF0 == 0x80):
        return 6
    return 0


def _jump_label_length(code: bytes, off: int) -> int:
    """Bytes of the jmp or NOP at a jump label (5 or 2, arch/x86/kernel/jump_label.c), or 0."""
    if code[off:off + 5] == _NOP5 or code[off:off + 1] == b"\xe9":
        return 5
    if code[off:off + 2] == _NOP2 or code[off:off + 1] == b"\xeb":
        return 2
    return 0


def _thunk_reg(obj: ElfObject, relocs: Sequence[Reloc], lo: int, hi: int) -> int | None:
    """The register of the retpoline thunk a relocation in ``[lo, hi)`` names, or None."""
    for r in relocs:
        if lo <= r.offset < hi:
            name = obj.symbols[r.sym].name
            if name.startswith(RETPOLINE_THUNK):
                # arch/x86/include/asm/GEN-for-each-reg.h: numbered like the registers
                return RETPOLINE_THUNKS.index(name) if name in RETPOLINE_THUNKS else None
    return None


def helper_sites(obj: ElfObject, tag: str, suffix: str = "_pre") -> list[SiteRecord]:
    """The sites of :data:`SITE_TABLES` in the code :func:`keep_helper` keeps.

    Each is the instruction an entry's code field names, with its length
    read from the object's bytes.  An entry whose instruction is not of a
    form that table allows (and so could not be checked by its rules) is left
    out: run-pre matching then compares those bytes strictly.  Raises
    TableLayoutError as :func:`~ksplice_tasks.obj.kernel_sections.table_entries` does.
    """
    keep = {i for i, s in obj.sections.items()
            if s.is_exec and s.is_alloc and not is_special(s.name)}
    out: list[SiteRecord] = []
    for sec in obj.sections.values():
        kind = SITE_TABLES.get(sec.name)
        if kind is None:
            continue
        for e in table_entries(obj, sec):
            site = e.site(obj, Role.CODE)
            if site is None or site.shndx not in keep:
                continue
            text = obj.sections[site.shndx]
            code, off = text.data, site.offset
            reg, target = 0, -1
            if kind == "jump_label":
                length = _jump_label_length(code, off)
                t = e.site(obj, Role.TARGET)
                if t is not None and t.shndx == site.shndx:
                    target = t.offset
            else:
                length = _branch_length(code, off)
                if kind == "retpoline" and length:
                    found = _thunk_reg(obj, obj.relocs.get(site.shndx, ()), off, off + length)
                    if found is None:
                        length = 0
                    else:
                        reg = found
            if not length or off + length > len(code):
                continue
            out.append(SiteRecord(uniquify(text.name, tag, suffix), off, kind, length,
                                  reg, target))
    out += _boot_patched_sites(obj, keep, out, tag, suffix)
    # stable: an alternative's original, then its entries in table order
    out.sort(key=lambda s: (s.section, s.offset))
    return out


def _boot_patched_sites(obj: ElfObject, keep: set[int], sites: Sequence[SiteRecord],
                        tag: str, suffix: str) -> list[SiteRecord]:
    """Alternatives, then the plain branches of functions with relaxable jumps (bootpatch)."""
    out = []
    taken: dict[str, set[int]] = {}
    for s in sites:
        taken.setdefault(s.section, set()).add(s.offset)
    alts = alternative_sites(obj, keep)
    originals = {(v.section, v.offset): i for i, v in enumerate(alts)
                 if v.flags & ALT_ORIGINAL}
    for shndx, off, length, ptype in paravirt_sites(obj, keep):
        i = originals.get((shndx, off))
        if i is not None:
            # apply_paravirt() runs first: the original, when no entry applies, is its call
            if alts[i].length == length:
                alts[i] = replace(alts[i], feature=ptype, flags=alts[i].flags | ALT_PARAVIRT)
            continue
        name = uniquify(obj.sections[shndx].name, tag, suffix)
        taken.setdefault(name, set()).add(off)
        out.append(SiteRecord(name, off, "paravirt", length, 0, -1, ptype))
    for v in alts:
        name = uniquify(obj.sections[v.section].name, tag, suffix)
        taken.setdefault(name, set()).add(v.offset)
        out.append(SiteRecord(name, v.offset, "alternative", v.length, 0, v.target, v.feature,
                              v.template.hex(), v.repl_len, v.symbol, v.addend, v.flags))
    for shndx, off in smp_lock_sites(obj, keep):
        name = uniquify(obj.sections[shndx].name, tag, suffix)
        if off not in taken.get(name, set()):
            taken.setdefault(name, set()).add(off)
            out.append(SiteRecord(name, off, "smp_lock", 1))
    view = ObjectView(obj)
    funcs: dict[int, list[tuple[int, int]]] = {}
    for s in obj.symbols:
        if s.type == STT_FUNC and s.in_section and s.shndx in keep and s.size:
            funcs.setdefault(s.shndx, []).append((s.value, s.value + s.size))
    for shndx, ranges in funcs.items():
        if not any(relaxable_jump(obj, obj.sections[shndx].data, r)
                   for r in obj.relocs.get(shndx, ())):
            continue
        name = uniquify(obj.sections[shndx].name, tag, suffix)
        starts, ends = view.insn_bounds(shndx)
        for off, length, target in branch_sites(obj, shndx, starts, ends, ranges,
                                                taken.get(name, set())):
            out.append(SiteRecord(name, off, "branch", length, 0, target))
    return out


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
        out.append(SizeRecord(s.name, s.size, obj.sections[s.shndx].name,
                              s.bind == STB_LOCAL))
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
    """``ksplice-objmanip [-v] IN OUT MODE ...``: run one pass, print its records as JSON
    lines; exit status 1 with one line on stderr for a refusal, a malformed object or any
    other error (``-v``: the traceback)."""
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
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="on an error, show the traceback too")
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
    except Exception as exc:
        if args.verbose:
            raise
        print(f"ksplice-objmanip: error: {error_line(exc, (ObjmanipError,))}", file=sys.stderr)
        return 1
    for rec in recs:
        print(json.dumps(rec if isinstance(rec, str) else asdict(rec)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = [
    "RelocRecord", "SizeRecord", "SiteRecord", "ObjmanipError", "keep_primary", "keep_helper",
    "helper_sites", "globalize",
    "sizelist", "rmsyms", "restore_relocs", "uniquify", "select_functions", "close_over_rodata",
    "filter_kernel_tables", "strip_relocations", "TableCut", "move_jump_keys", "JUMP_TABLE",
    "KSPLICE_JUMP_TABLE",
]
