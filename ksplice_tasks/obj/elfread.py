"""Reading x86-64 ET_REL objects into a small, plain data model.

pyelftools parses the ELF header and the section header table (names
included).  The symbol and RELA tables are fixed-size arrays; they are decoded
with ``struct.iter_unpack`` because building one pyelftools container per entry
costs ~10x more on kernel objects.

Sections are identified by their *index*: names repeat in kernel objects
(one ``__patchable_function_entries`` per function, ``.text`` twice in
group-using objects, and so on).  The model is what :mod:`elfwrite` writes back,
so every field a writer needs is kept: relocation sections keep their name and
flags (:class:`RelaSection`), so a read-write round trip keeps them too.

Objects are untrusted input: before pyelftools sees a file, :func:`check_layout`
checks every header field it will use against the file size, and
:func:`read_object` checks the symbol and relocation entries.  Whatever is
wrong, a truncated file or one absurd field, is one ElfFormatError line naming
the file and the field (tests/hostile/test_malformed_objects.py fuzzes this).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_SH_TYPE_AMD64

# Section header types and flags (ELF gABI).
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOTE = 7
SHT_NOBITS = 8
SHT_REL = 9
SHT_GROUP = 17
SHT_SYMTAB_SHNDX = 18

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_MERGE = 0x10
SHF_STRINGS = 0x20
SHF_INFO_LINK = 0x40
SHF_LINK_ORDER = 0x80
SHF_GROUP = 0x200
# A relocation section the livepatch core applies, not the module loader
# (include/uapi/linux/elf.h; Documentation/livepatch/module-elf-format.rst).
SHF_RELA_LIVEPATCH = 0x00100000

GRP_COMDAT = 0x1  # first word of an SHT_GROUP payload (gABI "Section Groups")

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF

STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4

EM_X86_64 = 62



class RelocType(NamedTuple):
    """What an x86-64 relocation type writes: name, field size (bytes), pc-relative, signed.

    Source: the x86-64 psABI, table "Relocation Types" (field word8/16/32/64,
    calculations S + A - P for the pc-relative ones); signed means the linker
    checks the result against a signed range (R_X86_64_32S, the PC types).
    """

    name: str
    size: int
    pcrel: bool
    signed: bool


# The x86-64 relocation types this tool understands, by r_type.
RELOC_TYPES: dict[int, RelocType] = {
    0: RelocType("R_X86_64_NONE", 0, False, False),
    1: RelocType("R_X86_64_64", 8, False, False),
    2: RelocType("R_X86_64_PC32", 4, True, True),
    4: RelocType("R_X86_64_PLT32", 4, True, True),
    9: RelocType("R_X86_64_GOTPCREL", 4, True, True),
    10: RelocType("R_X86_64_32", 4, False, False),
    11: RelocType("R_X86_64_32S", 4, False, True),
    12: RelocType("R_X86_64_16", 2, False, False),
    13: RelocType("R_X86_64_PC16", 2, True, True),
    14: RelocType("R_X86_64_8", 1, False, False),
    15: RelocType("R_X86_64_PC8", 1, True, True),
    24: RelocType("R_X86_64_PC64", 8, True, True),
    41: RelocType("R_X86_64_GOTPCRELX", 4, True, True),
    42: RelocType("R_X86_64_REX_GOTPCRELX", 4, True, True),
}
R_X86_64_PLT32 = 4
SIGNED_RELOCS = frozenset(t for t, info in RELOC_TYPES.items() if info.signed)
_UNKNOWN_RELOC = RelocType("?", 0, False, False)

_SH_TYPE_NUM = {k: v for k, v in ENUM_SH_TYPE_AMD64.items() if isinstance(v, int)}
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
# Elf64_Ehdr and Elf64_Shdr (gABI "ELF Header", "Sections"), little-endian.
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
ET_REL = 1
ELFCLASS64, ELFDATA2LSB = 2, 1
# The largest sh_addralign accepted: a 2 MiB x86-64 large page.  Kernel objects
# use at most PAGE_SIZE; a larger power of two is legal ELF, but a writer would
# pad the output by up to that much per section.
MAX_ALIGN = 1 << 21


class ElfFormatError(Exception):
    """The input is not an object this tool understands (not x86-64 ET_REL)."""


class SectionHeader(NamedTuple):
    """One raw Elf64_Shdr as it is in the file (gABI "Sections"), after :func:`check_layout`."""

    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


class Layout(NamedTuple):
    """The section header table of a checked object: headers by index, and the
    index of the section name table (``e_shstrndx`` or its SHN_XINDEX escape)."""

    sections: list[SectionHeader]
    shstrndx: int


@dataclass
class Section:
    """One section; ``index`` is its identity inside the object it came from."""

    index: int
    name: str
    type: int
    flags: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int
    data: bytes = b""

    @property
    def is_alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def is_exec(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)

    @property
    def is_write(self) -> bool:
        return bool(self.flags & SHF_WRITE)

    @property
    def is_nobits(self) -> bool:
        return self.type == SHT_NOBITS


@dataclass(frozen=True)
class Symbol:
    """A symbol; ``shndx`` is a section index or one of SHN_UNDEF/ABS/COMMON."""

    name: str
    value: int
    size: int
    type: int
    bind: int
    other: int
    shndx: int

    @property
    def is_defined(self) -> bool:
        return self.shndx != SHN_UNDEF

    @property
    def in_section(self) -> bool:
        return SHN_UNDEF < self.shndx < SHN_LORESERVE


@dataclass(frozen=True)
class Reloc:
    """One RELA entry; ``sym`` indexes :attr:`ElfObject.symbols`."""

    offset: int
    type: int
    sym: int
    addend: int

    @property
    def size(self) -> int:
        """Bytes of the field it patches; 0 for a type outside :data:`RELOC_TYPES`."""
        return RELOC_TYPES.get(self.type, _UNKNOWN_RELOC).size

    @property
    def pcrel(self) -> bool:
        """Whether the stored value is relative to the field's own address (S + A - P)."""
        return RELOC_TYPES.get(self.type, _UNKNOWN_RELOC).pcrel

    @property
    def signed(self) -> bool:
        """Whether the field holds a signed value (see :class:`RelocType`)."""
        return RELOC_TYPES.get(self.type, _UNKNOWN_RELOC).signed


