# SPDX-License-Identifier: GPL-2.0-only
"""Byte-level surgery on ELF64 little-endian objects, for the malformed-object tests.

Field offsets are the gABI's (ELF-64 Object File Format): the 64-byte ELF
header, 64-byte section headers, 24-byte ``Elf64_Sym`` and ``Elf64_Rela``
entries.  Every helper returns a new ``bytes``; nothing here validates.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# name -> (offset, struct format) inside the ELF header.
EHDR_FIELDS = {
    "EI_CLASS": (4, "B"), "EI_DATA": (5, "B"), "EI_VERSION": (6, "B"),
    "e_type": (16, "H"), "e_machine": (18, "H"), "e_version": (20, "I"),
    "e_entry": (24, "Q"), "e_phoff": (32, "Q"), "e_shoff": (40, "Q"), "e_flags": (48, "I"),
    "e_ehsize": (52, "H"), "e_phentsize": (54, "H"), "e_phnum": (56, "H"),
    "e_shentsize": (58, "H"), "e_shnum": (60, "H"), "e_shstrndx": (62, "H"),
}
# name -> (offset, format) inside one section header.
SHDR_FIELDS = {
    "sh_name": (0, "I"), "sh_type": (4, "I"), "sh_flags": (8, "Q"), "sh_addr": (16, "Q"),
    "sh_offset": (24, "Q"), "sh_size": (32, "Q"), "sh_link": (40, "I"), "sh_info": (44, "I"),
    "sh_addralign": (48, "Q"), "sh_entsize": (56, "Q"),
}
# name -> (offset, format) inside one Elf64_Sym.
SYM_FIELDS = {
    "st_name": (0, "I"), "st_info": (4, "B"), "st_other": (5, "B"), "st_shndx": (6, "H"),
    "st_value": (8, "Q"), "st_size": (16, "Q"),
}
# name -> (offset, format) inside one Elf64_Rela; r_info's halves are addressed apart.
RELA_FIELDS = {
    "r_offset": (0, "Q"), "r_type": (8, "I"), "r_sym": (12, "I"), "r_addend": (16, "q"),
}
SHT_SYMTAB, SHT_RELA, SHT_GROUP = 2, 4, 17


class Shdr(NamedTuple):
    index: int
    name: str
    type: int
    offset: int
    size: int
    link: int
    info: int
    header_at: int  # file offset of this section header


def _get(data: bytes, at: int, fmt: str) -> int:
    return struct.unpack_from("<" + fmt, data, at)[0]


def put(data: bytes, at: int, fmt: str, value: int) -> bytes:
    """``data`` with the field ``fmt`` at file offset ``at`` set to ``value`` (wrapped)."""
    out = bytearray(data)
    bits = struct.calcsize(fmt) * 8
    if fmt.islower():  # signed
        value = (value + (1 << (bits - 1))) % (1 << bits) - (1 << (bits - 1))
    else:
        value %= 1 << bits
    struct.pack_into("<" + fmt, out, at, value)
    return bytes(out)


def ehdr(data: bytes, field: str) -> int:
    at, fmt = EHDR_FIELDS[field]
    return _get(data, at, fmt)


def set_ehdr(data: bytes, field: str, value: int) -> bytes:
    at, fmt = EHDR_FIELDS[field]
    return put(data, at, fmt, value)


def sections(data: bytes) -> list[Shdr]:
    """The section headers of a well-formed object, names resolved."""
    shoff, shnum, shstrndx = ehdr(data, "e_shoff"), ehdr(data, "e_shnum"), ehdr(data, "e_shstrndx")
    raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + 64 * i) for i in range(shnum)]
    strtab_off = raw[shstrndx][4]

    def name(off: int) -> str:
        start = strtab_off + off
        return data[start:data.index(b"\0", start)].decode()

    return [Shdr(i, name(h[0]), h[1], h[4], h[5], h[6], h[7], shoff + 64 * i)
            for i, h in enumerate(raw)]


def section(data: bytes, name: str) -> Shdr:
    return next(s for s in sections(data) if s.name == name)


def set_shdr(data: bytes, index: int, field: str, value: int) -> bytes:
    at, fmt = SHDR_FIELDS[field]
    return put(data, ehdr(data, "e_shoff") + 64 * index + at, fmt, value)


def entry_at(data: bytes, sec: Shdr, n: int, fields: dict, field: str) -> tuple[int, str]:
    """(file offset, format) of ``field`` in the ``n``-th 24-byte entry of ``sec``."""
    at, fmt = fields[field]
    return sec.offset + 24 * n + at, fmt


def set_sym(data: bytes, n: int, field: str, value: int) -> bytes:
    symtab = next(s for s in sections(data) if s.type == SHT_SYMTAB)
    at, fmt = entry_at(data, symtab, n, SYM_FIELDS, field)
    return put(data, at, fmt, value)


def set_rela(data: bytes, rela_name: str, n: int, field: str, value: int) -> bytes:
    at, fmt = entry_at(data, section(data, rela_name), n, RELA_FIELDS, field)
    return put(data, at, fmt, value)
