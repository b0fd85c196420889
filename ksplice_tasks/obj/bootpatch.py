# SPDX-License-Identifier: GPL-2.0-only
"""What the kernel's own boot patching writes into code, computed on the host.

Run-pre matching (kmodsrc/runpre.c) compares the helper's pre code with the
running kernel's.  Two boot-time rewrites need facts only the host has cheaply
(the object's relocations and an x86 decoder, capstone):

* **Alternatives** (``.altinstructions``, Linux 6.1.192
  arch/x86/kernel/alternative.c ``apply_alternatives()``): each entry whose
  feature the boot CPU has (or lacks, with ``ALTINSTR_FLAG_INV``) copies its
  replacement over the original, fixes a 5-byte ``call`` (``e8``) so it still
  reaches its target, re-encodes a 5-byte ``jmp`` (``recompute_jump()``: ``eb``
  + NOP3 when the target is 0..129 bytes ahead), pads with ``0x90``; then,
  applied or not, ``optimize_nops()`` turns every run of two or more ``0x90``
  starting at an instruction boundary into the NOPs of ``add_nops()``.
  :func:`alternative_sites` ships, per site, the original as optimize_nops
  leaves it, then each entry in table order with its final bytes (the branch
  field zeroed) and where its branch goes; the kernel side picks the entry
  the boot applied with ``boot_cpu_has()``.
* **Relaxed jumps** (issue kind 2): in the ``-ffunction-sections`` object a
  jump to another function of the file is ``jmp/jcc rel32`` with a
  relocation; in the running kernel, where the functions share ``.text``, the
  assembler may have relaxed it to ``rel8`` and every later offset of the
  function moved.  :func:`branch_sites` lists the relocation-free relative
  branches of such functions (boundaries from capstone), so the kernel side
  compares them by target through its pre-offset -> run-offset map instead of
  by displacement bytes.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import capstone

from ksplice_tasks.obj.elfread import STT_SECTION, ElfObject, Reloc
from ksplice_tasks.obj.kernel_sections import Role, table_entries

# arch/x86/include/asm/nops.h (x86-64): BYTES_NOP1 .. BYTES_NOP8; ASM_NOP_MAX is 8.
NOPS: tuple[bytes, ...] = (
    b"",
    bytes.fromhex("90"),
    bytes.fromhex("6690"),
    bytes.fromhex("0f1f00"),
    bytes.fromhex("0f1f4000"),
    bytes.fromhex("0f1f440000"),
    bytes.fromhex("660f1f440000"),
    bytes.fromhex("0f1f8000000000"),
    bytes.fromhex("0f1f840000000000"),
)
ASM_NOP_MAX = 8

ALTINSTR_FLAG_INV = 1 << 15  # arch/x86/include/asm/alternative.h
CALL32, JMP32, JMP8 = 0xE8, 0xE9, 0xEB

# SiteRecord.flags of an "alternative" site (kmodsrc/ksplice_tables.h KSPLICE_CODESITE_*).
ALT_ORIGINAL = 0x1  # the original instruction(s), as optimize_nops() leaves them
ALT_UNSUPPORTED = 0x2  # the entry's final bytes cannot be predicted: refuse if applied

# x86-64 relocation types that hold S + A - P in 32 bits.
_R_X86_64_PC32, _R_X86_64_PLT32 = 2, 4


def add_nops(n: int) -> bytes:
    """``n`` bytes of NOPs as 6.1's ``add_nops()`` writes them (longest first, at most 8)."""
    out = b""
    while n > 0:
        k = min(n, ASM_NOP_MAX)
        out += NOPS[k]
        n -= k
    return out


def _md() -> capstone.Cs:
    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def optimize_nops(code: bytes, length: int) -> bytes:
    """``code[:length]`` as 6.1's ``optimize_nops(instr, length)`` leaves it.

    Instructions are decoded from the start (``code`` may go on past
    ``length``: the kernel's decoder reads the following bytes too); a
    1-byte ``0x90`` starts a run of ``0x90`` bounded by ``length``, and a run
    of two or more becomes :func:`add_nops`.  Decoding stops at the first
    undecodable instruction, as the kernel's does.
    """
    out = bytearray(code)
    md = _md()
    i = 0
    while i < length:
        insn = next(md.disasm_lite(bytes(out[i:i + 16]), i), None)
        if insn is None:
            break
        size = insn[1]
        if size == 1 and out[i] == 0x90:
            n = 0
            while i + n < length and out[i + n] == 0x90:
                n += 1
            if n > 1:
                out[i:i + n] = add_nops(n)
            i += n
        else:
            i += size
    return bytes(out[:length])