@dataclass(frozen=True)
class RelaSection:
    """The header of one SHT_RELA section (gABI "Relocation"): name, flags, target.

    ``target`` is the index of the section its entries patch (``sh_info``);
    ``sh_link`` is always the object's one symbol table (:func:`read_object`
    refuses others), so the writer sets it and it is not stored.  Compilers
    name it ``.rela<target name>`` with ``SHF_INFO_LINK`` (plus ``SHF_GROUP``
    in a group); a livepatch module's ``.klp.rela.<obj>.<section>`` carries
    ``SHF_RELA_LIVEPATCH | SHF_ALLOC`` as well.
    """

    name: str
    flags: int
    target: int


@dataclass
class ElfObject:
    """An ET_REL object: its sections by index, symbols, and RELA lists.

    ``relocs`` maps a *target* section index to its relocations sorted by
    offset.  The symbol table and string tables are not in ``sections``: a
    writer regenerates them.  Neither are the RELA sections: their entries are
    ``relocs[key]`` and their header ``rela[key]``.  The key of a target's
    first relocation section is the target's index; a further one for the same
    target (``.klp.rela.vmlinux..text.f`` beside ``.rela.text.f``) has a key
    that is no section index (its own input index, or one from
    :meth:`add_rela_section`) and names its target in ``rela[key].target``.
    A key without a ``rela`` entry is written as :meth:`rela_section` says.
    """

    path: str
    header: dict[str, int]
    sections: dict[int, Section]
    symbols: list[Symbol]
    relocs: dict[int, list[Reloc]] = field(default_factory=dict)
    rela: dict[int, RelaSection] = field(default_factory=dict)

    def rela_section(self, key: int) -> RelaSection:
        """The header of relocation list ``relocs[key]``: as read, or the compiler's default.

        The default is ``.rela<target name>`` with ``SHF_INFO_LINK``; the
        writer adds ``SHF_GROUP`` when the target is in a group.  Raises
        KeyError for a key that is neither a section nor in ``rela``.
        """
        hdr = self.rela.get(key)
        if hdr is not None:
            return hdr
        return RelaSection(".rela" + self.sections[key].name, SHF_INFO_LINK, key)

    def add_rela_section(self, name: str, flags: int, target: int,
                         relocs: list[Reloc]) -> int:
        """Add one more relocation section for ``target``; return its key in ``relocs``.

        For sections the target's ordinary ``.rela`` section must not hold,
        e.g. ``.klp.rela.vmlinux.<section>`` (flags ``SHF_RELA_LIVEPATCH |
        SHF_ALLOC | SHF_INFO_LINK``).  Raises KeyError for an unknown target.
        """
        if target not in self.sections:
            raise KeyError(f"no section {target} to relocate")
        key = max([*self.sections, *self.relocs, *self.rela, 0]) + 1
        self.relocs[key] = sorted(relocs, key=lambda r: r.offset)
        self.rela[key] = RelaSection(name, flags, target)
        return key

    def rela_target(self, key: int) -> int:
        """The section index relocation list ``relocs[key]`` patches."""
        hdr = self.rela.get(key)
        return key if hdr is None else hdr.target

    def section_symbols(self) -> dict[int, int]:
        """Section index -> index of its STT_SECTION symbol."""
        return {s.shndx: i for i, s in enumerate(self.symbols) if s.type == STT_SECTION}

    def symbols_in(self, shndx: int) -> Iterator[tuple[int, Symbol]]:
        for i, s in enumerate(self.symbols):
            if s.shndx == shndx:
                yield i, s

    def sections_named(self, name: str) -> list[Section]:
        return [s for s in self.sections.values() if s.name == name]


