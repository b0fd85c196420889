"""A small ET_REL writer over the :mod:`elfread` model.

lief is not used for writing: on relocatable objects it mis-orders symbols and
corrupts relocations (DESIGN section 4).  objcopy cannot add or remove single
relocations, which every pass here needs.  So this module serialises an
:class:`~ksplice_tasks.obj.elfread.ElfObject` itself:

* ``sections`` is written in dict order; the keys are the *input* indices and
  are only used to resolve references (symbol ``shndx``, relocation targets,
  ``SHF_LINK_ORDER`` links, ``SHT_GROUP`` members);
* each relocation list ``relocs[key]`` becomes an SHT_RELA section right after
  its target, named and flagged as ``rela_section(key)`` says (as read, or
  ``.rela<name>``), ``SHF_GROUP`` following the target's; empty lists are
  left out;
* ``.symtab``, ``.strtab`` and ``.shstrtab`` are regenerated;
* local symbols come first and ``.symtab``'s ``sh_info`` is recomputed.
"""

from __future__ import annotations

import struct
from pathlib import Path

from ksplice_tasks.files import write_atomic
from ksplice_tasks.obj.elfread import (
    EM_X86_64,
    SHF_GROUP,
    SHF_LINK_ORDER,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_GROUP,
    SHT_NOBITS,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    STB_LOCAL,
    STT_SECTION,
    ElfFormatError,
    ElfObject,
    Section,
    group_data,
    group_members,
)

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")


class _StrTab:
    def __init__(self) -> None:
        self.buf = bytearray(b"\0")
        self.seen: dict[str, int] = {"": 0}

    def add(self, s: str) -> int:
        if s not in self.seen:
            self.seen[s] = len(self.buf)
            self.buf += s.encode("utf-8", "surrogateescape") + b"\0"
        return self.seen[s]


def _align(n: int, a: int) -> int:
    return n if a <= 1 else (n + a - 1) // a * a


