# SPDX-License-Identifier: GPL-2.0-only
"""The kernel's special sections on x86-64 (Linux 6.1): one table, data not code.

Compilers, the kernel's inline asm and objtool put, beside the code, sections
that are *about* the code: tables of fixed-size entries that each name one
spot of code (an alternative, a BUG(), an exception fixup, a jump label...),
the instructions some of them point at, and metadata (exports, tracing, debug
info).  objdiff must not compare them as code or data, keep-primary must carry
the entries about the code it keeps, and run-pre matching must know which
spots the kernel rewrites.  Each :class:`KernelSection` row below says, for
one section name (or name prefix):

* ``kind``: a :attr:`Kind.TABLE` of entries, :attr:`Kind.REPLACEMENT` code
  that entries point at, other :attr:`Kind.SPECIAL_TEXT`, or
  :attr:`Kind.METADATA` to ignore;
* ``layouts``: the entry layouts the 6.1 headers allow (size in bytes and each
  field's offset, size and :class:`Role`); :func:`entry_layout` picks the one
  an object actually uses, from ``sh_entsize`` or from the object itself;
* ``parallel``: a section cut entry by entry together with this one;
* ``loader``: where the 6.1 module loader applies it to a module ("" if not);
* ``carried``: whether keep-primary keeps the entries about kept code;
* ``per_function``: one ``SHF_LINK_ORDER`` section per function, kept whole.

Every layout was checked against the Linux 6.1.192 sources named in the row's
``source``.  A new special section is one more row; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from ksplice_tasks.obj.elfread import ElfFormatError, ElfObject, Reloc, Section


class Kind(StrEnum):
    """What a special section is."""

    TABLE = "table"  # fixed-size entries, each about a spot of code
    REPLACEMENT = "replacement"  # instructions that table entries point at
    SPECIAL_TEXT = "special text"  # code outside any function: not compared, not carried
    METADATA = "metadata"  # build, export, tracing and debug metadata: ignored


class Role(StrEnum):
    """What one field of a table entry holds."""

    CODE = "code"  # address of the instruction(s) the entry is about
    REPLACEMENT = "replacement"  # address of the replacement instructions
    TARGET = "target"  # where control goes instead (jump target, fixup)
    KEY = "key"  # the static key or static call key (low bits: flags)
    FILE = "file"  # a string: the source file name
    CODE_LEN = "code length"  # bytes of the original instruction(s)
    REPLACEMENT_LEN = "replacement length"  # bytes of the replacement
    VALUE = "value"  # a plain number (line, flags, cpuid, type...)


RELOCATED_ROLES = frozenset({Role.CODE, Role.REPLACEMENT, Role.TARGET, Role.KEY, Role.FILE})


@dataclass(frozen=True)
class Field:
    """One field of an entry: byte ``offset`` and ``size`` inside it, and its role.

    Address fields (:data:`RELOCATED_ROLES`) are filled by a relocation in an
    object; ``signed`` says how the stored value reads (a 32-bit
    ``x - .`` displacement is signed).
    """

    name: str
    offset: int
    size: int
    role: Role
    signed: bool = False

    @property
    def relocated(self) -> bool:
        return self.role in RELOCATED_ROLES


@dataclass(frozen=True)
class Layout:
    """One entry layout: its size in bytes, its fields, and the config that selects it."""

    size: int
    fields: tuple[Field, ...]
    config: str = ""

    @cached_property
    def reloc_offsets(self) -> frozenset[int]:
        """Offsets (inside an entry) where a relocation may stand."""
        return frozenset(f.offset for f in self.fields if f.relocated)

    def field(self, role_or_name: str) -> Field | None:
        """The first field with that role, or else with that name."""
        for f in self.fields:
            if f.role == role_or_name:
                return f
        for f in self.fields:
            if f.name == role_or_name:
                return f
        return None


@dataclass(frozen=True)
class KernelSection:
    """One row: what a special section (or every section with a name prefix) is."""

    name: str
    kind: Kind
    doc: str
    layouts: tuple[Layout, ...] = ()
    parallel: str = ""  # a section whose entries go one to one with this one's
    loader: str = ""  # where the 6.1 module loader applies it ("" if not)
    carried: bool = False  # keep-primary keeps the entries about kept code
    per_function: bool = False  # one SHF_LINK_ORDER section per function
    prefix: bool = False  # ``name`` is a prefix
    source: str = ""  # where the layout was checked (Linux 6.1 tree)

    @property
    def loader_applies(self) -> bool:
        return bool(self.loader)


def _disp(name: str, role: Role, offset: int = 0) -> Field:
    """A 32-bit ``target - .`` field (R_X86_64_PC32 in an object)."""
    return Field(name, offset, 4, role, signed=True)


def _site_table(name: str, doc: str, loader: str, source: str, *,
                carried: bool = True) -> KernelSection:
    """A table of 32-bit displacements to instructions (objtool's site lists)."""
    return KernelSection(name, Kind.TABLE, doc, (Layout(4, (_disp("site", Role.CODE),)),),
                         loader=loader, carried=carried, source=source)


def _meta(name: str, doc: str, *, prefix: bool = False) -> KernelSection:
    return KernelSection(name, Kind.METADATA, doc, prefix=prefix)


_MODULE_FINALIZE = "arch/x86/kernel/module.c: module_finalize()"
_SECTION_OBJS = "kernel/module/main.c: find_module_sections()"

SECTIONS: tuple[KernelSection, ...] = (
    # -- tables of entries about code ----------------------------------------
    KernelSection(
        "__bug_table", Kind.TABLE, "struct bug_entry: where BUG()/WARN() trap, and why",
        (Layout(12, (_disp("bug_addr_disp", Role.CODE), _disp("file_disp", Role.FILE, 4),
                     Field("line", 8, 2, Role.VALUE), Field("flags", 10, 2, Role.VALUE)),
                "CONFIG_DEBUG_BUGVERBOSE=y"),
         Layout(8, (_disp("bug_addr_disp", Role.CODE), Field("flags", 4, 2, Role.VALUE)),
                "CONFIG_DEBUG_BUGVERBOSE=n (2 bytes of padding)")),
        loader="lib/bug.c: module_bug_finalize()", carried=True,
        source="include/asm-generic/bug.h struct bug_entry (x86-64 selects "
               "CONFIG_GENERIC_BUG_RELATIVE_POINTERS); arch/x86/include/asm/bug.h _BUG_FLAGS"),
    KernelSection(
        "__ex_table", Kind.TABLE, "struct exception_table_entry: faulting insn -> fixup",
        (Layout(12, (_disp("insn", Role.CODE), _disp("fixup", Role.TARGET, 4),
                     Field("data", 8, 4, Role.VALUE, signed=True))),),
        loader=_SECTION_OBJS, carried=True,
        source="arch/x86/include/asm/extable.h struct exception_table_entry; "
               "arch/x86/include/asm/asm.h _ASM_EXTABLE_TYPE"),
    KernelSection(
        ".altinstructions", Kind.TABLE, "struct alt_instr: instructions replaced at boot/load",
        (Layout(12, (_disp("instr_offset", Role.CODE), _disp("repl_offset", Role.REPLACEMENT, 4),
                     Field("cpuid", 8, 2, Role.VALUE), Field("instrlen", 10, 1, Role.CODE_LEN),
                     Field("replacementlen", 11, 1, Role.REPLACEMENT_LEN))),),
        loader=_MODULE_FINALIZE + " -> apply_alternatives()", carried=True,
        source="arch/x86/include/asm/alternative.h struct alt_instr (__packed)"),
    KernelSection(
        "__jump_table", Kind.TABLE, "struct jump_entry: a static branch (jump label)",
        (Layout(16, (_disp("code", Role.CODE), _disp("target", Role.TARGET, 4),
                     Field("key", 8, 8, Role.KEY, signed=True))),),
        loader=_SECTION_OBJS + " (CONFIG_JUMP_LABEL)", carried=True,
        source="include/linux/jump_label.h struct jump_entry "
               "(CONFIG_HAVE_ARCH_JUMP_LABEL_RELATIVE); arch/x86/include/asm/jump_label.h "
               "JUMP_TABLE_ENTRY (key: R_X86_64_PC64, low bits are flags)"),
    KernelSection(
        ".static_call_sites", Kind.TABLE,
        "struct static_call_site: an inline static call (not carried: the replaced code "
        "keeps its call through the trampoline, which __static_call_update() always "
        "rewrites first, so it stays correct; the module loader would need the key, "
        "mostly unexported, and would rewrite the call before the ksplice core writes it)",
        (Layout(8, (_disp("addr", Role.CODE), _disp("key", Role.KEY, 4))),),
        loader=_SECTION_OBJS + " (CONFIG_HAVE_STATIC_CALL_INLINE)",
        source="include/linux/static_call_types.h struct static_call_site; "
               "tools/objtool/check.c create_static_call_sections()"),
    _site_table(".retpoline_sites", "indirect calls/jumps through a retpoline thunk",
                _MODULE_FINALIZE + " -> apply_retpolines()",
                "tools/objtool/check.c create_retpoline_sites_sections() (sizeof(int))"),
    _site_table(".return_sites", "returns through the return thunk",
                _MODULE_FINALIZE + " -> apply_returns()",
                "tools/objtool/check.c create_return_sites_sections() (sizeof(int))"),
    _site_table(".call_sites", "call depth accounting sites (Linux 6.2 on; absent in 6.1)",
                "", "not in 6.1; objtool's s32 site list from 6.2"),
    _site_table(".ibt_endbr_seal", "ENDBR instructions to seal (CONFIG_X86_KERNEL_IBT)",
                _MODULE_FINALIZE + " -> apply_ibt_endbr()",
                "tools/objtool/check.c create_ibt_endbr_seal_sections() (sizeof(int))"),
    _site_table(".smp_locks", "LOCK prefixes turned off on a uniprocessor",
                _MODULE_FINALIZE + " -> alternatives_smp_module_add()",
                "arch/x86/include/asm/alternative.h LOCK_PREFIX_HERE"),
    _site_table(".kcfi_traps", "Clang KCFI trap sites (the loader reads __kcfi_traps)",
                "", "kernel/cfi.c module_cfi_finalize() (s32 entries)", carried=False),
    KernelSection(
        "__mcount_loc", Kind.TABLE, "the call __fentry__ at each function's entry (ftrace)",
        (Layout(8, (Field("ip", 0, 8, Role.CODE),)),),
        loader=_SECTION_OBJS + " (CONFIG_FTRACE_MCOUNT_RECORD)", carried=True,
        source="include/linux/ftrace.h FTRACE_CALLSITE_SECTION; "
               "tools/objtool/check.c create_mcount_loc_sections() (sizeof(unsigned long))"),
    KernelSection(
        "__patchable_function_entries", Kind.TABLE,
        "GCC -fpatchable-function-entry: one section per function, linked to its text",
        (Layout(8, (Field("ip", 0, 8, Role.CODE),)),), carried=True, per_function=True,
        source="include/linux/ftrace.h FTRACE_CALLSITE_SECTION (not x86 in 6.1); "
               "include/asm-generic/vmlinux.lds.h PATCHABLE_DISCARDS"),
    KernelSection(
        ".orc_unwind_ip", Kind.TABLE, "ORC: the instruction each .orc_unwind entry starts at",
        (Layout(4, (_disp("ip", Role.CODE),)),), parallel=".orc_unwind",
        loader=_MODULE_FINALIZE + " -> unwind_module_init()", carried=True,
        source="arch/x86/kernel/unwind_orc.c unwind_module_init() (int *orc_ip)"),
    KernelSection(
        ".orc_unwind", Kind.TABLE, "struct orc_entry: unwind rules; cut with .orc_unwind_ip",
        (Layout(6, (Field("sp_offset", 0, 2, Role.VALUE, signed=True),
                    Field("bp_offset", 2, 2, Role.VALUE, signed=True),
                    Field("regs_type_end", 4, 2, Role.VALUE))),),
        loader=_MODULE_FINALIZE + " -> unwind_module_init()",
        source="arch/x86/include/asm/orc_types.h struct orc_entry (__packed)"),
    KernelSection(
        ".parainstructions", Kind.TABLE,
        "struct paravirt_patch_site: pv_ops calls patched at boot/load (not carried: "
        "the replaced code keeps its indirect pv_ops calls, which stay correct)",
        (Layout(16, (Field("instr", 0, 8, Role.CODE), Field("type", 8, 1, Role.VALUE),
                     Field("len", 9, 1, Role.CODE_LEN), Field("clobbers", 10, 2, Role.VALUE))),),
        loader=_MODULE_FINALIZE + " -> apply_paravirt()",
        source="arch/x86/include/asm/paravirt_types.h struct paravirt_patch_site and "
               "_paravirt_alt (_ASM_ALIGN, _ASM_PTR, .byte, .byte, .short, _ASM_ALIGN)"),
    # -- code outside functions ------------------------------------------------
    KernelSection(".altinstr_replacement", Kind.REPLACEMENT,
                  "replacement instructions of .altinstructions entries",
                  loader=_MODULE_FINALIZE + " (through .altinstructions)", carried=True,
                  source="arch/x86/include/asm/alternative.h ALTINSTR_REPLACEMENT"),
    KernelSection(".altinstr_aux", Kind.REPLACEMENT,
                  "static_cpu_has() slow paths, jumped to from an alternative's original "
                  "instruction (carried block by block with the kept code that jumps there)",
                  carried=True,
                  source="arch/x86/include/asm/cpufeature.h _static_cpu_has"),
    KernelSection(".static_call.text", Kind.SPECIAL_TEXT, "static call trampolines",
                  source="arch/x86/include/asm/static_call.h"),
    KernelSection(".fixup", Kind.SPECIAL_TEXT, "old-style exception fixup code"),
    # -- metadata ----------------------------------------------------------------
    *(_meta(n, d) for n, d in (
        ("__tracepoints", "tracepoint structs"),
        ("__tracepoints_ptrs", "pointers to tracepoints"),
        ("__tracepoints_strings", "tracepoint names"),
        ("_ftrace_events", "trace event descriptions"),
        ("_ftrace_eval_map", "trace event enum maps"),
        ("__dyndbg", "dynamic debug descriptors"),
        ("__dyndbg_classes", "dynamic debug classes"),
        ("__ksymtab_strings", "exported symbol names"),
        (".modinfo", "module information strings"),
        ("__param", "module parameters"),
        ("__modver", "module version attributes"),
        (".init.setup", "boot command line handlers"),
        (".comment", "compiler identification"),
        (".eh_frame", "call frame information"),
        ("__bpf_raw_tp_map", "BPF raw tracepoint map"),
        (".export_symbol", "export markers (later kernels)"),
        ("__kcrctab", "export CRCs"),
        ("__kcrctab_gpl", "GPL export CRCs"),
        ("__ksymtab", "export table"),
        ("__ksymtab_gpl", "GPL export table"),
        (".gnu.linkonce.this_module", "struct module of a .ko"),
        ("__versions", "CRCs of a module's imports"),
        (".data..ro_after_init.__jump_table", "jump table moved read-only after init"),
        ("__syscalls_metadata", "syscall trace metadata"),
        ("_kprobe_blacklist", "functions kprobes must not probe"),
        ("_error_injection_whitelist", "functions error injection may override"),
        (".static_call_tramp_key", "static call trampoline -> key"),
        (".con_initcall.init", "console initcalls"),
        (".ctors", "constructors"),
        (".init_array", "constructors"),
        (".orc_header", "ORC format hash (later kernels)"),
    )),
    *(_meta(n, d, prefix=True) for n, d in (
        (".discard", "sections the kernel link discards"),
        (".note", "ELF notes"),
        (".debug_", "DWARF"),
        (".rela", "relocation sections"),
        ("___ksymtab", "per-symbol export entries"),
        ("__ksymtab_", "export tables"),
        ("__kcrctab_", "export CRCs"),
        (".initcall", "initcall tables"),
        (".gnu.", "GNU extensions (and .gnu.linkonce.*)"),
        (".BTF", "BPF type information"),
        ("__tracepoint_str", "tracepoint strings"),
        (".printk_index", "printk format index"),
    )),
)

_BY_NAME: dict[str, KernelSection] = {r.name: r for r in SECTIONS if not r.prefix}
_PREFIX_ROWS: tuple[KernelSection, ...] = tuple(r for r in SECTIONS if r.prefix)
_EXACT = frozenset(_BY_NAME)
_PREFIXES = tuple(r.name for r in _PREFIX_ROWS)

# Tables keep-primary cuts entry by entry, and the per-function ones it keeps whole.
CARRIED_TABLES = frozenset(r.name for r in SECTIONS
                           if r.kind == Kind.TABLE and r.carried and not r.per_function)
PER_FUNCTION_TABLES = frozenset(r.name for r in SECTIONS
                                if r.kind == Kind.TABLE and r.carried and r.per_function)

# Relocations the module loader must resolve itself, because it rewrites the
# instruction they sit in before the ksplice core could resolve anything:
# ftrace finds its call sites in a module through them (kernel/trace/ftrace.c
# ftrace_module_init()) and turns them into NOPs; module_finalize() (through
# apply_retpolines() and apply_returns() of arch/x86/kernel/alternative.c)
# decodes each .retpoline_sites/.return_sites instruction's target and
# rewrites it for the CPU's mitigation only when that target is the thunk
# (it warns and leaves it otherwise).  All of them are exported in 6.1
# (arch/x86/lib/retpoline.S EXPORT_THUNK, EXPORT_SYMBOL(__x86_return_thunk)),
# so the loader can resolve them.
RETPOLINE_THUNKS = tuple(f"__x86_indirect_thunk_{r}" for r in (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"))
LOADER_SYMBOLS = frozenset({"__fentry__", "__x86_return_thunk", *RETPOLINE_THUNKS})

# Sections whose code the running kernel frees after boot (or never keeps):
# nothing to match or patch there.  include/asm-generic/vmlinux.lds.h INIT_TEXT
# and EXIT_TEXT; kernel/module/main.c module_init_section()/module_exit_section().
DISCARDED_PREFIXES = (".init.", ".exit.")


def is_discarded(section: str) -> bool:
    """Whether a section's code is gone from the running kernel (``.init.*``, ``.exit.*``)."""
    return section.startswith(DISCARDED_PREFIXES)


def is_special(name: str) -> bool:
    """Whether a section is one of the rows here: kernel tables, special text or metadata.

    Such sections are never compared as code or data, nor carried as such.
    """
    return name in _EXACT or name.startswith(_PREFIXES)


def row(name: str) -> KernelSection | None:
    """The row for a section name (exact names before prefixes), or None."""
    r = _BY_NAME.get(name)
    if r is not None:
        return r
    for p in _PREFIX_ROWS:
        if name.startswith(p.name):
            return p
    return None


# -- entries -------------------------------------------------------------------

class TableLayoutError(ElfFormatError):
    """A table's entry size cannot be derived (or contradicts the object)."""


def entry_layout(obj: ElfObject, sec: Section) -> tuple[int, Layout | None]:
    """(entry size in bytes, layout or None) of table section ``sec`` in ``obj``.

    Sizes are derived, never assumed: ``sh_entsize`` when set (the layout of
    that size if the row has one, else None: the fields are unknown); else the
    first of the row's layouts that the object agrees with: the section size is
    a multiple of it and every relocation stands at an address field of an
    entry.  Raises TableLayoutError when the section is no table of this module,
    its size is no multiple of ``sh_entsize`` (or a relocated field straddles
    two entries of that size), or no layout fits.
    """
    r = row(sec.name)
    if r is None or not r.layouts:
        raise TableLayoutError(f"{obj.path}: {sec.name} is not a table of fixed-size entries")
    relocs = obj.relocs.get(sec.index, ())
    if sec.entsize:
        if sec.size % sec.entsize:
            raise TableLayoutError(f"{obj.path}: {sec.name}: size {sec.size} is not a multiple "
                                   f"of its sh_entsize {sec.entsize}")
        for x in relocs:
            if x.offset % sec.entsize + x.size > sec.entsize:
                raise TableLayoutError(f"{obj.path}: {sec.name}: the relocation at "
                                       f"{x.offset:#x} straddles two {sec.entsize}-byte entries")
        return sec.entsize, next((lay for lay in r.layouts if lay.size == sec.entsize), None)
    for lay in r.layouts:
        if sec.size % lay.size == 0 and all(x.offset % lay.size in lay.reloc_offsets
                                            for x in relocs):
            return lay.size, lay
    sizes = "/".join(str(lay.size) for lay in r.layouts)
    raise TableLayoutError(f"{obj.path}: {sec.name}: {sec.size} bytes and its relocations fit "
                           f"no entry layout ({sizes} bytes) and sh_entsize is not set")


@dataclass(frozen=True)
class Site:
    """A place an entry field names: section index and byte offset in it.

    ``shndx`` is SHN_UNDEF (0) when the relocation's symbol is undefined; then
    ``symbol`` names it and ``offset`` is the addend.
    """

    field: Field
    shndx: int
    offset: int
    symbol: str
    reloc: Reloc


@dataclass(frozen=True)
class TableEntry:
    """One entry of a table section: number, byte range, relocations, layout.

    ``relocs`` are the relocations inside ``[start, end)``, with section
    offsets as in the object.  ``layout`` is None when only the size is known.
    """

    section: int
    index: int
    start: int
    size: int
    relocs: tuple[Reloc, ...]
    layout: Layout | None

    @property
    def end(self) -> int:
        return self.start + self.size

    def field_reloc(self, role_or_name: str) -> Reloc | None:
        """The relocation filling a field (by role or name), or None."""
        f = self.layout.field(role_or_name) if self.layout else None
        if f is None:
            return None
        at = self.start + f.offset
        found = None
        for x in self.relocs:  # the last one at that offset, as the loader would see it
            if x.offset == at:
                found = x
        return found

    def value(self, data: bytes, role_or_name: str) -> int | None:
        """A field's stored value (little-endian) from the table's ``data``, or None."""
        f = self.layout.field(role_or_name) if self.layout else None
        if f is None:
            return None
        lo = self.start + f.offset
        return int.from_bytes(data[lo:lo + f.size], "little", signed=f.signed)

    def sites(self, obj: ElfObject) -> list[Site]:
        """The places the entry's relocated fields name, in field order."""
        if self.layout is None:
            return []
        out = []
        for f in self.layout.fields:
            if not f.relocated:
                continue
            x = self.field_reloc(f.name)
            if x is not None:
                out.append(resolve(obj, f, x))
        return out

    def site(self, obj: ElfObject, role: Role = Role.CODE) -> Site | None:
        """The place the first field of ``role`` names, or None."""
        f = self.layout.field(role) if self.layout else None
        x = self.field_reloc(role) if f is not None else None
        return resolve(obj, f, x) if f is not None and x is not None else None


def resolve(obj: ElfObject, f: Field, x: Reloc) -> Site:
    """Where relocation ``x`` of field ``f`` points: symbol's section, value + addend.

    For a ``target - .`` field (PC32/PC64) and an absolute one (R_X86_64_64)
    alike, the place named is ``S + A``: the ``- .`` is the ``- P`` of the
    relocation (x86-64 psABI, "Relocation Types").
    """
    s = obj.symbols[x.sym]
    if s.in_section:
        return Site(f, s.shndx, s.value + x.addend, s.name, x)
    return Site(f, s.shndx, x.addend, s.name, x)


def table_entries(obj: ElfObject, sec: Section) -> list[TableEntry]:
    """Every entry of table section ``sec`` of ``obj``, in order.

    Raises TableLayoutError as :func:`entry_layout` does.
    """
    size, layout = entry_layout(obj, sec)
    rl = obj.relocs.get(sec.index, [])
    out: list[TableEntry] = []
    j = 0
    for idx in range(sec.size // size):
        start = idx * size
        k = j
        while k < len(rl) and rl[k].offset < start + size:
            k += 1
        out.append(TableEntry(sec.index, idx, start, size, tuple(rl[j:k]), layout))
        j = k
    return out


def parallel_size(name: str) -> int:
    """Entry size of a parallel section (it has one layout); KeyError if it has none."""
    r = _BY_NAME[name]
    if len(r.layouts) != 1:
        raise KeyError(name)
    return r.layouts[0].size