def reloc_info(r_type: int) -> RelocType:
    """(name, field size, pc-relative, signed) of an x86-64 relocation type.

    Raises ElfFormatError for a type outside :data:`RELOC_TYPES`.
    """
    try:
        return RELOC_TYPES[r_type]
    except KeyError:
        raise ElfFormatError(f"unsupported x86-64 relocation type {r_type}") from None


def group_members(sec: Section) -> list[int]:
    """Section indices of an SHT_GROUP section's members (gABI "Section Groups").

    The payload is a flag word (``GRP_COMDAT``) followed by one 4-byte
    little-endian section index per member.
    """
    return [m for (m,) in struct.iter_unpack("<I", sec.data[4:])]


def group_data(sec: Section, members: Iterable[int]) -> bytes:
    """An SHT_GROUP payload: ``sec``'s flag word, then ``members`` (section indices)."""
    return sec.data[:4] + b"".join(struct.pack("<I", m) for m in members)


def _cstr(table: bytes, off: int) -> str:
    end = table.index(b"\0", off)
    return table[off:end].decode("utf-8", "surrogateescape")


def parse_symbols(data: bytes, strtab: bytes) -> list[Symbol]:
    """Decode an SHT_SYMTAB payload (24-byte Elf64_Sym entries).

    Raises ElfFormatError for an ``st_name`` outside ``strtab`` or with no NUL
    after it in ``strtab``.
    """
    out = []
    for n, (name, info, other, shndx, value, size) in enumerate(_SYM.iter_unpack(data)):
        try:
            text = _cstr(strtab, name)
        except ValueError:
            raise ElfFormatError(f"symbol {n}: st_name {name:#x} is outside the string table "
                                 f"({len(strtab)} bytes)") from None
        out.append(Symbol(text, value, size, info & 0xF, info >> 4, other, shndx))
    return out