@dataclass(frozen=True)
class AltVariant:
    """One entry of an alternative site, or its original (``flags & ALT_ORIGINAL``).

    ``template`` is the site's final bytes when this variant is the one the
    boot wrote (``instrlen`` bytes; a branch's rel32 field zeroed).  A 5-byte
    call/jmp replacement goes to ``symbol + addend`` (``symbol`` a System.map
    or section name), or to offset ``target`` of the site's own section.
    """

    section: int  # section index of the site
    offset: int
    length: int  # instrlen
    feature: int  # cpuid word, with ALTINSTR_FLAG_INV
    template: bytes
    repl_len: int = 0
    symbol: str = ""
    addend: int = 0
    target: int = -1
    flags: int = 0


def _repl_branch(obj: ElfObject, site_shndx: int, repl: bytes, relocs: Sequence[Reloc],
                 base: int) -> tuple[str, int, int, int]:
    """(symbol, addend, target, flags) of a replacement, from its relocations.

    Only a 5-byte ``call``/``jmp rel32`` whose field (offset 1) is relocated
    PC-relative has bytes the kernel side can predict: apply_alternatives()
    keeps its target (e8 fix-up, recompute_jump()).  Any other relocation in
    a replacement is copied raw by 6.1, so its bytes depend on where the
    replacement lies in vmlinux: unsupported.
    """
    if not relocs:
        if len(repl) == 5 and repl[0] in (CALL32, JMP32, JMP8):
            return "", 0, -1, ALT_UNSUPPORTED  # a branch inside the replacement itself
        return "", 0, -1, 0
    r = relocs[0]
    if (len(relocs) != 1 or len(repl) != 5 or repl[0] not in (CALL32, JMP32)
            or r.offset - base != 1 or r.type not in (_R_X86_64_PC32, _R_X86_64_PLT32)):
        return "", 0, -1, ALT_UNSUPPORTED
    sym = obj.symbols[r.sym]
    # the branch goes to S + A + 4 (the field is the last 4 bytes of the instruction)
    if sym.in_section and sym.shndx == site_shndx:
        return "", 0, sym.value + r.addend + 4, 0
    if sym.type == STT_SECTION:
        if not sym.in_section:
            return "", 0, -1, ALT_UNSUPPORTED
        return obj.sections[sym.shndx].name, r.addend + 4, -1, 0
    return sym.name, r.addend + 4, -1, 0


def alternative_sites(obj: ElfObject, keep: Collection[int]) -> list[AltVariant]:
    """Every ``.altinstructions`` site in sections ``keep``: original first, then entries.

    Entries keep their table order (the kernel applies them in that order,
    the last applicable one wins).  A site whose entries disagree on its
    length is left out (run-pre matching then compares it strictly).
    Raises TableLayoutError as :func:`table_entries` does.
    """
    out: list[AltVariant] = []
    for sec in obj.sections.values():
        if sec.name != ".altinstructions":
            continue
        groups: dict[tuple[int, int], list[AltVariant]] = {}
        for e in table_entries(obj, sec):
            site = e.site(obj, Role.CODE)
            rsite = e.site(obj, Role.REPLACEMENT)
            if site is None or rsite is None or site.shndx not in keep:
                continue
            length = e.value(sec.data, Role.CODE_LEN) or 0
            rlen = e.value(sec.data, Role.REPLACEMENT_LEN) or 0
            feature = e.value(sec.data, "cpuid") or 0
            text = obj.sections[site.shndx].data
            rdata = obj.sections[rsite.shndx].data
            repl = rdata[rsite.offset:rsite.offset + rlen]
            key = (site.shndx, site.offset)
            if key not in groups:
                orig = optimize_nops(text[site.offset:site.offset + length + 16], length)
                groups[key] = [AltVariant(site.shndx, site.offset, length, 0, orig,
                                          flags=ALT_ORIGINAL)]
            relocs = [r for r in obj.relocs.get(rsite.shndx, ())
                      if rsite.offset <= r.offset < rsite.offset + rlen]
            symbol, addend, target, flags = _repl_branch(obj, site.shndx, repl, relocs,
                                                         rsite.offset)
            if len(repl) != rlen or rlen > length or not length:
                flags |= ALT_UNSUPPORTED
            buf = bytearray(repl) + b"\x90" * max(0, length - rlen)
            if rlen == 5 and repl[:1] in (b"\xe8", b"\xe9"):
                buf[1:5] = bytes(4)
            groups[key].append(AltVariant(site.shndx, site.offset, length, feature,
                                          optimize_nops(bytes(buf) + bytes(16), length),
                                          rlen, symbol, addend, target, flags))
        for g in groups.values():
            if len({v.length for v in g}) == 1:
                out += g
    return out


