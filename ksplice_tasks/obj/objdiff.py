"""objdiff: which functions a patch changed, from a pre and a post object.

The comparison is *semantic* at the relocation level.  Every function (and
every data object it references) gets a fingerprint made of its bytes with the
relocation fields zeroed plus, per relocation, a key describing *what* the
field points at rather than *where*:

* a call or jump to a function  -> the function's name and offset;
* a merged string               -> the string's bytes;
* a constant pool entry         -> the constant's bytes;
* a read-only object            -> its own fingerprint, recursively, so a
  function whose table or string changed counts as changed;
* writable data                 -> its (correlated) name.

Section and symbol numbering, relocation addends that only move because a
string moved, and GCC's renumbering of static locals (``count.3`` ->
``count.4``) therefore make no difference.  Changes to initialised data or to
the layout of ``.bss`` are refused: ksplice replaces code, not data.
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import capstone

from ksplice_tasks.errors import UserError
from ksplice_tasks.obj.elfread import (
    SHF_MERGE,
    SHF_STRINGS,
    SHN_ABS,
    SHN_COMMON,
    SHT_NOBITS,
    STB_LOCAL,
    STT_FILE,
    STT_FUNC,
    STT_OBJECT,
    STT_SECTION,
    ElfFormatError,
    ElfObject,
    Reloc,
    Section,
    read_object,
    reloc_info,
)


class ObjdiffRefusal(UserError):
    """The change cannot be applied by replacing code (data or .bss changed)."""


# Sections that are tables *about* code (or build metadata), never code or
# data a patch is about.  They are not compared directly; the ones that carry
# per-function facts (``__bug_table``) are attributed to functions instead.
_SPECIAL_EXACT = frozenset({
    "__bug_table", "__ex_table", ".altinstructions", ".altinstr_replacement", ".altinstr_aux",
    "__jump_table", ".static_call_sites", ".static_call.text", ".retpoline_sites",
    ".return_sites", ".call_sites", ".ibt_endbr_seal", "__mcount_loc",
    "__patchable_function_entries", ".orc_unwind", ".orc_unwind_ip", ".orc_header",
    ".smp_locks", ".parainstructions", "__tracepoints", "__tracepoints_ptrs",
    "__tracepoints_strings", "_ftrace_events", "_ftrace_eval_map", "__dyndbg",
    "__dyndbg_classes", ".kcfi_traps", "__ksymtab_strings", ".modinfo", "__param", "__modver",
    ".init.setup", ".comment", ".eh_frame", ".BTF", ".BTF.ext", "__bpf_raw_tp_map",
    ".export_symbol", "__kcrctab", "__kcrctab_gpl", "__ksymtab", "__ksymtab_gpl",
    ".gnu.linkonce.this_module", "__versions", ".data..ro_after_init.__jump_table",
    ".fixup", "__syscalls_metadata", "_kprobe_blacklist", "_error_injection_whitelist",
    ".static_call_tramp_key", ".printk_index", ".con_initcall.init", ".ctors", ".init_array",
})
_SPECIAL_PREFIX = (
    ".discard", ".note", ".debug_", ".rela", "___ksymtab", "__ksymtab_", "__kcrctab_",
    ".initcall", ".gnu.", ".BTF", "__tracepoint_str", ".printk_index",
)

# Calls whose argument carries __LINE__, by x86-64 argument register (see
# _line_only_text).  The printk family takes it in any position after the format.
_LINE_ARG_CALLS = {
    "__might_sleep": {"esi", "rsi"},
    "__might_resched": {"esi", "rsi"},
    "__might_fault": {"esi", "rsi"},
    "warn_slowpath_fmt": {"esi", "rsi"},
    "lockdep_rcu_suspicious": {"esi", "rsi"},
    "__cant_sleep": {"esi", "rsi"},
    "__cant_migrate": {"esi", "rsi"},
    "__kunit_do_failed_assertion": {"edx", "rdx"},
}
_ARG_REGS = {"esi", "rsi", "edx", "rdx", "ecx", "rcx", "r8d", "r8", "r9d", "r9"}
_PRINTK_RE = re.compile(r"^(_?printk|_printk_deferred|__warn_printk|__dynamic_(pr|dev|netdev)_dbg"
                        r"|_dev_(emerg|alert|crit|err|warn|notice|info)|dev_printk|panic"
                        r"|__ubsan_handle_\w+|seq_printf|snprintf|sprintf|printf|puts|fprintf"
                        r"|__printk_ratelimit|_printk_ratelimited)$")

_NUMBERED = re.compile(r"^(.*?)(\.\d+)$")


def is_special(name: str) -> bool:
    """Kernel metadata tables (and build/debug sections) that are not code or data."""
    return name in _SPECIAL_EXACT or name.startswith(_SPECIAL_PREFIX)


def base_name(name: str) -> str:
    """``count.3`` -> ``count``; ``f.constprop.0`` -> ``f.constprop``; GCC numbering only."""
    m = _NUMBERED.match(name)
    return m.group(1) if m else name


def parent_of_cold(name: str) -> str | None:
    """``f.cold`` / ``f.part.0.cold`` -> the function the cold part belongs to."""
    m = re.match(r"^(.*)\.cold(\.\d+)?$", name)
    return m.group(1) if m else None


@dataclass
class Item:
    """A function part or a data object: a byte range of one section."""

    name: str
    shndx: int
    start: int
    end: int
    kind: str  # "func" | "cold" | "data" | "rodata" | "section"
    local: bool
    owner: str = ""  # for "cold": the function it belongs to


@dataclass
class ObjDiff:
    """What objdiff found.  Function names are the post object's names."""

    pre: str
    post: str
    changed: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    line_only: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    section_indices: list[int] = field(default_factory=list)
    new_data: list[str] = field(default_factory=list)
    renames: dict[str, str] = field(default_factory=dict)

    @property
    def entry_symbols(self) -> list[str]:
        """Functions whose running code gets a jump to the new code."""
        return self.changed

    @property
    def keep(self) -> list[str]:
        """Functions keep-primary must keep: the changed ones and the new ones."""
        return sorted(set(self.changed) | set(self.new))

    @property
    def is_empty(self) -> bool:
        return not (self.changed or self.new)

    def summary(self) -> dict[str, list[str]]:
        return {"changed": self.changed, "new": self.new, "removed": self.removed,
                "line_only": self.line_only, "sections": self.sections}