def parse_relas(data: bytes) -> list[Reloc]:
    """Decode an SHT_RELA payload, sorted by offset."""
    rel = [Reloc(off, info & 0xFFFFFFFF, info >> 32, add) for off, info, add in
           _RELA.iter_unpack(data)]
    rel.sort(key=lambda r: r.offset)
    return rel


def check_layout(buf: bytes) -> Layout:
    """Check the ELF header and every section header of ``buf`` against its size.

    ``buf`` is a whole file.  Checked (gABI "ELF Header", "Sections", "Section
    Groups"; x86-64 psABI): the magic, ELFCLASS64, ELFDATA2LSB, EM_X86_64,
    ET_REL; ``e_shoff``/``e_shentsize``/``e_shnum`` (or section 0's
    ``sh_size`` when ``e_shnum`` is 0) give a table inside the file;
    ``e_shstrndx`` (or section 0's ``sh_link`` for SHN_XINDEX) names an
    SHT_STRTAB; per section: ``sh_name`` inside the name table, file bytes
    (``sh_offset + sh_size``) inside the file unless SHT_NOBITS, ``sh_link``
    a section index, and for SHT_SYMTAB/SHT_RELA/SHT_GROUP the entry size,
    the linked table and ``sh_info`` (target section or symbol index).
    Returns the raw headers; raises ElfFormatError naming the field (the
    message does not name the file: :func:`read_object` adds it).
    """
    size = len(buf)
    if size < 4 or buf[:4] != b"\x7fELF":
        raise ElfFormatError("not an ELF file (no \\x7fELF magic)")
    if size < _EHDR.size:
        raise ElfFormatError(f"truncated: the ELF header needs {_EHDR.size} bytes, the file "
                             f"has {size}")
    (ident, e_type, e_machine, _version, _entry, _phoff, e_shoff, _flags, _ehsize, _phentsize,
     _phnum, e_shentsize, e_shnum, e_shstrndx) = _EHDR.unpack_from(buf)
    if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB or e_machine != EM_X86_64:
        raise ElfFormatError("only little-endian x86-64 objects are supported (EI_CLASS "
                             f"{ident[4]}, EI_DATA {ident[5]}, e_machine {e_machine})")
    if e_type != ET_REL:
        raise ElfFormatError(f"not a relocatable object (e_type {e_type})")
    if e_shoff == 0:
        raise ElfFormatError("no section header table (e_shoff 0)")
    if e_shentsize != _SHDR.size:
        raise ElfFormatError(f"e_shentsize {e_shentsize} is not {_SHDR.size}")
    if e_shoff + _SHDR.size > size:
        raise ElfFormatError(f"e_shoff {e_shoff:#x} is past EOF ({size} bytes)")
    sec0 = SectionHeader(*_SHDR.unpack_from(buf, e_shoff))
    shnum = e_shnum if e_shnum else sec0.size
    what = "e_shnum" if e_shnum else "e_shnum 0 (SHN_UNDEF) and section 0's sh_size"
    if shnum == 0 or e_shoff + shnum * _SHDR.size > size:
        raise ElfFormatError(f"section header table ({what} {shnum} at e_shoff {e_shoff:#x}) "
                             f"runs past EOF ({size} bytes)")
    if sec0.type != SHT_NULL:
        raise ElfFormatError(f"section 0 is not SHT_NULL (sh_type {sec0.type})")
    shstrndx = e_shstrndx if e_shstrndx != SHN_XINDEX else sec0.link
    what = "e_shstrndx" if e_shstrndx != SHN_XINDEX else "section 0's sh_link (SHN_XINDEX)"
    if not 0 < shstrndx < shnum:
        raise ElfFormatError(f"{what} {shstrndx} is not a section index (e_shnum {shnum})")
    shdrs = [SectionHeader(*h) for h in _SHDR.iter_unpack(
        buf[e_shoff:e_shoff + shnum * _SHDR.size])]
    names = shdrs[shstrndx]
    if names.type != SHT_STRTAB:
        raise ElfFormatError(f"{what} {shstrndx} is not SHT_STRTAB (sh_type {names.type})")
    if names.offset + names.size > size:
        raise ElfFormatError(f"section {shstrndx} (the section name table): sh_offset "
                             f"{names.offset:#x} + sh_size {names.size:#x} is past EOF "
                             f"({size} bytes)")
    for i, h in enumerate(shdrs):
        _check_section(buf, shdrs, i, h, names)
    return Layout(shdrs, shstrndx)