def object_bytes(obj: ElfObject) -> bytes:
    """Serialise ``obj`` to the bytes of an ELF64 x86-64 relocatable object."""
    keys = list(obj.sections)
    # Relocation lists by target: the target's own key first, then further ones.
    # Lists of sections that are not written are left out with them.
    by_target: dict[int, list[int]] = {}
    for key in sorted(obj.relocs, key=lambda k: (k != obj.rela_target(k), k)):
        target = obj.rela_target(key)
        if obj.relocs[key] and target in obj.sections:
            by_target.setdefault(target, []).append(key)
    # Output index of every section and of each RELA section.
    out_order: list[tuple[str, int]] = []  # ("sec", section key) | ("rela", relocs key)
    for k in keys:
        out_order.append(("sec", k))
        out_order += [("rela", key) for key in by_target.get(k, ())]
    newidx: dict[int, int] = {}
    relaidx: dict[int, int] = {}
    for i, (kind, k) in enumerate(out_order, start=1):
        (newidx if kind == "sec" else relaidx)[k] = i
    symtab_idx = len(out_order) + 1
    strtab_idx = symtab_idx + 1
    shstrtab_idx = symtab_idx + 2

    # Symbols: null, locals, then the rest; drop symbols of absent sections.
    order = list(range(1, len(obj.symbols)))
    locals_ = [i for i in order if obj.symbols[i].bind == STB_LOCAL]
    others = [i for i in order if obj.symbols[i].bind != STB_LOCAL]
    symmap: dict[int, int] = {0: 0}
    strtab = _StrTab()
    symdata = bytearray(_SYM.size)
    for i in locals_ + others:
        s = obj.symbols[i]
        shndx = s.shndx
        if SHN_UNDEF < shndx < SHN_LORESERVE:
            if shndx not in newidx:
                continue
            shndx = newidx[shndx]
            if shndx >= SHN_LORESERVE:
                raise ElfFormatError("too many sections for a plain section index")
        symmap[i] = len(symdata) // _SYM.size
        name = 0 if s.type == STT_SECTION else strtab.add(s.name)
        symdata += _SYM.pack(name, (s.bind << 4) | (s.type & 0xF), s.other, shndx, s.value, s.size)
    first_global = 1 + sum(1 for i in locals_ if i in symmap)

    shstr = _StrTab()
    headers: list[tuple] = [(0,) * 10]
    blobs: list[tuple[bytes, int]] = []  # payload, alignment (parallel to headers[1:])

    def _emit(name: str, typ: int, flags: int, size: int, link: int, info: int,
              align: int, entsize: int, data: bytes) -> None:
        headers.append([shstr.add(name), typ, flags, 0, 0, size, link, info, align, entsize])
        blobs.append((data, align))

    for kind, k in out_order:
        if kind == "rela":
            hdr = obj.rela_section(k)
            sec: Section = obj.sections[hdr.target]
            rows = bytearray()
            for r in obj.relocs[k]:
                if r.sym not in symmap:
                    raise ElfFormatError(
                        f"relocation in {sec.name}+{r.offset:#x} refers to a dropped symbol "
                        f"{obj.symbols[r.sym].name or r.sym}")
                rows += _RELA.pack(r.offset, (symmap[r.sym] << 32) | r.type, r.addend)
            # A relocation section is in its target's group, or in none.
            flags = (hdr.flags & ~SHF_GROUP) | (sec.flags & SHF_GROUP)
            _emit(hdr.name, SHT_RELA, flags, len(rows), symtab_idx, newidx[hdr.target],
                  8, _RELA.size, bytes(rows))
            continue
        sec = obj.sections[k]
        link, info, data = 0, 0, sec.data
        if sec.flags & SHF_LINK_ORDER:
            if sec.link not in newidx:
                raise ElfFormatError(f"{sec.name}: SHF_LINK_ORDER target was dropped")
            link = newidx[sec.link]
        if sec.type == SHT_GROUP:
            link = symtab_idx
            if sec.info not in symmap:
                raise ElfFormatError(f"{sec.name}: group signature symbol was dropped")
            info = symmap[sec.info]
            members = group_members(sec)
            out = [newidx[m] for m in members if m in newidx]
            out += [relaidx[key] for m in members for key in by_target.get(m, ())]
            data = group_data(sec, out)
        size = sec.size if sec.type == SHT_NOBITS else len(data)
        _emit(sec.name, sec.type, sec.flags, size, link, info, sec.addralign, sec.entsize,
              b"" if sec.type == SHT_NOBITS else data)

    _emit(".symtab", SHT_SYMTAB, 0, len(symdata), strtab_idx, first_global, 8, _SYM.size,
          bytes(symdata))
    _emit(".strtab", SHT_STRTAB, 0, len(strtab.buf), 0, 0, 1, 0, bytes(strtab.buf))
    shstr.add(".shstrtab")
    shstrtab_payload = bytes(shstr.buf)  # complete: every name was added above
    _emit(".shstrtab", SHT_STRTAB, 0, len(shstrtab_payload), 0, 0, 1, 0, shstrtab_payload)

    # Layout.
    out = bytearray(_EHDR.size)
    for h, (data, align) in zip(headers[1:], blobs, strict=True):
        if h[1] == SHT_NOBITS:
            h[4] = _align(len(out), max(align, 1))
            continue
        pad = _align(len(out), max(align, 1)) - len(out)
        out += b"\0" * pad
        h[4] = len(out)
        out += data
    out += b"\0" * (_align(len(out), 8) - len(out))
    shoff = len(out)
    for h in headers:
        out += _SHDR.pack(*h)
    ident = b"\x7fELF" + bytes([2, 1, 1, obj.header.get("osabi", 0), 0]) + b"\0" * 7
    out[:_EHDR.size] = _EHDR.pack(ident, 1, EM_X86_64, 1, 0, 0, shoff,
                                  obj.header.get("e_flags", 0), _EHDR.size, 0, 0, _SHDR.size,
                                  len(headers), shstrtab_idx)
    return bytes(out)


def write_object(obj: ElfObject, path: str | Path) -> None:
    """Write ``obj`` to ``path`` atomically (temp file in the same directory)."""
    write_atomic(Path(path), object_bytes(obj))
