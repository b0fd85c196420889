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
from pathlib import Path

import capstone

from ksplice_tasks.errors import UserError
from ksplice_tasks.obj.elfread import (
    SHT_NOBITS,
    Reloc,
    Section,
    error_line,
    read_object,
    reloc_info,
)
from ksplice_tasks.obj.kernel_sections import (
    Role,
    TableLayoutError,
    is_discarded,
    is_special,
    table_entries,
)
from ksplice_tasks.obj.view import NUMBERED, Item, ObjectView, base_name, gcc_number

__all__ = [
    "ObjDiff", "ObjdiffRefusal", "ObjectView", "Fingerprints", "diff_views", "diff_objects",
    "correlate", "line_map_from_patch", "read_object", "format_text", "main",
]


class ObjdiffRefusal(UserError):
    """The change cannot be applied by replacing code (data or .bss changed).

    ``symbols`` names every refused data symbol; the message (one line) too.
    """

    def __init__(self, message: str, symbols: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.symbols = list(symbols)


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


class Fingerprints:
    """Numbering-independent fingerprints of one view's items (cached).

    ``canon`` maps this object's local names to the names compared (post ->
    pre from :func:`correlate`; empty for the pre side).
    """

    def __init__(self, view: ObjectView, canon: dict[str, str] | None = None) -> None:
        self.view = view
        self.canon = dict(canon or {})
        self._fp: dict[int, object] = {}

    def key(self, sec: Section, r: Reloc, stack: frozenset[int] = frozenset()) -> tuple:
        """What a relocation refers to, independent of numbering and layout."""
        kind, what, off = self.view.target(sec, r)
        if kind in ("undef", "abs", "section"):
            return (kind, what, off, r.type)
        if kind == "str":
            tsec: Section = what  # type: ignore[assignment]
            spot = off + self.view.pc_adjust(sec, r)
            start = tsec.data.rfind(b"\0", 0, max(spot, 0)) + 1 if spot > 0 else 0
            end = tsec.data.find(b"\0", max(spot, 0))
            end = len(tsec.data) if end < 0 else end
            return ("str", tsec.name, tsec.data[start:end], off - start, r.type)
        if kind == "cst":
            tsec = what  # type: ignore[assignment]
            spot = off + self.view.pc_adjust(sec, r)
            e = tsec.entsize
            start = max(spot, 0) // e * e
            return ("cst", tsec.name, tsec.data[start:start + e], off - start, r.type)
        it: Item = what  # type: ignore[assignment]
        if it.kind in ("func", "cold"):
            return ("func", self.canon.get(it.name, it.name), off, r.type)
        if _is_data(self.view, it):
            return ("data", self.canon.get(it.name, it.name), off, r.type)
        # read-only: compare by content, so renumbered or changed rodata is seen
        name = base_name(it.name) if it.local else it.name
        return ("rodata", name, self.fingerprint(it, stack), off, r.type)

    def fingerprint(self, it: Item, stack: frozenset[int] = frozenset()) -> object:
        """Bytes with relocation fields zeroed, plus the keys of those relocations.

        Raises ElfFormatError for a relocation type outside ``RELOC_TYPES``.
        """
        ident = id(it)
        if ident in self._fp:
            return self._fp[ident]
        if ident in stack:  # a cycle of read-only objects pointing at each other
            return ("cycle", it.name)
        sec = self.view.obj.sections[it.shndx]
        if sec.type == SHT_NOBITS:
            fp: object = ("nobits", it.end - it.start)
        else:
            buf = bytearray(sec.data[it.start:it.end])
            keys = []
            for r in self.view.relocs_in(it.shndx, it.start, it.end):
                size = reloc_info(r.type).size
                lo = r.offset - it.start
                buf[lo:lo + size] = bytes(size)
                keys.append((lo, self.key(sec, r, stack | {ident})))
            fp = (bytes(buf), tuple(keys))
        self._fp[ident] = fp
        return fp

    def func_fingerprint(self, name: str) -> tuple:
        """(kind, size, fingerprint) of each part of function ``name``, main part first."""
        parts = self.view.funcs[name]
        return tuple((p.kind, p.end - p.start, self.fingerprint(p)) for p in parts)

    def bug_entries(self) -> dict[str, list[tuple]]:
        """``__bug_table`` entries per function: (part, offset, file key, flags, line).

        The entry layout (12 bytes with CONFIG_DEBUG_BUGVERBOSE, else 8) comes
        from :func:`~ksplice_tasks.obj.kernel_sections.table_entries`; a table
        whose layout cannot be derived is skipped.  Without a file field the
        file key is None and the line 0.
        """
        view = self.view
        out: dict[str, list[tuple]] = defaultdict(list)
        for sec in view.obj.sections.values():
            if sec.name != "__bug_table":
                continue
            try:
                entries = table_entries(view.obj, sec)
            except TableLayoutError:
                continue
            for e in entries:
                r = e.field_reloc(Role.CODE)
                if r is None:
                    continue
                kind, what, off = view.target(sec, r)
                if kind != "item" or what.kind not in ("func", "cold"):  # type: ignore[union-attr]
                    continue
                fname = what.owner or what.name  # type: ignore[union-attr]
                fr = e.field_reloc(Role.FILE)
                fkey = self.key(sec, fr) if fr is not None else None
                line = e.value(sec.data, "line") or 0
                flags = e.value(sec.data, "flags")
                out[fname].append((what.name, off, fkey, flags, line))  # type: ignore[union-attr]
        return out


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
    out = {n: n for n in post_set & pre_set if not NUMBERED.match(n)}
    groups_pre: dict[str, list[str]] = defaultdict(list)
    groups_post: dict[str, list[str]] = defaultdict(list)
    for n in pre_set:
        if NUMBERED.match(n) or n not in out:
            groups_pre[base_name(n)].append(n)
    for n in post_set:
        if NUMBERED.match(n) or n not in out:
            groups_post[base_name(n)].append(n)

    def num(n: str) -> int:
        k = gcc_number(n)
        return -1 if k is None else k

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


def _line_candidates(pre: Fingerprints, post: Fingerprints, pname: str,
                     qname: str) -> list[tuple[bool | None, int, int]] | None:
    """The (trusted, pre, post) line immediates two functions differ in, or None.

    None means the functions differ in something other than line numbers.  A
    differing instruction must be ``mov $imm, %reg`` on both sides, with a
    plausible line number, feeding the next call (or tail call).  The value is
    *trusted* when that callee takes a line number in that register
    (``__might_sleep``...); for printk-style callees it is only a candidate
    (False); for any other callee (a file's own ``f(__func__, __LINE__)``
    helper, arch/x86/kernel/hpet.c hpet_print_config()) it is None: a line
    number only where the patch moves exactly that line to exactly that place
    (:func:`classify_line_only`).
    """
    pp, qp = pre.view.funcs[pname], post.view.funcs[qname]
    if len(pp) != len(qp):
        return None
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out: list[tuple[bool | None, int, int]] = []
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
        calls = _call_targets(post.view, b, ib)
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
                out.append((None, *vals))
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


# -- the diff: named passes ------------------------------------------------------

def diff_views(pre: ObjectView, post: ObjectView, line_map: LineMap | None = None) -> ObjDiff:
    """Compare two indexed objects; raise ObjdiffRefusal for data changes.

    ``line_map`` (from :func:`line_map_from_patch`) makes __LINE__ detection
    exact: a value counts as a line number only where the patch moves that line
    to exactly that place.  Without it, __bug_table lines and arguments of
    line-taking helpers are trusted, and printk-style arguments are accepted
    only when their shift equals one of those trusted shifts.
    """
    ren = correlate_names(pre, post)
    pre_fp, post_fp = Fingerprints(pre), Fingerprints(post, ren)
    new_data = check_data(pre_fp, post_fp, ren)
    check_const_objects(pre_fp, post_fp, ren)
    cmp = compare_functions(pre_fp, post_fp, ren)
    changed, line_only = classify_line_only(cmp, line_map)
    res = ObjDiff(pre.obj.path, post.obj.path, changed=changed, new=cmp.new,
                  removed=list_removed(pre, cmp.matched_pre), line_only=line_only,
                  new_data=new_data, renames={q: p for q, p in ren.items() if q != p})
    res.section_indices = changed_sections(post, res.keep)
    res.sections = [post.obj.sections[i].name for i in res.section_indices]
    return res


def correlate_names(pre: ObjectView, post: ObjectView) -> dict[str, str]:
    """Post item name -> pre item name, GCC-renumbered locals paired (:func:`correlate`)."""
    pre_names = [it.name for it in pre.items if it.kind != "section"]
    post_names = [it.name for it in post.items if it.kind != "section"]
    return correlate(pre_names, post_names, pre.referrers(), post.referrers())


def _is_data(view: ObjectView, it: Item) -> bool:
    return it.kind == "data" or (it.kind == "section" and view.obj.sections[it.shndx].is_write)


def check_data(pre: Fingerprints, post: Fingerprints, ren: dict[str, str]) -> list[str]:
    """The post data items new in the patch (sorted); refuse changed or moved data.

    Every writable item of the post object is checked against its pre
    counterpart: same size, same kind (.bss or initialised), same place when
    it shares a section, same initial value.  All refusals are collected
    first; ObjdiffRefusal then names every refused symbol in one line.
    """
    pv, qv = pre.view, post.view
    pre_data = {it.name: it for it in pv.items if _is_data(pv, it)}
    shared_pre = {k for k, v in pv.by_sec.items() if len(v) > 1}
    shared_post = {k for k, v in qv.by_sec.items() if len(v) > 1}
    new: list[str] = []
    refused: list[tuple[str, str, str]] = []  # (symbol, what the patch does, why not)
    for it in qv.items:
        if not _is_data(qv, it):
            continue
        pname = ren.get(it.name, it.name if it.kind == "section" else None)
        old = pre_data.get(pname) if pname else None
        if old is None:
            new.append(it.name)
            continue
        why = _data_refusal(pre, post, old, it, shared_pre, shared_post)
        if why is not None:
            refused.append((it.name, *why))
    if len(refused) == 1:
        _name, what, reason = refused[0]
        raise ObjdiffRefusal(f"patch {what}; {reason}", [refused[0][0]])
    if refused:
        names = ", ".join(f"'{n}'" for n, _w, _r in refused)
        raise ObjdiffRefusal(
            f"patch changes data ksplice cannot change ({len(refused)} symbols: {names}): "
            + "; ".join(what for _n, what, _r in refused), [n for n, _w, _r in refused])
    return sorted(new)


def _const_escape(view: ObjectView, it: Item) -> str | None:
    """Why the running kernel may reach const object ``it`` other than through the
    functions an update replaces, or None if only such functions refer to it.

    Those are: it is global (other objects refer to it); data refers to it (a
    structure registered with the kernel); init/exit code refers to it (that
    code has run, and stored its address); or it holds code addresses (an
    operations table, whose address is what gets stored and called through).
    """
    obj = view.obj
    if not it.local:
        return "it is global, so other objects refer to the running copy"
    for r in view.relocs_in(it.shndx, it.start, it.end):
        tsym = obj.symbols[r.sym]
        tsec = obj.sections.get(tsym.shndx) if tsym.in_section else None
        if tsec is not None and tsec.is_exec and not is_special(tsec.name):
            return "it holds function pointers (an operations table whose address the " \
                   "running kernel has stored)"
    for k, rl in obj.relocs.items():
        sec = obj.sections.get(k)
        if sec is None or not sec.is_alloc or is_special(sec.name):
            continue
        for r in rl:
            kind, what, _off = view.target(sec, r)
            if kind != "item" or what is not it:
                continue
            if not sec.is_exec:
                return f"{sec.name} refers to it"
            if is_discarded(sec.name):
                return f"{sec.name} code, which has run, refers to it"
    return None


def check_const_objects(pre: Fingerprints, post: Fingerprints, ren: dict[str, str]) -> None:
    """Refuse a changed initializer of a const object the running kernel reaches itself.

    A read-only object whose bytes the patch changes is copied into the update
    with the functions that use it (keep-primary), which is right only when
    those functions are its only users (e.g. a lookup table).  When the
    running kernel holds its address anywhere else (:func:`_const_escape`),
    its users keep the old copy and the update would silently not apply:
    ObjdiffRefusal naming every such object, its section and the reason.
    """
    pv, qv = pre.view, post.view
    pre_ro = {it.name: it for it in pv.items if it.kind == "rodata"}
    refused: list[tuple[str, str]] = []  # (name, "initializer of ... in <section>; why")
    for it in qv.items:
        if it.kind != "rodata":
            continue
        old = pre_ro.get(ren.get(it.name, it.name))
        if old is None or pre.fingerprint(old) == post.fingerprint(it):
            continue
        why = _const_escape(qv, it) or _const_escape(pv, old)
        if why is not None:
            sec = qv.obj.sections[it.shndx].name
            refused.append((it.name, f"initializer of const object '{it.name}' in {sec}; "
                                     f"{why}"))
    if len(refused) == 1:
        raise ObjdiffRefusal(f"patch changes the {refused[0][1]}, and ksplice cannot change "
                             "it there", [refused[0][0]])
    if refused:
        raise ObjdiffRefusal(
            f"patch changes const objects the running kernel reaches itself "
            f"({len(refused)} symbols: {', '.join(repr(n) for n, _ in refused)}): "
            + "; ".join(f"the {w}" for _, w in refused), [n for n, _ in refused])


def _data_refusal(pre: Fingerprints, post: Fingerprints, old: Item, it: Item,
                  shared_pre: set[int], shared_post: set[int]) -> tuple[str, str] | None:
    """(what the patch does, why ksplice cannot) for one data item, or None if unchanged."""
    sec = post.view.obj.sections[it.shndx]
    osec = pre.view.obj.sections[old.shndx]
    what = "uninitialised data (.bss)" if sec.type == SHT_NOBITS else "initialised data"
    if (old.end - old.start) != (it.end - it.start):
        return (f"changes the size of {what} '{it.name}' in {sec.name} "
                f"({old.end - old.start} -> {it.end - it.start} bytes)",
                "ksplice cannot change data layout")
    if (osec.type == SHT_NOBITS) != (sec.type == SHT_NOBITS):
        return (f"changes the initial value of '{it.name}' ({osec.name} -> {sec.name})",
                "ksplice cannot change initialised data")
    if (old.shndx in shared_pre or it.shndx in shared_post) and (
            old.start != it.start or osec.name != sec.name):
        return (f"moves {what} '{it.name}' in {sec.name} "
                f"(offset {old.start:#x} -> {it.start:#x})", "ksplice cannot change data layout")
    if sec.type != SHT_NOBITS and pre.fingerprint(old) != post.fingerprint(it):
        return (f"changes the initial value of {what} '{it.name}' in {sec.name}",
                "ksplice cannot change initialised data")
    return None


@dataclass
class FunctionComparison:
    """What :func:`compare_functions` found, before line-only changes are told apart.

    ``pending`` maps a post function that differs only in line-number
    candidates to those candidates: (trusted, pre line, post line).
    """

    changed: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    matched_pre: set[str] = field(default_factory=set)
    pending: dict[str, list[tuple[bool | None, int, int]]] = field(default_factory=dict)


def compare_functions(pre: Fingerprints, post: Fingerprints,
                      ren: dict[str, str]) -> FunctionComparison:
    """Pair each post function with its pre one and compare bug entries and fingerprints."""
    pv, qv = pre.view, post.view
    out = FunctionComparison()
    pre_bugs, post_bugs = pre.bug_entries(), post.bug_entries()
    for qname in sorted(qv.funcs):
        pname = ren.get(qname)
        if pname is None or pname not in pv.funcs:
            out.new.append(qname)
            continue
        out.matched_pre.add(pname)
        ba, bb = pre_bugs.get(pname, []), post_bugs.get(qname, [])
        if [b[:4] for b in ba] != [(ren.get(b[0], b[0]), *b[1:4]) for b in bb]:
            out.changed.append(qname)
            continue
        cands = [(True, x[4], y[4]) for x, y in zip(ba, bb, strict=True) if x[4] != y[4]]
        if pre.func_fingerprint(pname) != post.func_fingerprint(qname):
            text = _line_candidates(pre, post, pname, qname)
            if text is None:
                out.changed.append(qname)
                continue
            cands += text
        if cands:
            out.pending[qname] = cands
    return out


def classify_line_only(cmp: FunctionComparison,
                       line_map: LineMap | None) -> tuple[list[str], list[str]]:
    """(changed, line-only) function names, both sorted.

    A pending function is line-only when every candidate agrees with
    ``line_map``, or without one, when each is trusted or (printk-style)
    shifts by a trusted shift; a candidate feeding any other callee needs the
    line map.  Otherwise the function is changed.
    """
    changed, line_only = list(cmp.changed), []
    trusted = {b - a for cs in cmp.pending.values() for t, a, b in cs if t}
    for qname, cands in cmp.pending.items():
        if line_map is not None:
            ok = all(line_map(a) == b for _t, a, b in cands)
        else:
            ok = all(t is True or (t is False and (b - a) in trusted) for t, a, b in cands)
        (line_only if ok else changed).append(qname)
    return sorted(changed), sorted(line_only)


def list_removed(pre: ObjectView, matched_pre: set[str]) -> list[str]:
    """Pre functions no post function was paired with, sorted."""
    return sorted(n for n in pre.funcs if n not in matched_pre)


def changed_sections(post: ObjectView, keep: Iterable[str]) -> list[int]:
    """Indices of the post sections holding the kept functions, by (name, index)."""
    out: list[int] = []
    for name in keep:
        for part in post.funcs[name]:
            if part.shndx not in out:
                out.append(part.shndx)
    out.sort(key=lambda i: (post.obj.sections[i].name, i))
    return out


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
    """``ksplice-objdiff PRE.o POST.o [--json] [-v]``; exit status 1 with one line on stderr
    for a refusal, a malformed object or any other error (``-v``: the traceback)."""
    ap = argparse.ArgumentParser(prog="ksplice-objdiff",
                                 description="Report the functions a patch changed.")
    ap.add_argument("pre")
    ap.add_argument("post")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--full", action="store_true", help="with --json: all fields")
    ap.add_argument("--patch", help="unified diff, to tell __LINE__ shifts exactly")
    ap.add_argument("--source", help="with --patch: the object's source file (e.g. fs/x.c)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="on an error, show the traceback too")
    args = ap.parse_args(argv)
    try:
        lmap = None
        if args.patch and args.source:
            lmap = line_map_from_patch(Path(args.patch).read_text(errors="replace"), args.source)
        d = diff_objects(args.pre, args.post, lmap)
    except Exception as exc:
        if args.verbose:
            raise
        print(f"ksplice-objdiff: error: {error_line(exc, (ObjdiffRefusal,))}", file=sys.stderr)
        return 1
    if args.json:
        out = asdict(d) if args.full else d.summary()
        print(json.dumps(out, sort_keys=False))
    else:
        sys.stdout.write(format_text(d))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