def _check_section(buf: bytes, shdrs: list[SectionHeader], i: int, h: SectionHeader,
                   names: SectionHeader) -> None:
    """One section header's fields against the file size and the table (see check_layout)."""
    size, shnum = len(buf), len(shdrs)
    if h.name >= names.size or buf.find(b"\0", names.offset + h.name,
                                        names.offset + names.size) < 0:
        raise ElfFormatError(f"section {i}: sh_name {h.name:#x} is outside the section name "
                             f"table ({names.size} bytes)")

    def bad(what: str) -> ElfFormatError:  # decodes the name on the error path only
        return ElfFormatError(f"section {i} ({_cstr(buf, names.offset + h.name)}): {what}")

    if h.type not in (SHT_NOBITS, SHT_NULL) and h.offset + h.size > size:
        raise bad(f"sh_offset {h.offset:#x} + sh_size {h.size:#x} is past EOF ({size} bytes)")
    if h.addralign & (h.addralign - 1) or h.addralign > MAX_ALIGN:
        raise bad(f"sh_addralign {h.addralign:#x} is not a power of two up to {MAX_ALIGN:#x}")
    if h.type == SHT_NULL and i:
        raise bad("sh_type SHT_NULL (an inactive header) after section 0")
    if h.type == SHT_REL:
        raise bad("SHT_REL sections are not supported")
    if h.type == SHT_SYMTAB_SHNDX:
        raise bad("extended section indices are not supported")
    if h.link >= shnum:
        raise bad(f"sh_link {h.link} is not a section index (e_shnum {shnum})")
    if h.flags & SHF_INFO_LINK and h.info >= shnum:
        raise bad(f"sh_info {h.info} is not a section index (e_shnum {shnum})")
    entry = {SHT_SYMTAB: _SYM.size, SHT_RELA: _RELA.size}.get(h.type)
    if entry is not None and (h.entsize != entry or h.size % entry):
        raise bad(f"sh_entsize {h.entsize} / sh_size {h.size} is not a whole number of "
                  f"{entry}-byte entries")
    if h.type == SHT_SYMTAB:
        if shdrs[h.link].type != SHT_STRTAB:
            raise bad(f"sh_link {h.link} is not SHT_STRTAB")
        if h.info > h.size // _SYM.size:
            raise bad(f"sh_info {h.info} is past its {h.size // _SYM.size} symbols")
    elif h.type == SHT_RELA:
        if not 0 < h.info < shnum:
            raise bad(f"sh_info {h.info} is not a section index (e_shnum {shnum})")
        if shdrs[h.link].type != SHT_SYMTAB:
            raise bad(f"sh_link {h.link} is not the symbol table")
    elif h.type == SHT_GROUP:
        if h.size < 4 or h.size % 4:
            raise bad(f"sh_size {h.size} is not a flag word and 4-byte member indices")
        if shdrs[h.link].type != SHT_SYMTAB:
            raise bad(f"sh_link {h.link} is not the symbol table")
        if h.info >= shdrs[h.link].size // _SYM.size:
            raise bad(f"sh_info {h.info} (signature) is not a symbol index")
        for (m,) in struct.iter_unpack("<I", buf[h.offset + 4:h.offset + h.size]):
            if not 0 < m < shnum:
                raise bad(f"member {m} is not a section index (e_shnum {shnum})")