class ObjectView:
    """Indexes over one object: its functions, data items and reloc targets."""

    def __init__(self, obj: ElfObject) -> None:
        self.obj = obj
        self.items: list[Item] = []
        self.by_sec: dict[int, list[Item]] = defaultdict(list)
        self.funcs: dict[str, list[Item]] = {}  # name -> [main part, cold parts...]
        self.canon: dict[str, str] = {}  # this object's name -> name used for comparing
        self._starts: dict[int, list[int]] = {}
        self._insns: dict[int, tuple[list[int], list[int]]] = {}
        self._fp: dict[int, object] = {}
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
        """Instruction starts and ends of an exec section (linear sweep)."""
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
        """Distance from a pc-relative field to the end of its instruction."""
        if not r.pcrel or not sec.is_exec:
            return 0
        if r.type == 4:  # PLT32: call/jmp rel32, the field ends the instruction
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

    def _item_named(self, s) -> Item | None:
        for it in self.by_sec.get(s.shndx, ()):
            if it.name == s.name and it.start == s.value:
                return it
        return None

    def key(self, sec: Section, r: Reloc, stack: frozenset[int] = frozenset()) -> tuple:
        """What a relocation refers to, independent of numbering and layout."""
        kind, what, off = self.target(sec, r)
        if kind in ("undef", "abs", "section"):
            return (kind, what, off, r.type)
        if kind == "str":
            tsec: Section = what  # type: ignore[assignment]
            spot = off + self.pc_adjust(sec, r)
            start = tsec.data.rfind(b"\0", 0, max(spot, 0)) + 1 if spot > 0 else 0
            end = tsec.data.find(b"\0", max(spot, 0))
            end = len(tsec.data) if end < 0 else end
            return ("str", tsec.name, tsec.data[start:end], off - start, r.type)
        if kind == "cst":
            tsec = what  # type: ignore[assignment]
            spot = off + self.pc_adjust(sec, r)
            e = tsec.entsize
            start = max(spot, 0) // e * e
            return ("cst", tsec.name, tsec.data[start:start + e], off - start, r.type)
        it: Item = what  # type: ignore[assignment]
        if it.kind in ("func", "cold"):
            return ("func", self.canon.get(it.name, it.name), off, r.type)
        if it.kind == "data" or (it.kind == "section" and self.obj.sections[it.shndx].is_write):
            return ("data", self.canon.get(it.name, it.name), off, r.type)
        # read-only: compare by content, so renumbered or changed rodata is seen
        name = base_name(it.name) if it.local else it.name
        return ("rodata", name, self.fingerprint(it, stack), off, r.type)

    def fingerprint(self, it: Item, stack: frozenset[int] = frozenset()) -> object:
        """Bytes with relocation fields zeroed, plus the keys of those relocations."""
        ident = id(it)
        if ident in self._fp:
            return self._fp[ident]
        if ident in stack:  # a cycle of read-only objects pointing at each other
            return ("cycle", it.name)
        sec = self.obj.sections[it.shndx]
        if sec.type == SHT_NOBITS:
            fp: object = ("nobits", it.end - it.start)
        else:
            buf = bytearray(sec.data[it.start:it.end])
            keys = []
            for r in self.relocs_in(it.shndx, it.start, it.end):
                size = reloc_info(r.type)[1]
                lo = r.offset - it.start
                buf[lo:lo + size] = bytes(size)
                keys.append((lo, self.key(sec, r, stack | {ident})))
            fp = (bytes(buf), tuple(keys))
        self._fp[ident] = fp
        return fp

    def func_fingerprint(self, name: str) -> tuple:
        parts = self.funcs[name]
        return tuple((p.kind, p.end - p.start, self.fingerprint(p)) for p in parts)

    def referrers(self) -> dict[str, frozenset[str]]:
        """Data and function symbol -> the functions that refer to it."""
        refs: dict[str, set[str]] = defaultdict(set)
        for fname, parts in self.funcs.items():
            for p in parts:
                sec = self.obj.sections[p.shndx]
                for r in self.relocs_in(p.shndx, p.start, p.end):
                    kind, what, _off = self.target(sec, r)
                    if kind == "item" and what is not p:
                        refs[what.name].add(fname)  # type: ignore[union-attr]
        return {k: frozenset(v) for k, v in refs.items()}

    def bug_entries(self) -> dict[str, list[tuple]]:
        """``__bug_table`` entries per function: (offset, file key, flags, line)."""
        out: dict[str, list[tuple]] = defaultdict(list)
        for sec in self.obj.sections.values():
            if sec.name != "__bug_table":
                continue
            rl = self.obj.relocs.get(sec.index, [])
            size = _bug_entry_size(sec, rl)
            if size is None:
                continue
            by_off = {r.offset: r for r in rl}
            for e in range(0, sec.size, size):
                r = by_off.get(e)
                if r is None:
                    continue
                kind, what, off = self.target(sec, r)
                if kind != "item" or what.kind not in ("func", "cold"):  # type: ignore[union-attr]
                    continue
                fname = what.owner or what.name  # type: ignore[union-attr]
                fr = by_off.get(e + 4)
                fkey = self.key(sec, fr) if (fr is not None and size == 12) else None
                if size == 12:
                    line = int.from_bytes(sec.data[e + 8:e + 10], "little")
                    flags = int.from_bytes(sec.data[e + 10:e + 12], "little")
                else:
                    line, flags = 0, int.from_bytes(sec.data[e + 4:e + 6], "little")
                out[fname].append((what.name, off, fkey, flags, line))  # type: ignore[union-attr]
        return out


