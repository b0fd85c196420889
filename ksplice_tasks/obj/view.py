# SPDX-License-Identifier: GPL-2.0-only
"""The object index: an object's functions and data as named byte ranges.

:class:`ObjectView` answers "which function or data object holds this byte"
and "what does this relocation point at" for one
:class:`~ksplice_tasks.obj.elfread.ElfObject`.  objdiff compares two views;
the object passes use one to decide what to keep.  GCC's naming conventions
for local symbols (``count.3``, ``f.cold``, ``f.constprop.0``) live here too,
as does :func:`sites_by_function`, the kernel-table sites per function.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property

import capstone

from ksplice_tasks.obj.elfread import (
    R_X86_64_PLT32,
    SHF_MERGE,
    SHF_STRINGS,
    SHN_ABS,
    SHN_COMMON,
    STB_LOCAL,
    STT_FILE,
    STT_FUNC,
    STT_OBJECT,
    STT_SECTION,
    ElfObject,
    Reloc,
    Section,
    Symbol,
)
from ksplice_tasks.obj.kernel_sections import (
    LOADER_SYMBOLS,
    SECTIONS,
    Kind,
    Role,
    TableEntry,
    TableLayoutError,
    is_special,
    table_entries,
)

# GCC numbers the local symbols it clones or makes unique: ``count.3``,
# ``f.constprop.0``, ``f.cold.1``.  The number is not stable across builds.
NUMBERED = re.compile(r"^(.*?)(\.\d+)$")
_COLD = re.compile(r"^(.*)\.cold(\.\d+)?$")


def base_name(name: str) -> str:
    """``count.3`` -> ``count``; ``f.constprop.0`` -> ``f.constprop``; GCC numbering only."""
    m = NUMBERED.match(name)
    return m.group(1) if m else name


def gcc_number(name: str) -> int | None:
    """The number GCC appended (``count.3`` -> 3), or None when there is none."""
    m = NUMBERED.match(name)
    return int(m.group(2)[1:]) if m else None


def parent_of_cold(name: str) -> str | None:
    """``f.cold`` / ``f.part.0.cold`` -> the function the cold part belongs to."""
    m = _COLD.match(name)
    return m.group(1) if m else None


@dataclass
class Item:
    """A function part or a data object: bytes ``[start, end)`` of section ``shndx``.

    ``kind`` is "func" (a function's main part), "cold" (a ``.cold`` part,
    ``owner`` naming its function), "data" (writable), "rodata" (read-only) or
    "section" (a data section without symbols, taken whole).
    """

    name: str
    shndx: int
    start: int
    end: int
    kind: str  # "func" | "cold" | "data" | "rodata" | "section"
    local: bool
    owner: str = ""  # for "cold": the function it belongs to


class ObjectView:
    """Indexes over one object: its functions, data items and relocation targets.

    ``items`` are the named byte ranges of non-special allocated sections (see
    :class:`Item`); ``by_sec`` holds them per section sorted by start;
    ``funcs`` maps a function name to its parts, main part first, then its
    ``.cold`` parts.  Built once per object; the object must not change after.
    """

    def __init__(self, obj: ElfObject) -> None:
        self.obj = obj
        self.items: list[Item] = []
        self.by_sec: dict[int, list[Item]] = defaultdict(list)
        self.funcs: dict[str, list[Item]] = {}  # name -> [main part, cold parts...]
        self._starts: dict[int, list[int]] = {}
        self._insns: dict[int, tuple[list[int], list[int]]] = {}
        self._build()

    # -- indexing ---------------------------------------------------------
    def _build(self) -> None:
        obj = self.obj
        named: dict[int, list[tuple[int, int, str, int, bool]]] = defaultdict(list)
        for s in obj.symbols:
            if not s.in_section or s.type in (STT_SECTION, STT_FILE) or not s.name:
                continue
            sec = obj.sections.get(s.shndx)
            if sec is None or is_special(sec.name) or not sec.is_alloc:
                continue
            if s.name.startswith(".L"):
                continue
            if sec.is_exec and s.type != STT_FUNC:
                continue
            if not sec.is_exec and s.type not in (STT_OBJECT, 0):
                continue
            named[s.shndx].append((s.value, s.size, s.name, s.type, s.bind == STB_LOCAL))
        for shndx, sec in obj.sections.items():
            if not sec.is_alloc or is_special(sec.name):
                continue
            syms = sorted(set(named.get(shndx, [])))
            items: list[Item] = []
            for j, (value, size, name, _t, local) in enumerate(syms):
                end = value + size
                if size == 0:  # asm symbol without .size: extends to the next one
                    nxt = [v for v, *_ in syms[j + 1:] if v > value]
                    end = nxt[0] if nxt else sec.size
                if sec.is_exec:
                    parent = parent_of_cold(name)
                    kind = "cold" if parent else "func"
                else:
                    kind = "data" if sec.is_write else "rodata"
                    parent = None
                items.append(Item(name, shndx, value, end, kind, local, parent or ""))
            if not items and not sec.is_exec and sec.size:
                kind = "section"
                items.append(Item(sec.name, shndx, 0, sec.size, kind, True))
            items.sort(key=lambda it: (it.start, it.end))
            self.by_sec[shndx] = items
            self._starts[shndx] = [it.start for it in items]
            self.items.extend(items)
        for it in self.items:
            if it.kind == "func":
                self.funcs.setdefault(it.name, []).insert(0, it)
        for it in self.items:
            if it.kind == "cold":
                if it.owner in self.funcs:
                    self.funcs[it.owner].append(it)
                else:  # an orphan cold part stands for itself
                    self.funcs.setdefault(it.name, []).append(it)

    def covering(self, shndx: int, off: int) -> Item | None:
        """The item holding byte ``off`` of section ``shndx`` (or ending there), or None."""
        items = self.by_sec.get(shndx)
        if not items:
            return None
        j = bisect.bisect_right(self._starts[shndx], off) - 1
        # Prefer the last item starting at or before off that contains it.
        while j >= 0:
            it = items[j]
            if it.start <= off < it.end or (it.start == off == it.end):
                return it
            if it.end <= off and it.start < off:
                break
            j -= 1
        # A reference just past the end of an object (e.g. array end) stays with it.
        j = bisect.bisect_right(self._starts[shndx], off) - 1
        if j >= 0 and items[j].end == off:
            return items[j]
        return None

    def relocs_in(self, shndx: int, start: int, end: int) -> list[Reloc]:
        """Relocations of section ``shndx`` with ``start <= offset < end``, by offset."""
        rl = self.obj.relocs.get(shndx, [])
        if not rl:
            return []
        offs = self._reloc_offsets(shndx)
        return rl[bisect.bisect_left(offs, start):bisect.bisect_left(offs, end)]

    @cached_property
    def _offsets(self) -> dict[int, list[int]]:
        return {k: [r.offset for r in v] for k, v in self.obj.relocs.items()}

    def _reloc_offsets(self, shndx: int) -> list[int]:
        return self._offsets[shndx]

    def insn_bounds(self, shndx: int) -> tuple[list[int], list[int]]:
        """(starts, ends): byte offsets of each instruction of exec section ``shndx``.

        A linear sweep with capstone; an undecodable byte counts as a 1-byte
        instruction.  Cached per section.
        """
        if shndx not in self._insns:
            data = self.obj.sections[shndx].data
            md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
            starts: list[int] = []
            ends: list[int] = []
            pos = 0
            while pos < len(data):
                n = 0
                for addr, size, _m, _o in md.disasm_lite(data[pos:], pos):
                    starts.append(addr)
                    ends.append(addr + size)
                    n += size
                pos += n
                if pos < len(data):  # undecodable byte: step over it
                    starts.append(pos)
                    ends.append(pos + 1)
                    pos += 1
            self._insns[shndx] = (starts, ends)
        return self._insns[shndx]

    def pc_adjust(self, sec: Section, r: Reloc) -> int:
        """Bytes from a pc-relative field in code to the end of its instruction (else 0).

        The CPU adds a displacement to the *next* instruction's address, so a
        ``PC32`` field's addend is ``-(that distance)`` plus the target offset.
        """
        if not r.pcrel or not sec.is_exec:
            return 0
        if r.type == R_X86_64_PLT32:  # PLT32: call/jmp rel32, the field ends the instruction
            return r.size
        starts, ends = self.insn_bounds(sec.index)
        j = bisect.bisect_right(starts, r.offset) - 1
        if j < 0 or ends[j] <= r.offset:
            return r.size
        return ends[j] - r.offset

    # -- reloc targets ----------------------------------------------------
    def target(self, sec: Section, r: Reloc) -> tuple[str, object, int]:
        """Resolve a reloc to (kind, item-or-name, offset from the item's start).

        kind is "undef", "abs", "item" (a function or data Item), "str", "cst"
        or "section" (no item covers the spot).
        """
        s = self.obj.symbols[r.sym]
        if s.shndx == 0 or s.shndx == SHN_COMMON:
            return ("undef", s.name, r.addend)
        if s.shndx == SHN_ABS:
            return ("abs", s.name, s.value + r.addend)
        tsec = self.obj.sections.get(s.shndx)
        if tsec is None:
            return ("section", f"#{s.shndx}", s.value + r.addend)
        base = s.value + r.addend
        spot = base + self.pc_adjust(sec, r)
        if s.type not in (STT_SECTION,) and s.name and not s.name.startswith(".L"):
            it = self._item_named(s)
            if it is not None:
                return ("item", it, base - it.start)
        if tsec.flags & SHF_MERGE and tsec.flags & SHF_STRINGS and not is_special(tsec.name):
            return ("str", tsec, base)
        if tsec.flags & SHF_MERGE and tsec.entsize and not is_special(tsec.name):
            return ("cst", tsec, base)
        it = self.covering(s.shndx, spot)
        if it is not None:
            return ("item", it, base - it.start)
        return ("section", tsec.name, base)

    def _item_named(self, s: Symbol) -> Item | None:
        for it in self.by_sec.get(s.shndx, ()):
            if it.name == s.name and it.start == s.value:
                return it
        return None

    def referrers(self) -> dict[str, frozenset[str]]:
        """Item name -> names of the functions (main and cold parts) that refer to it."""
        refs: dict[str, set[str]] = defaultdict(set)
        for fname, parts in self.funcs.items():
            for p in parts:
                sec = self.obj.sections[p.shndx]
                for r in self.relocs_in(p.shndx, p.start, p.end):
                    kind, what, _off = self.target(sec, r)
                    if kind == "item" and what is not p:
                        refs[what.name].add(fname)  # type: ignore[union-attr]
        return {k: frozenset(v) for k, v in refs.items()}



# -- kernel-table sites per function ----------------------------------------------

@dataclass(frozen=True)
class CodeSite:
    """A spot of a function the kernel knows about from a table (or the loader patches).

    ``table`` is the table section's name, or the symbol name for a call the
    module loader resolves (``__fentry__``); ``part`` is the function part
    (``f`` or ``f.cold``); the spot is byte ``at`` of section ``shndx``, byte
    ``offset`` of the part; ``entry`` is the table entry (None for a loader call).
    """

    function: str
    part: str
    table: str
    shndx: int
    at: int
    offset: int
    entry: TableEntry | None


_CODE_TABLES = tuple(r.name for r in SECTIONS if r.kind == Kind.TABLE and any(
    lay.field(Role.CODE) for lay in r.layouts))


def sites_by_function(view: ObjectView) -> dict[str, list[CodeSite]]:
    """Function name -> every kernel-table site in it, sorted by (section, offset).

    The sites are the code fields of the :mod:`kernel_sections` tables
    (alternatives, BUG/WARN, exception fixups, retpoline and return sites,
    jump labels, static calls, paravirt, LOCK prefixes, ftrace, ORC) and the
    calls the module loader resolves itself (``call __fentry__``, whose
    ``offset`` is the call instruction's, one byte before the field).  A
    table whose entry size cannot be derived is left out.
    """
    obj = view.obj
    out: dict[str, list[CodeSite]] = defaultdict(list)

    def add(shndx: int, off: int, table: str, entry: TableEntry | None) -> None:
        it = view.covering(shndx, off)
        if it is not None and it.kind in ("func", "cold"):
            fn = it.owner or it.name
            out[fn].append(CodeSite(fn, it.name, table, shndx, off, off - it.start, entry))

    for sec in obj.sections.values():
        if sec.name not in _CODE_TABLES:
            continue
        try:
            entries = table_entries(obj, sec)
        except TableLayoutError:
            continue
        for e in entries:
            site = e.site(obj, Role.CODE)
            if site is not None and site.shndx in obj.sections:
                add(site.shndx, site.offset, sec.name, e)
    for shndx, rl in obj.relocs.items():
        sec = obj.sections.get(shndx)
        if sec is None or not sec.is_exec:
            continue
        for r in rl:
            name = obj.symbols[r.sym].name
            if name in LOADER_SYMBOLS:
                add(shndx, r.offset - 1, name, None)
    for sites in out.values():
        sites.sort(key=lambda s: (s.shndx, s.at, s.table))
    return dict(out)