def read_object(path: str | Path) -> ElfObject:
    """Parse an x86-64 relocatable object; raise ElfFormatError on anything else.

    Every header field is checked before use (:func:`check_layout`; symbols:
    ``st_name`` inside the string table, ``st_shndx`` a section with contents
    or SHN_UNDEF/SHN_ABS/SHN_COMMON; relocations: ``r_sym`` a symbol index,
    ``r_offset`` plus the field size inside the target section).  Every
    failure, pyelftools' own parse errors included, is one ElfFormatError
    line naming the file and the field.  OSError when the file cannot be read.
    """
    path = str(path)
    buf = Path(path).read_bytes()
    try:
        return _read_object(path, buf, check_layout(buf))
    except ElfFormatError as exc:
        raise ElfFormatError(f"{path}: {exc}") from None
    except (ELFError, struct.error, UnicodeDecodeError, ValueError, LookupError,
            OverflowError, zlib.error, ConstructError) as exc:
        # pyelftools on a header check_layout let through (e.g. a compressed section).
        raise ElfFormatError(f"{path}: malformed ELF object ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())})") from None


def _read_object(path: str, buf: bytes, layout: Layout) -> ElfObject:
    shdrs = layout.sections
    with io.BytesIO(buf) as f:
        elf = ELFFile(f)
        hdr = elf.header
        header = {
            "e_flags": hdr["e_flags"],
            "osabi": _osabi(hdr["e_ident"]["EI_OSABI"]),
        }
        sections: dict[int, Section] = {}
        raw: dict[int, Section] = {}
        for i, sec in enumerate(elf.iter_sections()):
            if i == 0:
                continue
            h = sec.header
            t = h["sh_type"]
            t = _SH_TYPE_NUM[t] if isinstance(t, str) else int(t)
            data = b"" if t in (SHT_NOBITS, SHT_NULL) else sec.data()
            raw[i] = Section(i, sec.name, t, h["sh_flags"], h["sh_size"], h["sh_link"],
                             h["sh_info"], h["sh_addralign"], h["sh_entsize"], data)
        symtabs = [s for s in raw.values() if s.type == SHT_SYMTAB]
        if len(symtabs) != 1:
            raise ElfFormatError(f"expected one symbol table, found {len(symtabs)}")
        symtab = symtabs[0]
        symbols = parse_symbols(symtab.data, raw[symtab.link].data)
        skip = {symtab.index, symtab.link, layout.shstrndx}
        skip.update(i for i, s in raw.items() if s.type in (SHT_RELA, SHT_REL))
        for i, s in raw.items():
            if i not in skip:
                sections[i] = s
        _check_symbols(symbols, sections, shdrs)
        relocs: dict[int, list[Reloc]] = {}
        rela: dict[int, RelaSection] = {}
        for s in raw.values():
            if s.type == SHT_RELA:
                if s.link != symtab.index:
                    raise ElfFormatError(f"{s.name} uses another symbol table")
                target = sections.get(s.info)
                if target is None:
                    raise ElfFormatError(f"{s.name}: sh_info {s.info} is not a section with "
                                         "contents")
                # The first one of a target is keyed by the target, a further one by itself.
                key = s.info if s.info not in rela else s.index
                relocs[key] = parse_relas(s.data)
                _check_relocs(s.name, relocs[key], target, len(symbols))
                rela[key] = RelaSection(s.name, s.flags, s.info)
        return ElfObject(path, header, sections, symbols, relocs, rela)