# Opcodes of relative branches (x86 SDM vol. 2): jcc rel8, jmp rel8, loop*/jrcxz,
# call/jmp rel32; jcc rel32 is 0f 80+cc.
_REL8 = frozenset(range(0x70, 0x80)) | {0xEB, 0xE0, 0xE1, 0xE2, 0xE3}


def _branch_at(code: bytes, off: int, size: int) -> int | None:
    """Target offset (section-relative) of the plain relative branch at ``off``, or None."""
    op = code[off]
    if size == 2 and op in _REL8:
        return off + 2 + int.from_bytes(code[off + 1:off + 2], "little", signed=True)
    if size == 5 and op in (CALL32, JMP32):
        return off + 5 + int.from_bytes(code[off + 1:off + 5], "little", signed=True)
    if size == 6 and op == 0x0F and code[off + 1] & 0xF0 == 0x80:
        return off + 6 + int.from_bytes(code[off + 2:off + 6], "little", signed=True)
    return None


def relaxable_jump(obj: ElfObject, code: bytes, r: Reloc) -> bool:
    """Is ``r`` the field of a jmp/jcc rel32 to code this object defines (gas may relax it)?"""
    if r.type not in (_R_X86_64_PC32, _R_X86_64_PLT32) or r.size != 4:
        return False
    sym = obj.symbols[r.sym]
    if not sym.in_section or not obj.sections[sym.shndx].is_exec:
        return False
    o = r.offset
    return (o >= 1 and code[o - 1] == JMP32) or (
        o >= 2 and code[o - 2] == 0x0F and code[o - 1] & 0xF0 == 0x80)


def branch_sites(obj: ElfObject, shndx: int, starts: Sequence[int], ends: Sequence[int],
                 functions: Sequence[tuple[int, int]], taken: Collection[int]
                 ) -> list[tuple[int, int, int]]:
    """(offset, length, target) of each relocation-free relative branch to check by target.

    Only functions (``(start, end)`` ranges of section ``shndx``) with a
    jmp/jcc rel32 that the running kernel's assembler may have relaxed get
    any; the branch and its target both lie in the function.  ``starts`` and
    ``ends`` are the section's instruction boundaries; offsets in ``taken``
    (other code sites) are left out.
    """
    code = obj.sections[shndx].data
    relocs = obj.relocs.get(shndx, [])
    relaxable = sorted(r.offset for r in relocs if relaxable_jump(obj, code, r))
    relocated = sorted(r.offset for r in relocs)
    out: list[tuple[int, int, int]] = []
    for lo, hi in functions:
        if not any(lo <= o < hi for o in relaxable):
            continue
        for s, e in zip(starts, ends, strict=True):
            if not lo <= s < hi or s in taken:
                continue
            t = _branch_at(code, s, e - s)
            k = bisect.bisect_right(relocated, s)
            if t is None or not lo <= t < hi or (k < len(relocated) and relocated[k] < e):
                continue
            out.append((s, e - s, t))
    return out


# SiteRecord.flags of an alternative's original that is also a paravirt site.
ALT_PARAVIRT = 0x4


def paravirt_sites(obj: ElfObject, keep: Collection[int]) -> list[tuple[int, int, int, int]]:
    """(section, offset, len, type) of each ``.parainstructions`` entry in sections ``keep``.

    6.1's ``apply_paravirt()`` (arch/x86/kernel/alternative.c) lets
    ``paravirt_patch()`` (arch/x86/kernel/paravirt.c) write a ``call`` to
    ``pv_ops[type]`` (nothing when that is ``_paravirt_nop``) and pads the
    site's ``len`` bytes with ``add_nops()``.  Sites shorter than a call are
    left out (compared strictly).
    """
    out = []
    for sec in obj.sections.values():
        if sec.name != ".parainstructions":
            continue
        for e in table_entries(obj, sec):
            site = e.site(obj, Role.CODE)
            length = e.value(sec.data, Role.CODE_LEN) or 0
            ptype = e.value(sec.data, "type")
            if site is None or site.shndx not in keep or ptype is None or length < 5:
                continue
            out.append((site.shndx, site.offset, length, ptype))
    return out


def smp_lock_sites(obj: ElfObject, keep: Collection[int]) -> list[tuple[int, int]]:
    """(section, offset) of each ``.smp_locks`` entry in ``keep`` naming a ``lock`` (``f0``)."""
    out = []
    for sec in obj.sections.values():
        if sec.name != ".smp_locks":
            continue
        for e in table_entries(obj, sec):
            site = e.site(obj, Role.CODE)
            if site is None or site.shndx not in keep:
                continue
            if obj.sections[site.shndx].data[site.offset:site.offset + 1] == b"\xf0":
                out.append((site.shndx, site.offset))
    return out