def _bug_entry_size(sec: Section, rl: Sequence[Reloc]) -> int | None:
    if sec.entsize in (8, 12):
        return sec.entsize
    offs = {r.offset for r in rl}
    if sec.size % 12 == 0 and all(o % 12 in (0, 4) for o in offs):
        return 12
    if sec.size % 8 == 0 and all(o % 8 == 0 for o in offs):
        return 8
    return None


# -- correlation of GCC-numbered local names ---------------------------------

def correlate(pre_names: Iterable[str], post_names: Iterable[str],
              pre_refs: dict[str, frozenset[str]],
              post_refs: dict[str, frozenset[str]]) -> dict[str, str]:
    """Map post names to pre names, pairing GCC-renumbered locals.

    Names without a numeric suffix pair by equality.  ``count.3``-style names
    pair first by the set of functions referring to them, then by order when
    the counts agree; what stays unpaired is new or removed.
    """
    pre_set, post_set = set(pre_names), set(post_names)
    out = {n: n for n in post_set & pre_set if not _NUMBERED.match(n)}
    groups_pre: dict[str, list[str]] = defaultdict(list)
    groups_post: dict[str, list[str]] = defaultdict(list)
    for n in pre_set:
        if _NUMBERED.match(n) or n not in out:
            groups_pre[base_name(n)].append(n)
    for n in post_set:
        if _NUMBERED.match(n) or n not in out:
            groups_post[base_name(n)].append(n)

    def num(n: str) -> int:
        m = _NUMBERED.match(n)
        return int(m.group(2)[1:]) if m else -1

    for base, posts in groups_post.items():
        pres = list(groups_pre.get(base, []))
        if not pres:
            continue
        posts = list(posts)
        # by referrers (functions compared by their own base names)
        def sig(n: str, refs: dict[str, frozenset[str]]) -> frozenset[str]:
            return frozenset(base_name(x) for x in refs.get(n, frozenset()))
        by_sig_pre: dict[frozenset[str], list[str]] = defaultdict(list)
        for n in pres:
            by_sig_pre[sig(n, pre_refs)].append(n)
        by_sig_post: dict[frozenset[str], list[str]] = defaultdict(list)
        for n in posts:
            by_sig_post[sig(n, post_refs)].append(n)
        for s, ps in by_sig_post.items():
            if s and len(ps) == 1 and len(by_sig_pre.get(s, [])) == 1:
                out[ps[0]] = by_sig_pre[s][0]
        left_post = sorted((n for n in posts if n not in out), key=num)
        used = set(out.values())
        left_pre = sorted((n for n in pres if n not in used), key=num)
        if len(left_post) == len(left_pre):
            out.update(zip(left_post, left_pre, strict=True))
        else:
            for n in left_post:
                if n in left_pre:
                    out[n] = n
    return out