def _check_symbols(symbols: list[Symbol], sections: dict[int, Section],
                   shdrs: list[SectionHeader]) -> None:
    """Each symbol's ``st_shndx`` is SHN_UNDEF, SHN_ABS, SHN_COMMON or a section in
    ``sections``, and a symbol in a section lies inside it (``st_value +
    st_size <= sh_size``); raise ElfFormatError naming the first that is not."""
    for n, s in enumerate(symbols):
        sec = sections.get(s.shndx)
        if sec is not None and s.value + s.size <= sec.size:
            continue
        if sec is None and s.shndx in (SHN_UNDEF, SHN_ABS, SHN_COMMON):
            continue
        label = f"symbol {n} ({s.name})" if s.name else f"symbol {n}"
        if sec is not None:
            raise ElfFormatError(f"{label}: st_value {s.value:#x} + st_size {s.size:#x} is past "
                                 f"the end of {sec.name} ({sec.size:#x} bytes)")
        what = ("is not a section index" if s.shndx >= len(shdrs)
                else "is not a section with contents")
        raise ElfFormatError(f"{label}: st_shndx {s.shndx:#x} {what} "
                             f"(e_shnum {len(shdrs)})")


def _check_relocs(name: str, relocs: list[Reloc], target: Section, nsyms: int) -> None:
    """Each entry of relocation section ``name`` (sorted by offset) names a symbol
    (``r_sym < nsyms``) and patches bytes inside ``target``; raise ElfFormatError."""
    for r in relocs:
        if r.sym >= nsyms:
            raise ElfFormatError(f"{name}: r_sym {r.sym} at r_offset {r.offset:#x} is not a "
                                 f"symbol index ({nsyms} symbols)")
    if relocs and relocs[-1].offset + 8 > target.size:  # else every field fits
        for r in relocs:
            if r.offset + r.size > target.size:
                raise ElfFormatError(f"{name}: r_offset {r.offset:#x} + {r.size} is past "
                                     f"the end of {target.name} ({target.size:#x} bytes)")


def _osabi(v: object) -> int:
    if isinstance(v, int):
        return v
    return {"ELFOSABI_SYSV": 0, "ELFOSABI_LINUX": 3, "ELFOSABI_GNU": 3}.get(str(v), 0)


def reloc_addend_field(sec: Section, r: Reloc) -> int:
    """The value currently stored in the relocation field (0 in a fresh .o)."""
    size = r.size
    if size == 0:
        return 0
    return int.from_bytes(sec.data[r.offset:r.offset + size], "little", signed=r.signed)


def undefined_symbols(path: str | Path) -> set[str]:
    """Names of the SHN_UNDEF symbols of an ELF object or ``.ko`` (what a linker or
    the module loader must resolve).

    An object without ``.symtab`` has none.  Raises ElfFormatError when
    ``path`` is not an ELF file, OSError when it cannot be read.
    """
    with open(path, "rb") as f:
        try:
            elf = ELFFile(f)
            symtab = next((s for s in elf.iter_sections() if s["sh_type"] == "SHT_SYMTAB"),
                          None)
            if symtab is None:
                return set()
            strtab = elf.get_section(symtab["sh_link"]).data()
            symbols = parse_symbols(symtab.data(), strtab)
        except ElfFormatError as exc:
            raise ElfFormatError(f"{path}: {exc}") from None
        except Exception as exc:  # pyelftools raises several types
            raise ElfFormatError(f"{path}: not an ELF file ({exc})") from None
    return {s.name for s in symbols if s.shndx == SHN_UNDEF and s.name}


def gcc_comment_count(obj: ElfObject) -> int:
    """How many GCC ident strings ``.comment`` holds; >1 means a linked object."""
    n = 0
    for s in obj.sections_named(".comment"):
        n += sum(1 for part in s.data.split(b"\0") if b"GCC" in part)
    return n


def error_line(exc: BaseException, own: tuple[type[BaseException], ...] = ()) -> str:
    """One line for an object command's error (ksplice-objdiff, ksplice-objmanip).

    A malformed object's, an OSError's or one of the command's ``own`` refusals'
    message as it is; anything else is a bug: its type, its message and the hint
    that ``-v`` shows the traceback.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (*own, ElfFormatError, OSError)):
        return text
    return f"{type(exc).__name__}: {text} (-v shows the traceback)"
