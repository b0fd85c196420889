"""Reading x86-64 ET_REL objects into a small, plain data model.

pyelftools parses the ELF header and the section header table (names
included).  The symbol and RELA tables are fixed-size arrays; they are decoded
with ``struct.iter_unpack`` because building one pyelftools container per entry
costs ~10x more on kernel objects.

Sections are identified by their *index*: names repeat in kernel objects
(one ``__patchable_function_entries`` per function, ``.text`` twice in
group-using objects, and so on).  The model is what :mod:`elfwrite` writes back,
so every field a writer needs is kept.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF

STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4

EM_X86_64 = 62

# x86-64 relocation types we need to understand: name, field size, pc-relative.
R_X86_64 = {
    0: ("R_X86_64_NONE", 0, False),
    1: ("R_X86_64_64", 8, False),
    2: ("R_X86_64_PC32", 4, True),
    4: ("R_X86_64_PLT32", 4, True),
    9: ("R_X86_64_GOTPCREL", 4, True),
    10: ("R_X86_64_32", 4, False),
    11: ("R_X86_64_32S", 4, False),
    12: ("R_X86_64_16", 2, False),
    13: ("R_X86_64_PC16", 2, True),
    14: ("R_X86_64_8", 1, False),
    15: ("R_X86_64_PC8", 1, True),
    24: ("R_X86_64_PC64", 8, True),
    41: ("R_X86_64_GOTPCRELX", 4, True),
    42: ("R_X86_64_REX_GOTPCRELX", 4, True),
}
SIGNED_RELOCS = frozenset({2, 4, 9, 11, 13, 15, 24, 41, 42})

_SH_TYPE_NUM = {k: v for k, v in ENUM_SH_TYPE_AMD64.items() if isinstance(v, int)}
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")


class ElfFormatError(Exception):
    """The input is not an object this tool understands (not x86-64 ET_REL)."""


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
        return R_X86_64.get(self.type, ("?", 0, False))[1]

    @property
    def pcrel(self) -> bool:
        return R_X86_64.get(self.type, ("?", 0, False))[2]


@dataclass
class ElfObject:
    """An ET_REL object: its sections by index, symbols, and RELA lists.

    ``relocs`` maps a *target* section index to its relocations sorted by
    offset.  The symbol table, string tables and RELA sections themselves are
    not in ``sections``: a writer regenerates them.
    """

    path: str
    header: dict[str, int]
    sections: dict[int, Section]
    symbols: list[Symbol]
    relocs: dict[int, list[Reloc]] = field(default_factory=dict)

    def section_symbols(self) -> dict[int, int]:
        """Section index -> index of its STT_SECTION symbol."""
        return {s.shndx: i for i, s in enumerate(self.symbols) if s.type == STT_SECTION}

    def symbols_in(self, shndx: int) -> Iterator[tuple[int, Symbol]]:
        for i, s in enumerate(self.symbols):
            if s.shndx == shndx:
                yield i, s

    def sections_named(self, name: str) -> list[Section]:
        return [s for s in self.sections.values() if s.name == name]


def reloc_info(r_type: int) -> tuple[str, int, bool]:
    """(name, field size, pc-relative) of an x86-64 relocation type."""
    try:
        return R_X86_64[r_type]
    except KeyError:
        raise ElfFormatError(f"unsupported x86-64 relocation type {r_type}") from None


def _cstr(table: bytes, off: int) -> str:
    end = table.index(b"\0", off)
    return table[off:end].decode("utf-8", "surrogateescape")


def parse_symbols(data: bytes, strtab: bytes) -> list[Symbol]:
    """Decode an SHT_SYMTAB payload."""
    out = []
    for name, info, other, shndx, value, size in _SYM.iter_unpack(data):
        out.append(Symbol(_cstr(strtab, name), value, size, info & 0xF, info >> 4, other, shndx))
    return out


def parse_relas(data: bytes) -> list[Reloc]:
    """Decode an SHT_RELA payload, sorted by offset."""
    rel = [Reloc(off, info & 0xFFFFFFFF, info >> 32, add) for off, info, add in
           _RELA.iter_unpack(data)]
    rel.sort(key=lambda r: r.offset)
    return rel


def read_object(path: str | Path) -> ElfObject:
    """Parse an x86-64 relocatable object; raise ElfFormatError on anything else."""
    path = str(path)
    with open(path, "rb") as f:
        try:
            elf = ELFFile(f)
        except Exception as exc:  # pyelftools raises several types
            raise ElfFormatError(f"{path}: not an ELF file ({exc})") from None
        hdr = elf.header
        if elf.elfclass != 64 or not elf.little_endian or hdr["e_machine"] != "EM_X86_64":
            raise ElfFormatError(f"{path}: only little-endian x86-64 objects are supported")
        if hdr["e_type"] != "ET_REL":
            raise ElfFormatError(f"{path}: not a relocatable object (e_type {hdr['e_type']})")
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
            raise ElfFormatError(f"{path}: expected one symbol table, found {len(symtabs)}")
        symtab = symtabs[0]
        if any(s.type == SHT_SYMTAB_SHNDX for s in raw.values()):
            raise ElfFormatError(f"{path}: extended section indices are not supported")
        symbols = parse_symbols(symtab.data, raw[symtab.link].data)
        skip = {symtab.index, symtab.link, elf["e_shstrndx"]}
        relocs: dict[int, list[Reloc]] = {}
        for s in raw.values():
            if s.type == SHT_REL:
                raise ElfFormatError(f"{path}: SHT_REL sections are not supported")
            if s.type == SHT_RELA:
                if s.link != symtab.index:
                    raise ElfFormatError(f"{path}: {s.name} uses another symbol table")
                relocs.setdefault(s.info, []).extend(parse_relas(s.data))
                skip.add(s.index)
        for i, s in raw.items():
            if i not in skip:
                sections[i] = s
        for rl in relocs.values():
            rl.sort(key=lambda r: r.offset)
        return ElfObject(path, header, sections, symbols, relocs)


def _osabi(v: object) -> int:
    if isinstance(v, int):
        return v
    return {"ELFOSABI_SYSV": 0, "ELFOSABI_LINUX": 3, "ELFOSABI_GNU": 3}.get(str(v), 0)


def reloc_addend_field(sec: Section, r: Reloc) -> int:
    """The value currently stored in the relocation field (0 in a fresh .o)."""
    size = r.size
    if size == 0:
        return 0
    return int.from_bytes(sec.data[r.offset:r.offset + size], "little",
                          signed=r.type in SIGNED_RELOCS)


def gcc_comment_count(obj: ElfObject) -> int:
    """How many GCC ident strings ``.comment`` holds; >1 means a linked object."""
    n = 0
    for s in obj.sections_named(".comment"):
        n += sum(1 for part in s.data.split(b"\0") if b"GCC" in part)
    return n