# -- line-number-only changes -----------------------------------------------

LineMap = Callable[[int], "int | None"]


def line_map_from_patch(patch: str, source: str) -> LineMap | None:
    """Pre line -> post line for ``source`` as a unified diff moves it.

    Lines the patch deletes map to None.  Returns None when the patch does not
    touch ``source`` (then every line maps to itself).
    """
    hunks: list[tuple[int, int, list[str]]] = []
    cur: list[str] | None = None
    want = False
    for line in patch.splitlines():
        if line.startswith("+++ "):
            name = line[4:].split("\t")[0].strip()
            name = name[2:] if name[:2] in ("a/", "b/") else name
            want = name == source or name.endswith("/" + source) or source.endswith("/" + name)
            cur = None
            continue
        m = re.match(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@", line)
        if m and want:
            cur = []
            hunks.append((int(m.group(1)), int(m.group(2)), cur))
            continue
        if cur is not None and line[:1] in (" ", "-", "+", ""):
            cur.append(line[:1] or " ")
    if not hunks:
        return None
    table: dict[int, int | None] = {}
    shifts: list[tuple[int, int]] = []  # (first pre line after a hunk, shift)
    for a, b, body in hunks:
        for op in body:
            if op == " ":
                table[a] = b
                a, b = a + 1, b + 1
            elif op == "-":
                table[a] = None
                a += 1
            else:
                b += 1
        shifts.append((a, b - a))

    def mapping(line: int) -> int | None:
        if line in table:
            return table[line]
        shift = 0
        for first, s in shifts:
            if line >= first:
                shift = s
        return line + shift

    return mapping


def _line_candidates(pre: ObjectView, post: ObjectView, pname: str,
                     qname: str) -> list[tuple[bool, int, int]] | None:
    """The (trusted, pre, post) line immediates two functions differ in, or None.

    None means the functions differ in something other than line numbers.  A
    differing instruction must be ``mov $imm, %reg`` on both sides, with a
    plausible line number, feeding the next call (or tail call).  The value is
    *trusted* when that callee takes a line number in that register
    (``__might_sleep``...); for printk-style callees it is only a candidate.
    """
    pp, qp = pre.funcs[pname], post.funcs[qname]
    if len(pp) != len(qp):
        return None
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out: list[tuple[bool, int, int]] = []
    for a, b in zip(pp, qp, strict=True):
        if a.end - a.start != b.end - b.start:
            return None
        fa, fb = pre.fingerprint(a), post.fingerprint(b)
        if fa == fb:
            continue
        (ba, ka), (bb, kb) = fa, fb  # type: ignore[misc]
        if ka != kb:
            return None
        diffs = [i for i in range(len(ba)) if ba[i] != bb[i]]
        ia = list(md.disasm_lite(ba, 0))
        ib = list(md.disasm_lite(bb, 0))
        if [(x[0], x[1]) for x in ia] != [(x[0], x[1]) for x in ib]:
            return None
        starts = [x[0] for x in ib]
        calls = _call_targets(post, b, ib)
        seen: set[int] = set()
        for d in diffs:
            j = bisect.bisect_right(starts, d) - 1
            if j in seen:
                continue
            seen.add(j)
            vals = _line_mov(ia[j], ib[j])
            if vals is None:
                return None
            reg = ib[j][3].split(",")[0].strip()
            callee = _next_call(ib, j, calls)
            if callee is None:
                return None
            if callee in _LINE_ARG_CALLS:
                if reg not in _LINE_ARG_CALLS[callee]:
                    return None
                out.append((True, *vals))
            elif _PRINTK_RE.match(callee) and reg in _ARG_REGS:
                out.append((False, *vals))
            else:
                return None
    return out


def _line_mov(a: tuple, b: tuple) -> tuple[int, int] | None:
    if a[2] != "mov" or b[2] != "mov":
        return None
    ra, _, va = a[3].partition(",")
    rb, _, vb = b[3].partition(",")
    if ra.strip() != rb.strip() or ra.strip() not in _ARG_REGS:
        return None
    try:
        x, y = int(va.strip(), 0), int(vb.strip(), 0)
    except ValueError:
        return None
    if 0 < x < 1_000_000 and 0 < y < 1_000_000 and x != y:
        return x, y
    return None


def _call_targets(view: ObjectView, part: Item, insns: list[tuple]) -> dict[int, str]:
    """Offset (in the part) of each call or tail-call instruction -> callee name."""
    sec = view.obj.sections[part.shndx]
    rel = {r.offset - part.start: r for r in view.relocs_in(part.shndx, part.start, part.end)}
    out = {}
    for addr, size, mnem, _ops in insns:
        if mnem in ("call", "jmp") and (addr + size - 4) in rel:
            kind, what, _off = view.target(sec, rel[addr + size - 4])
            out[addr] = what if isinstance(what, str) else getattr(what, "name", "")
    return out


def _next_call(insns: list[tuple], j: int, calls: dict[int, str]) -> str | None:
    for addr, _size, mnem, _ops in insns[j + 1:j + 40]:
        if mnem == "call" or (mnem == "jmp" and addr in calls):
            return calls.get(addr)
        if mnem in ("ret", "jmp", "ud2"):
            return None
    return None


# -- the diff ----------------------------------------------------------------

def diff_views(pre: ObjectView, post: ObjectView, line_map: LineMap | None = None) -> ObjDiff:
    """Compare two indexed objects; raise ObjdiffRefusal for data changes.

    ``line_map`` (from :func:`line_map_from_patch`) makes __LINE__ detection
    exact: a value counts as a line number only where the patch moves that line
    to exactly that place.  Without it, __bug_table lines and arguments of
    line-taking helpers are trusted, and printk-style arguments are accepted
    only when their shift equals one of those trusted shifts.
    """
    pre_refs, post_refs = pre.referrers(), post.referrers()
    pre_names = [it.name for it in pre.items if it.kind != "section"]
    post_names = [it.name for it in post.items if it.kind != "section"]
    ren = correlate(pre_names, post_names, pre_refs, post_refs)
    post.canon = ren
    pre.canon = {}
    res = ObjDiff(pre.obj.path, post.obj.path)
    res.renames = {q: p for q, p in ren.items() if q != p}

    _check_data(pre, post, ren, res)

    pre_bugs, post_bugs = pre.bug_entries(), post.bug_entries()
    matched_pre = set()
    pending: dict[str, list[tuple[bool, int, int]]] = {}
    for qname in sorted(post.funcs):
        pname = ren.get(qname)
        if pname is None or pname not in pre.funcs:
            res.new.append(qname)
            continue
        matched_pre.add(pname)
        ba, bb = pre_bugs.get(pname, []), post_bugs.get(qname, [])
        if [b[:4] for b in ba] != [(ren.get(b[0], b[0]), *b[1:4]) for b in bb]:
            res.changed.append(qname)
            continue
        cands = [(True, x[4], y[4]) for x, y in zip(ba, bb, strict=True) if x[4] != y[4]]
        if pre.func_fingerprint(pname) != post.func_fingerprint(qname):
            text = _line_candidates(pre, post, pname, qname)
            if text is None:
                res.changed.append(qname)
                continue
            cands += text
        if cands:
            pending[qname] = cands
    trusted = {b - a for cs in pending.values() for t, a, b in cs if t}
    for qname, cands in pending.items():
        if line_map is not None:
            ok = all(line_map(a) == b for _t, a, b in cands)
        else:
            ok = all(t or (b - a) in trusted for t, a, b in cands)
        (res.line_only if ok else res.changed).append(qname)
    res.changed.sort()
    res.line_only.sort()
    res.removed = sorted(n for n in pre.funcs if n not in matched_pre)
    for name in res.keep:
        for part in post.funcs[name]:
            if part.shndx not in res.section_indices:
                res.section_indices.append(part.shndx)
    res.section_indices.sort(key=lambda i: (post.obj.sections[i].name, i))
    res.sections = [post.obj.sections[i].name for i in res.section_indices]
    return res


def _check_data(pre: ObjectView, post: ObjectView, ren: dict[str, str], res: ObjDiff) -> None:
    pre_data = {it.name: it for it in pre.items if it.kind == "data" or
                (it.kind == "section" and pre.obj.sections[it.shndx].is_write)}
    shared_pre = {k for k, v in pre.by_sec.items() if len(v) > 1}
    shared_post = {k for k, v in post.by_sec.items() if len(v) > 1}
    for it in post.items:
        sec = post.obj.sections[it.shndx]
        if not (it.kind == "data" or (it.kind == "section" and sec.is_write)):
            continue
        pname = ren.get(it.name, it.name if it.kind == "section" else None)
        old = pre_data.get(pname) if pname else None
        if old is None:
            res.new_data.append(it.name)
            continue
        osec = pre.obj.sections[old.shndx]
        what = "uninitialised data (.bss)" if sec.type == SHT_NOBITS else "initialised data"
        if (old.end - old.start) != (it.end - it.start):
            raise ObjdiffRefusal(
                f"patch changes the size of {what} '{it.name}' in {sec.name} "
                f"({old.end - old.start} -> {it.end - it.start} bytes); "
                "ksplice cannot change data layout")
        if (osec.type == SHT_NOBITS) != (sec.type == SHT_NOBITS):
            raise ObjdiffRefusal(
                f"patch changes the initial value of '{it.name}' ({osec.name} -> {sec.name}); "
                "ksplice cannot change initialised data")
        if (old.shndx in shared_pre or it.shndx in shared_post) and (
                old.start != it.start or osec.name != sec.name):
            raise ObjdiffRefusal(
                f"patch moves {what} '{it.name}' in {sec.name} "
                f"(offset {old.start:#x} -> {it.start:#x}); ksplice cannot change data layout")
        if sec.type != SHT_NOBITS and pre.fingerprint(old) != post.fingerprint(it):
            raise ObjdiffRefusal(
                f"patch changes the initial value of {what} '{it.name}' in {sec.name}; "
                "ksplice cannot change initialised data")
    res.new_data.sort()


def diff_objects(pre_path: str | Path, post_path: str | Path,
                 line_map: LineMap | None = None) -> ObjDiff:
    """Diff two objects on disk.  Raises ObjdiffRefusal or ElfFormatError."""
    return diff_views(ObjectView(read_object(pre_path)), ObjectView(read_object(post_path)),
                      line_map)


def format_text(d: ObjDiff) -> str:
    """The human-readable report: one ``key: names...`` line per list."""
    lines = []
    for k, v in d.summary().items():
        lines.append(f"{k}: {' '.join(v)}".rstrip())
    if d.renames:
        lines.append("renamed: " + " ".join(f"{q}<-{p}" for q, p in sorted(d.renames.items())))
    if d.new_data:
        lines.append("new_data: " + " ".join(d.new_data))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``ksplice-objdiff PRE.o POST.o [--json]``."""
    ap = argparse.ArgumentParser(prog="ksplice-objdiff",
                                 description="Report the functions a patch changed.")
    ap.add_argument("pre")
    ap.add_argument("post")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--full", action="store_true", help="with --json: all fields")
    ap.add_argument("--patch", help="unified diff, to tell __LINE__ shifts exactly")
    ap.add_argument("--source", help="with --patch: the object's source file (e.g. fs/x.c)")
    args = ap.parse_args(argv)
    try:
        lmap = None
        if args.patch and args.source:
            lmap = line_map_from_patch(Path(args.patch).read_text(errors="replace"), args.source)
        d = diff_objects(args.pre, args.post, lmap)
    except (ObjdiffRefusal, ElfFormatError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"ksplice-objdiff: error: {msg}", file=sys.stderr)
        return 1
    if args.json:
        out = asdict(d) if args.full else d.summary()
        print(json.dumps(out, sort_keys=False))
    else:
        sys.stdout.write(format_text(d))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
