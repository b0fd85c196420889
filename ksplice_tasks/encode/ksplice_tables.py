# SPDX-License-Identifier: GPL-2.0-only
"""The update modules' ``.ksplice.*`` tables: their layout, and assembly that encodes them.

The pipeline describes what the kernel side must resolve and patch as plain
records (:class:`RelocInput`, :class:`SizeInput`, :class:`PatchInput`,
:class:`ImportInput`).  :func:`render_asm` turns one module's records into GNU
assembly: one table per record kind, each a global start label followed by
fixed-size entries and an all-zero terminator (``ld -r`` of a module defines
no ``__start_`` symbols), with strings and System.map candidate arrays in
side sections.  Assembled and ``ld -r``-linked into a collection object, the
tables end up inside the primary or helper module built from ``kmodsrc/``.

Each C struct is described once, in :data:`STRUCTS`; both the assembly
emitter and ``kmodsrc/ksplice_tables.h`` (see :func:`render_struct_header`)
come from that description, so they cannot drift apart.  Symbol candidates
are *System.map* addresses; the module adds the KASLR offset to those inside
the kernel image (``KSPLICE_MAP_TEXT`` .. ``KSPLICE_MAP_END`` in
``modcommon.auto.h``) and leaves the others (per-cpu offsets, absolutes) as
they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ksplice_tasks.artifacts import RelocRecord, SiteRecord
from ksplice_tasks.names import check_id, symbol_label
from ksplice_tasks.symbolmap import parse_system_map as parse_system_map

SystemMap = Mapping[str, Sequence[int]]

DEFAULT_ANCHOR = "_printk"
# Where the kernel image lives when System.map lacks _text/_end: everything
# above the start of the kernel mapping moves with KASLR.
KERNEL_MAP_START = 0xFFFFFFFF80000000

# -- struct descriptions -------------------------------------------------------

# kind -> (C type, size, assembler directive); "str" points into the table's
# _str section, "ptr" is the address of a symbol of the collection object,
# "cand" points at an array of System.map candidates (or is 0 when empty).
_KINDS: dict[str, tuple[str, int, str]] = {
    "str": ("const char *", 8, ".quad"),
    "ptr": ("unsigned long ", 8, ".quad"),
    "cand": ("const unsigned long *", 8, ".quad"),
    "bytes": ("const unsigned char *", 8, ".quad"),
    "u64": ("unsigned long ", 8, ".quad"),
    "s64": ("long ", 8, ".quad"),
    "u32": ("unsigned int ", 4, ".long"),
    "u16": ("unsigned short ", 2, ".short"),
    "u8": ("unsigned char ", 1, ".byte"),
}


@dataclass(frozen=True)
class Field:
    """One member of a table entry: its C name, kind (see ``_KINDS``) and what it is for."""

    name: str
    kind: str
    doc: str

    @property
    def size(self) -> int:
        return _KINDS[self.kind][1]


@dataclass(frozen=True)
class Struct:
    """A table entry type; offsets follow the x86-64 C ABI (natural alignment)."""

    name: str
    table: str
    doc: str
    fields: tuple[Field, ...]

    def layout(self) -> list[tuple[Field, int]]:
        """Each field with its byte offset."""
        out, off = [], 0
        for f in self.fields:
            off = _align(off, f.size)
            out.append((f, off))
            off += f.size
        return out

    @property
    def align(self) -> int:
        return max(f.size for f in self.fields)

    @property
    def size(self) -> int:
        f, off = self.layout()[-1]
        return _align(off + f.size, self.align)

    def offset(self, name: str) -> int:
        for f, off in self.layout():
            if f.name == name:
                return off
        raise KeyError(name)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# Flag bits, shared by the emitter and the C header.
FLAGS: dict[str, tuple[int, str]] = {
    "KSPLICE_RELOC_PCREL": (0x1, "value is S + A - P (P = address of the field)"),
    "KSPLICE_RELOC_SIGNED": (0x2, "a field narrower than 8 bytes holds a signed value"),
    "KSPLICE_PATCH_FENTRY": (0x1, "the old function starts with call __fentry__ on disk"),
    "KSPLICE_SITE_RETURN": (0x1, "kind: jmp __x86_return_thunk (.return_sites)"),
    "KSPLICE_SITE_RETPOLINE": (0x2, "kind: call/jmp/jcc __x86_indirect_thunk_<reg>"),
    "KSPLICE_SITE_STATIC_CALL": (0x3, "kind: call/jmp/jcc __SCT__<name> (.static_call_sites)"),
    "KSPLICE_SITE_JUMP_LABEL": (0x4, "kind: jmp or NOP of a static branch (__jump_table)"),
    "KSPLICE_SITE_ALTERNATIVE": (0x5, "kind: an .altinstructions site's original or one entry"),
    "KSPLICE_SITE_BRANCH": (0x6, "kind: relative branch compared by target (relaxed jumps)"),
    "KSPLICE_CODESITE_ORIGINAL": (0x1, "alternative: the original, as optimize_nops() leaves it"),
    "KSPLICE_CODESITE_UNSUPPORTED": (0x2, "alternative: bytes not predictable; refuse if applied"),
    "KSPLICE_CODESITE_PARAVIRT": (0x4, "alternative's original: a paravirt site, type in feature"),
    "KSPLICE_SITE_PARAVIRT": (0x7, "kind: pv_ops call site (.parainstructions), type in feature"),
    "KSPLICE_SITE_SMP_LOCK": (0x8, "kind: lock prefix (.smp_locks)"),
}

# SiteInput.kind -> the KSPLICE_SITE_* value the kernel side switches on.
SITE_KIND_VALUES: dict[str, int] = {
    "return": FLAGS["KSPLICE_SITE_RETURN"][0],
    "retpoline": FLAGS["KSPLICE_SITE_RETPOLINE"][0],
    "static_call": FLAGS["KSPLICE_SITE_STATIC_CALL"][0],
    "jump_label": FLAGS["KSPLICE_SITE_JUMP_LABEL"][0],
    "alternative": FLAGS["KSPLICE_SITE_ALTERNATIVE"][0],
    "branch": FLAGS["KSPLICE_SITE_BRANCH"][0],
    "paravirt": FLAGS["KSPLICE_SITE_PARAVIRT"][0],
    "smp_lock": FLAGS["KSPLICE_SITE_SMP_LOCK"][0],
}

RELOC = Struct("ksplice_reloc", "ksplice_relocs",
               "A relocation the module resolves itself; the site is section_addr + offset.", (
                   Field("symbol", "str", "System.map name of the target"),
                   Field("label", "str", "symbol, or symbol____<tag> if local to its object"),
                   Field("section", "str", "collection section holding the site"),
                   Field("section_addr", "ptr", "start of that section in this module"),
                   Field("offset", "u64", "site offset within the section"),
                   Field("addend", "s64", "A"),
                   Field("candidates", "cand", "System.map addresses of symbol"),
                   Field("nr_candidates", "u32", "entries in candidates"),
                   Field("type", "u16", "ELF relocation type (R_X86_64_*)"),
                   Field("size", "u8", "field size in bytes"),
                   Field("flags", "u8", "KSPLICE_RELOC_*"),
               ))

SIZE = Struct("ksplice_size", "ksplice_sizes",
              "A function carried by this module and where the running kernel may have it.", (
                  Field("name", "str", "System.map name of the function"),
                  Field("label", "str", "name, or name____<tag> if local to its object"),
                  Field("size", "u64", "bytes of the copy in this module"),
                  Field("thismod_addr", "ptr", "the copy in this module"),
                  Field("candidates", "cand", "System.map addresses of name"),
                  Field("nr_candidates", "u32", "entries in candidates"),
                  Field("flags", "u32", "reserved, 0"),
              ))

PATCH = Struct("ksplice_patch", "ksplice_patches",
               "An old function to redirect to its replacement in the primary.", (
                   Field("oldname", "str", "System.map name of the old function"),
                   Field("label", "str", "oldname, or oldname____<tag> if local"),
                   Field("replname", "str", "symbol of the replacement"),
                   Field("oldaddr", "u64", "System.map address if unique, else 0"),
                   Field("repladdr", "ptr", "the replacement in this module"),
                   Field("flags", "u32", "KSPLICE_PATCH_*"),
               ))

IMPORT = Struct("ksplice_import", "ksplice_imports",
                "An unexported kernel symbol the module itself needs (e.g. text_poke).", (
                    Field("name", "str", "System.map name"),
                    Field("candidates", "cand", "System.map addresses of name"),
                    Field("nr_candidates", "u32", "entries in candidates"),
                    Field("flags", "u32", "reserved, 0"),
                ))

CODESITE = Struct("ksplice_codesite", "ksplice_codesites",
                  "An instruction of the helper's code the kernel rewrites at boot.", (
                      Field("section_addr", "ptr", "start of its section in this module"),
                      Field("offset", "u64", "instruction offset within the section"),
                      Field("target", "s64", "jump label: target offset in the section, or -1"),
                      Field("kind", "u8", "KSPLICE_SITE_*"),
                      Field("len", "u8", "instruction bytes in this module"),
                      Field("reg", "u8", "retpoline: the register (0 = rax ... 15 = r15)"),
                      Field("flags", "u8", "KSPLICE_CODESITE_*"),
                      Field("feature", "u16", "cpuid word (alternative), pv_ops type (paravirt)"),
                      Field("repl_len", "u8", "alternative: bytes of the replacement"),
                      Field("template", "bytes", "alternative: len final bytes (rel32 zeroed)"),
                      Field("symbol", "str", "alternative: System.map name its call/jmp reaches"),
                      Field("candidates", "cand", "System.map addresses of symbol"),
                      Field("nr_candidates", "u32", "entries in candidates"),
                      Field("addend", "s64", "alternative: the branch goes to symbol + addend"),
                  ))

STRUCTS: tuple[Struct, ...] = (RELOC, SIZE, PATCH, IMPORT, CODESITE)

# -- input records -------------------------------------------------------------


@dataclass(frozen=True)
class RelocInput:
    """A relocation stripped from collection code, to be resolved by the module.

    ``anchor`` is a symbol of the collection object at the start of
    ``section`` (the globalize pass's ``<section>_global``).  ``label`` is
    :func:`ksplice_tasks.names.symbol_label` of the target ("" means the
    System.map name of ``symbol``).
    """

    symbol: str
    section: str
    offset: int
    pcrel: bool
    addend: int
    size: int
    anchor: str
    type: int = 0
    signed: bool = False
    label: str = ""


def relocs_from_records(records: Iterable[RelocRecord], anchor_suffix: str = "_global",
                        tag: str = "") -> list[RelocInput]:
    """Table inputs from one object's pass records (its ``tag`` labels local targets).

    Each section's anchor is globalize's alias of it.
    """
    return [RelocInput(r.symbol, r.section, r.offset, r.pcrel, r.addend, r.size,
                       r.section + anchor_suffix, r.type, r.signed,
                       symbol_label(map_name(r.symbol), tag, r.local and bool(tag)))
            for r in records]


@dataclass(frozen=True)
class SizeInput:
    """A function carried by the module; ``pointer`` names its copy in the collection.

    ``label`` as in :class:`RelocInput` ("" means ``name``).
    """

    name: str
    size: int
    pointer: str
    label: str = ""


@dataclass(frozen=True)
class PatchInput:
    """Redirect ``oldname`` (running kernel) to ``replacement`` (a primary symbol).

    ``label`` as in :class:`RelocInput` ("" means ``oldname``).
    """

    oldname: str
    replacement: str
    flags: int = 0
    label: str = ""


@dataclass(frozen=True)
class ImportInput:
    """A kernel symbol the module's own code needs but cannot link against."""

    name: str


@dataclass(frozen=True)
class SiteInput:
    """A boot-rewritten instruction of the helper's code; ``anchor`` starts its section.

    ``kind`` is a key of :data:`SITE_KIND_VALUES`; see
    :class:`~ksplice_tasks.artifacts.SiteRecord` for the other fields.
    """

    anchor: str
    offset: int
    kind: str
    length: int
    reg: int = 0
    target: int = -1
    feature: int = 0
    template: str = ""  # hex, as in SiteRecord
    repl_len: int = 0
    symbol: str = ""
    addend: int = 0
    flags: int = 0


def sites_from_records(records: Iterable[SiteRecord], anchor_suffix: str = "_global"
                       ) -> list[SiteInput]:
    """Table inputs from helper site records; anchors as in :func:`relocs_from_records`."""
    return [SiteInput(s.section + anchor_suffix, s.offset, s.kind, s.length, s.reg, s.target,
                      s.feature, s.template, s.repl_len, s.symbol, s.addend,
                      s.flags)
            for s in records]


@dataclass(frozen=True)
class ModuleTables:
    """Everything one module (primary or helper) carries; empty tables are fine."""

    relocs: Sequence[RelocInput] = ()
    sizes: Sequence[SizeInput] = ()
    patches: Sequence[PatchInput] = ()
    imports: Sequence[ImportInput] = ()
    sites: Sequence[SiteInput] = ()


# -- System.map ------------------------------------------------------------------

# A relocation names a section only when its target has no symbol of its own.
# .text.<fn>, .data.<var> and .bss.<var> then still mean that symbol, but
# .rodata.<fn> holds anonymous data such as <fn>'s switch jump table, whose
# address run-pre matching must read from the running code instead.
_SECTION_PREFIXES = (".text.", ".data.", ".bss.")
def map_name(name: str) -> str:
    """The System.map name of a symbol or section name (``.text.foo`` -> ``foo``)."""
    for p in _SECTION_PREFIXES:
        if name.startswith(p) and len(name) > len(p):
            return name[len(p):]
    return name


def candidates(system_map: SystemMap, name: str) -> list[int]:
    """Every System.map address the running kernel may have ``name`` at."""
    return list(system_map.get(map_name(name), ()))


def unique_address(system_map: SystemMap, name: str) -> int:
    """The address when System.map has exactly one, else 0 (run-pre matching decides)."""
    c = candidates(system_map, name)
    return c[0] if len(c) == 1 else 0


# -- assembly ---------------------------------------------------------------------

_PLAIN_SYM = re.compile(r"^[A-Za-z_.$][A-Za-z0-9_.$]*$")


def asm_symbol(name: str) -> str:
    """A symbol as gas reads it: plain names as they are, others quoted."""
    if _PLAIN_SYM.match(name):
        return name
    if '"' in name or "\\" in name or "\n" in name:
        raise ValueError(f"symbol name cannot be expressed in assembly: {name!r}")
    return f'"{name}"'


def asm_string(s: str) -> str:
    """A ``.string`` operand: printable ASCII kept, everything else octal-escaped."""
    out = []
    for b in s.encode():
        c = chr(b)
        if c in '"\\' or not 32 <= b < 127:
            out.append(f"\\{b:03o}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


class _Emitter:
    """Collects one table's lines: entries, strings (deduplicated) and candidate arrays."""

    def __init__(self, struct: Struct) -> None:
        self.struct = struct
        self.entries: list[str] = []
        self.strings: dict[str, str] = {}
        self.str_lines: list[str] = []
        self.cand_lines: list[str] = []
        self.ncand = 0
        self.nblob = 0

    def _label(self, what: str, n: int) -> str:
        return f".L{self.struct.table}_{what}{n}"

    def string(self, s: str) -> str:
        if s not in self.strings:
            label = self._label("str", len(self.strings))
            self.strings[s] = label
            self.str_lines += [f"{label}:", f"\t.string {asm_string(s)}"]
        return self.strings[s]

    def blob(self, data: bytes) -> str:
        """A label of ``data`` in the table's _str section (not NUL-terminated)."""
        label = self._label("bytes", self.nblob)
        self.nblob += 1
        self.str_lines += [f"{label}:", "\t.byte " + ", ".join(f"{b:#x}" for b in data)]
        return label

    def cands(self, addrs: Sequence[int]) -> str:
        if not addrs:
            return "0"
        label = self._label("cand", self.ncand)
        self.ncand += 1
        self.cand_lines.append(f"{label}:")
        self.cand_lines += [f"\t.quad {a:#x}" for a in addrs]
        return label

    def entry(self, values: Mapping[str, object], comment: str) -> None:
        """One struct; values are ints, or str for str/ptr/cand fields."""
        self.entries.append(f"\t/* {comment} */" if comment else "\t/* terminator */")
        cur = 0
        for f, off in self.struct.layout():
            if off > cur:
                self.entries.append(f"\t.zero {off - cur}")
            v = values.get(f.name, 0)
            if f.kind == "str":
                v = self.string(str(v)) if v else "0"
            elif f.kind == "bytes":
                v = self.blob(bytes(v)) if v else "0"  # type: ignore[call-overload]
            elif f.kind == "ptr":
                v = asm_symbol(str(v)) if v else "0"
            elif not isinstance(v, str):
                v = int(v)  # type: ignore[call-overload]
                if f.kind != "s64" and v < 0:
                    raise ValueError(f"{self.struct.name}.{f.name}: negative value {v}")
            self.entries.append(f"\t{_KINDS[f.kind][2]} {v}")
            cur = off + f.size
        if self.struct.size > cur:
            self.entries.append(f"\t.zero {self.struct.size - cur}")

    def lines(self) -> list[str]:
        t = self.struct.table
        out = [f'\t.section .ksplice.{t}_str, "a"'] + self.str_lines
        out += [f'\t.section .ksplice.{t}_cand, "a"', "\t.balign 8"] + self.cand_lines
        out += [f'\t.section .ksplice.{t}, "a"', "\t.balign 8", f"\t.globl {t}",
                f"\t.type {t}, @object", f"{t}:"]
        out += self.entries
        out += [f"\t.size {t}, . - {t}", ""]
        return out


def _comment(s: str) -> str:
    return s.replace("*/", "* /")


def reloc_flags(r: RelocInput) -> int:
    """KSPLICE_RELOC_* bits of a record."""
    return ((FLAGS["KSPLICE_RELOC_PCREL"][0] if r.pcrel else 0)
            | (FLAGS["KSPLICE_RELOC_SIGNED"][0] if r.signed else 0))


def _reloc_rows(relocs: Iterable[RelocInput], smap: SystemMap, em_cands
                ) -> Iterable[tuple[dict[str, object], str]]:
    for r in relocs:
        if r.size not in (1, 2, 4, 8):
            raise ValueError(f"relocation at {r.section}+{r.offset:#x}: size {r.size}")
        c = candidates(smap, r.symbol)
        yield ({"symbol": map_name(r.symbol), "label": reloc_label(r),
                "section": r.section, "section_addr": r.anchor,
                "offset": r.offset, "addend": r.addend, "candidates": em_cands(c),
                "nr_candidates": len(c), "type": r.type, "size": r.size,
                "flags": reloc_flags(r)},
               f"{r.section}+{r.offset:#x} -> {r.symbol}{r.addend:+#x}")


def reloc_label(r: RelocInput) -> str:
    """The label the kernel side looks ``r`` up by (``label`` field of ksplice_reloc)."""
    return r.label or map_name(r.symbol)


def size_label(z: SizeInput) -> str:
    """The label of a carried function (``label`` field of ksplice_size)."""
    return z.label or map_name(z.name)


def patch_label(p: PatchInput) -> str:
    """The label of a patched function (``label`` field of ksplice_patch)."""
    return p.label or map_name(p.oldname)


def own_new_functions(primary: ModuleTables) -> set[str]:
    """Labels of the functions the primary adds: carried (sizes) but patched in nowhere.

    kmodsrc/patch.c ``ksplice_own_function`` resolves a relocation of one of
    these labels to the primary's own copy, before run-pre and System.map:
    System.map may lack the name, or list an unrelated static of that name.
    """
    patched = {patch_label(p) for p in primary.patches}
    return {size_label(z) for z in primary.sizes} - patched


def unresolvable_relocs(primary: ModuleTables, helper: ModuleTables,
                        system_map: SystemMap) -> list[RelocInput]:
    """The primary's relocations that no apply can give a value: each would abort it.

    Mirrors kmodsrc/patch.c ``ksplice_reloc_value``, which takes a value, by
    label, from the primary's own new function (:func:`own_new_functions`),
    else from run-pre matching (a matched helper function, or a value read
    at a helper relocation: kmodsrc/runpre.c ``ksplice_runpre_lookup``),
    else from the one System.map candidate.  What is left aborts as
    ``unresolved``: a name the running kernel lacks and the update does not
    define, or one System.map has several times that run-pre never sees.
    """
    seen = {reloc_label(r) for r in helper.relocs} | {size_label(z) for z in helper.sizes}
    seen |= own_new_functions(primary)
    return [r for r in primary.relocs
            if reloc_label(r) not in seen and len(candidates(system_map, r.symbol)) != 1]


def render_table(struct: Struct, records: Sequence[object], system_map: SystemMap) -> str:
    """Assembly for one table of ``struct`` entries built from matching input records."""
    em = _Emitter(struct)
    for values, comment in _rows(struct, records, system_map, em.cands):
        em.entry(values, _comment(comment))
    em.entry({}, "")
    return "\n".join(em.lines()) + "\n"


def _rows(struct: Struct, records: Sequence[object], smap: SystemMap, em_cands
          ) -> Iterable[tuple[dict[str, object], str]]:
    if struct is RELOC:
        yield from _reloc_rows(records, smap, em_cands)  # type: ignore[arg-type]
        return
    for rec in records:
        if struct is SIZE and isinstance(rec, SizeInput):
            c = candidates(smap, rec.name)
            yield ({"name": map_name(rec.name), "label": size_label(rec),
                    "size": rec.size, "thismod_addr": rec.pointer,
                    "candidates": em_cands(c), "nr_candidates": len(c)},
                   f"{rec.name} size {rec.size:#x}")
        elif struct is PATCH and isinstance(rec, PatchInput):
            yield ({"oldname": map_name(rec.oldname),
                    "label": patch_label(rec), "replname": rec.replacement,
                    "oldaddr": unique_address(smap, rec.oldname), "repladdr": rec.replacement,
                    "flags": rec.flags},
                   f"{rec.oldname} -> {rec.replacement}")
        elif struct is IMPORT and isinstance(rec, ImportInput):
            c = candidates(smap, rec.name)
            yield ({"name": map_name(rec.name), "candidates": em_cands(c),
                    "nr_candidates": len(c)}, rec.name)
        elif struct is CODESITE and isinstance(rec, SiteInput):
            maxlen = 256 if rec.kind in ("alternative", "paravirt") else 16
            if rec.kind not in SITE_KIND_VALUES or not 0 < rec.length < maxlen or not (
                    0 <= rec.reg < 16) or (rec.kind == "alternative"
                                           and len(rec.template) != 2 * rec.length):
                raise ValueError(f"site {rec.anchor}+{rec.offset:#x}: kind {rec.kind!r}, "
                                 f"length {rec.length}, reg {rec.reg}")
            c = candidates(smap, rec.symbol) if rec.symbol else []
            yield ({"section_addr": rec.anchor, "offset": rec.offset, "target": rec.target,
                    "kind": SITE_KIND_VALUES[rec.kind], "len": rec.length, "reg": rec.reg,
                    "flags": rec.flags, "feature": rec.feature, "repl_len": rec.repl_len,
                    "template": bytes.fromhex(rec.template), "symbol": map_name(rec.symbol),
                    "candidates": em_cands(c), "nr_candidates": len(c), "addend": rec.addend},
                   f"{rec.kind} {rec.anchor}+{rec.offset:#x}")
        else:
            raise TypeError(f"{type(rec).__name__} record in a {struct.name} table")


def render_asm(tables: ModuleTables, system_map: SystemMap) -> str:
    """Assembly for all five tables of one module (empty ones are just a terminator).

    Assemble with ``gcc -c -x assembler`` and ``ld -r`` the object with the
    collection object that defines the anchors and pointers.
    """
    parts = ["/* Generated by ksplice_tasks.encode.ksplice_tables: .ksplice.* tables. */", ""]
    for struct, recs in ((RELOC, tables.relocs), (SIZE, tables.sizes),
                         (PATCH, tables.patches), (IMPORT, tables.imports),
                         (CODESITE, tables.sites)):
        parts.append(render_table(struct, list(recs), system_map))
    return "\n".join(parts)


# -- headers -----------------------------------------------------------------------

def render_modcommon(update_id: str, system_map: SystemMap,
                     anchor: str = DEFAULT_ANCHOR) -> str:
    """``modcommon.auto.h``: the id, and System.map addresses for the KASLR offset."""
    check_id(update_id)
    addrs = candidates(system_map, anchor)
    if len(addrs) != 1:
        raise ValueError(f"System.map has {len(addrs)} addresses for anchor {anchor!r}, "
                         "need exactly one")
    text = system_map.get("_text") or [KERNEL_MAP_START]
    end = system_map.get("_end") or [0xFFFFFFFFFFFFFFFF]
    # Core kernel text: run-pre matching reads nothing outside it (init
    # text is unmapped after boot).
    stext = system_map.get("_stext") or text
    etext = system_map.get("_etext") or end
    return "".join([
        "/* SPDX-License-Identifier: GPL-2.0 */\n",
        "/* Generated by ksplice_tasks.encode.ksplice_tables: do not edit. */\n",
        "#ifndef _KSPLICE_MODCOMMON_AUTO_H\n",
        "#define _KSPLICE_MODCOMMON_AUTO_H\n\n",
        f'#define KSPLICE_ID "{update_id}"\n',
        f"#define KSPLICE_ID_TOKEN {update_id}\n",
        f"#define KSPLICE_ANCHOR {anchor}\n",
        f'#define KSPLICE_ANCHOR_NAME "{anchor}"\n',
        f"#define KSPLICE_MAP_ANCHOR {addrs[0]:#x}UL\n",
        f"#define KSPLICE_MAP_TEXT {min(text):#x}UL\n",
        f"#define KSPLICE_MAP_END {max(end):#x}UL\n",
        f"#define KSPLICE_MAP_STEXT {min(stext):#x}UL\n",
        f"#define KSPLICE_MAP_ETEXT {max(etext):#x}UL\n\n",
        "#endif\n",
    ])


HEADER_NAME = "ksplice_tables.h"


def render_struct_header() -> str:
    """``kmodsrc/ksplice_tables.h``: the C side of :data:`STRUCTS` and :data:`FLAGS`."""
    lines = [
        "/* SPDX-License-Identifier: GPL-2.0 */",
        "/*",
        " * Layout of the .ksplice.* tables that ksplice-create links into the",
        " * update modules.  Generated from ksplice_tasks/encode/ksplice_tables.py",
        " * regenerate with: python -m ksplice_tasks.encode.headers",
        " *",
        " * Each table starts at a global label named after it and ends with an",
        " * all-zero entry.  Candidates are System.map addresses.",
        " */",
        "#ifndef _KSPLICE_TABLES_H",
        "#define _KSPLICE_TABLES_H",
        "",
    ]
    for name, (value, doc) in FLAGS.items():
        lines.append(f"#define {name} {value:#x} /* {doc} */")
    for s in STRUCTS:
        lines += ["", f"/* {s.doc} */", f"struct {s.name} {{"]
        for f in s.fields:
            ctype = _KINDS[f.kind][0]
            lines.append(f"\t{ctype}{f.name}; /* {f.doc} */")
        lines.append("};")
    lines += [""]
    for s in STRUCTS:
        lines.append(f"extern const struct {s.name} {s.table}[];")
    lines += ["", "#endif /* _KSPLICE_TABLES_H */", ""]
    return "\n".join(lines)
