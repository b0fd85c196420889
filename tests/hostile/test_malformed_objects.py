# SPDX-License-Identifier: GPL-2.0-only
"""Malformed objects (issue 11, kind 7): truncated files and absurd header fields.

``ksplice-objdiff`` and ``ksplice-objmanip`` run as a user runs them: each
bad object gives exit status 1, exactly one line naming the file and the
field, and no traceback.  Then a seeded fuzz loop corrupts real compiled
objects thousands of times in-process (truncations; ELF header, section
header, symbol and relocation fields) and checks that every outcome is either
a correct result or the reader's one-line ElfFormatError.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from elfbytes import (
    EHDR_FIELDS,
    RELA_FIELDS,
    SHDR_FIELDS,
    SHT_GROUP,
    SHT_RELA,
    SHT_SYMTAB,
    SYM_FIELDS,
    ehdr,
    entry_at,
    put,
    section,
    sections,
    set_ehdr,
    set_rela,
    set_shdr,
    set_sym,
)

from ksplice_tasks.errors import UserError
from ksplice_tasks.obj.elfread import (
    SHN_ABS,
    SHN_COMMON,
    SHN_UNDEF,
    SHT_NOBITS,
    ElfFormatError,
    ElfObject,
    read_object,
    undefined_symbols,
)
from ksplice_tasks.obj.elfwrite import object_bytes
from ksplice_tasks.obj.objdiff import diff_views
from ksplice_tasks.obj.view import ObjectView

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests/unit/objfixtures"
KERNEL_FLAGS = ["-O2", "-mcmodel=kernel", "-mfentry", "-pg", "-fno-PIE", "-fno-pic",
                "-ffunction-sections", "-fdata-sections"]
# A comdat group and a symbol-less relocation target, as assemblers write them.
GROUP_ASM = """
        .section .text.grp,"axG",@progbits,sig,comdat
        .globl sig
        .type sig, @function
sig:    call ext1
        ret
        .size sig, .-sig
        .section .data.grp,"awG",@progbits,sig,comdat
        .quad sig
        .section .note.GNU-stack,"",@progbits
"""


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real objects compiled with the kernel's code-generation flags, by name."""
    d = tmp_path_factory.mktemp("objs")
    sources = {"switch_table": FIXTURES / "switch_table/post.c",
               "cold_part": FIXTURES / "cold_part/post.c",
               "static_local": FIXTURES / "static_local/post.c",
               "bug_table": FIXTURES / "bug_table.c",
               "tables": FIXTURES / "tables.c"}
    out = {}
    for name, src in sources.items():
        shutil.copyfile(src, d / f"{name}.c")
        subprocess.run(["gcc", *KERNEL_FLAGS, f"-I{FIXTURES}", "-c", f"{name}.c",
                        "-o", f"{name}.o"], cwd=d, check=True)
        out[name] = d / f"{name}.o"
    (d / "group.s").write_text(GROUP_ASM)
    subprocess.run(["as", "-o", "group.o", "group.s"], cwd=d, check=True)
    out["group"] = d / "group.o"
    return out


# -- the command lines, case by case -------------------------------------------------------

def _sw(d: bytes) -> int:
    return section(d, ".text.sw").index


def _group(d: bytes) -> int:
    return next(s.index for s in sections(d) if s.type == SHT_GROUP)


def _symtab(d: bytes) -> int:
    return next(s.index for s in sections(d) if s.type == SHT_SYMTAB)


# name -> (source object, corruption, a word the one-line error must hold)
CASES: dict[str, tuple[str, Callable[[bytes], bytes], str]] = {
    "empty": ("switch_table", lambda d: b"", "not an ELF file"),
    "cut_in_magic": ("switch_table", lambda d: d[:3], "not an ELF file"),
    "cut_in_elf_header": ("switch_table", lambda d: d[:40], "ELF header"),
    "cut_after_elf_header": ("switch_table", lambda d: d[:64], "e_shoff"),
    "cut_in_section_data": ("switch_table", lambda d: d[:len(d) // 3], "e_shoff"),
    "cut_in_section_headers": (
        "switch_table", lambda d: d[:ehdr(d, "e_shoff") + 100], "e_shnum"),
    "cut_last_byte": ("switch_table", lambda d: d[:-1], "past EOF"),
    "e_ident_class32": ("switch_table", lambda d: put(d, 4, "B", 1), "EI_CLASS 1"),
    "e_machine_i386": ("switch_table", lambda d: set_ehdr(d, "e_machine", 3), "e_machine 3"),
    "e_type_exec": ("switch_table", lambda d: set_ehdr(d, "e_type", 2), "e_type 2"),
    "e_shoff_zero": ("switch_table", lambda d: set_ehdr(d, "e_shoff", 0), "e_shoff 0"),
    "e_shoff_at_eof": ("switch_table", lambda d: set_ehdr(d, "e_shoff", len(d)), "e_shoff"),
    "e_shoff_huge": ("switch_table", lambda d: set_ehdr(d, "e_shoff", 1 << 63), "e_shoff"),
    "e_shoff_near_eof": ("switch_table", lambda d: set_ehdr(d, "e_shoff", len(d) - 100),
                         "e_shnum"),
    "e_shentsize_zero": ("switch_table", lambda d: set_ehdr(d, "e_shentsize", 0),
                         "e_shentsize 0"),
    "e_shentsize_small": ("switch_table", lambda d: set_ehdr(d, "e_shentsize", 40),
                          "e_shentsize 40"),
    "e_shnum_huge": ("switch_table", lambda d: set_ehdr(d, "e_shnum", 0xFEFF), "e_shnum"),
    "e_shnum_xindex_huge": (
        "switch_table",
        lambda d: set_shdr(set_ehdr(d, "e_shnum", 0), 0, "sh_size", 1 << 40), "sh_size"),
    "e_shstrndx_huge": ("switch_table", lambda d: set_ehdr(d, "e_shstrndx", 0xFE00),
                        "e_shstrndx"),
    "e_shstrndx_zero": ("switch_table", lambda d: set_ehdr(d, "e_shstrndx", 0), "e_shstrndx"),
    "e_shstrndx_not_strtab": ("switch_table", lambda d: set_ehdr(d, "e_shstrndx", _sw(d)),
                              "SHT_STRTAB"),
    "e_shstrndx_xindex_bad_link": (
        "switch_table",
        lambda d: set_shdr(set_ehdr(d, "e_shstrndx", 0xFFFF), 0, "sh_link", 5000), "sh_link"),
    "sh_offset_past_eof": ("switch_table",
                           lambda d: set_shdr(d, _sw(d), "sh_offset", len(d) + 64),
                           "sh_offset"),
    "sh_size_past_eof": ("switch_table", lambda d: set_shdr(d, _sw(d), "sh_size", len(d)),
                         "sh_size"),
    "sh_offset_wraps": ("switch_table",
                        lambda d: set_shdr(d, _sw(d), "sh_offset", (1 << 64) - 8), "sh_offset"),
    "sh_name_huge": ("switch_table", lambda d: set_shdr(d, _sw(d), "sh_name", 1 << 30),
                     "sh_name"),
    "sh_addralign_absurd": ("switch_table",
                            lambda d: set_shdr(d, _sw(d), "sh_addralign", 1 << 62),
                            "sh_addralign"),
    "symtab_sh_link_huge": ("switch_table",
                            lambda d: set_shdr(d, _symtab(d), "sh_link", 999), "sh_link 999"),
    "symtab_sh_link_not_strtab": ("switch_table",
                                  lambda d: set_shdr(d, _symtab(d), "sh_link", _sw(d)),
                                  "sh_link"),
    "symtab_sh_entsize_zero": ("switch_table",
                               lambda d: set_shdr(d, _symtab(d), "sh_entsize", 0),
                               "sh_entsize"),
    "rela_sh_link_huge": (
        "switch_table",
        lambda d: set_shdr(d, section(d, ".rela.text.sw").index, "sh_link", 999), "sh_link"),
    "rela_sh_info_huge": (
        "switch_table",
        lambda d: set_shdr(d, section(d, ".rela.text.sw").index, "sh_info", 999), "sh_info"),
    "rela_sh_info_symtab": (
        "switch_table",
        lambda d: set_shdr(d, section(d, ".rela.text.sw").index, "sh_info", _symtab(d)),
        "sh_info"),
    "group_member_huge": ("group",
                          lambda d: put(d, sections(d)[_group(d)].offset + 4, "I", 4000),
                          "member 4000"),
    "group_sh_info_huge": ("group", lambda d: set_shdr(d, _group(d), "sh_info", 1 << 20),
                           "sh_info"),
    "st_shndx_huge": ("switch_table", lambda d: set_sym(d, 3, "st_shndx", 500), "st_shndx"),
    "st_shndx_symtab": ("switch_table", lambda d: set_sym(d, 3, "st_shndx", _symtab(d)),
                        "st_shndx"),
    "st_name_huge": ("switch_table", lambda d: set_sym(d, 5, "st_name", 1 << 20), "st_name"),
    "st_value_past_section": ("switch_table", lambda d: set_sym(d, _sym_named(d, "sw"),
                                                                "st_value", 0x10000),
                              "st_value"),
    "r_sym_huge": ("switch_table", lambda d: set_rela(d, ".rela.text.sw", 0, "r_sym", 9999),
                   "r_sym 9999"),
    "r_offset_past_section": (
        "switch_table", lambda d: set_rela(d, ".rela.text.sw", 0, "r_offset", 0x100000),
        "r_offset"),
}


def _sym_named(d: bytes, name: str) -> int:
    symtab = sections(d)[_symtab(d)]
    strtab = sections(d)[symtab.link]
    for n in range(symtab.size // 24):
        off = struct.unpack_from("<I", d, symtab.offset + 24 * n)[0]
        start = strtab.offset + off
        if d[start:d.index(b"\0", start)] == name.encode():
            return n
    raise KeyError(name)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, check=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_object_is_one_line(case: str, objects: dict[str, Path],
                                      tmp_path: Path) -> None:
    src, corrupt, word = CASES[case]
    good = objects[src]
    bad = tmp_path / "bad.o"
    bad.write_bytes(corrupt(good.read_bytes()))
    out = tmp_path / "out.o"
    runs = {
        "objdiff": _run("ksplice_tasks.obj.objdiff", str(good), str(bad)),
        "objdiff pre": _run("ksplice_tasks.obj.objdiff", str(bad), str(good), "--json"),
        "objmanip": _run("ksplice_tasks.obj.objmanip", str(bad), str(out), "sizelist"),
    }
    for what, res in runs.items():
        lines = (res.stdout + res.stderr).splitlines()
        assert res.returncode == 1, (what, res.returncode, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr, (what, res.stderr)
        assert len(lines) == 1, (what, lines)
        assert lines[0].startswith(f"ksplice-{what.split()[0]}: error: {bad}: "), (what, lines)
        assert word in lines[0], (what, lines[0])
    assert not out.exists()


def test_good_objects_still_read(objects: dict[str, Path]) -> None:
    """The cases above corrupt objects that are accepted whole."""
    for path in objects.values():
        obj = read_object(path)
        assert obj.symbols and obj.sections
        res = _run("ksplice_tasks.obj.objdiff", str(path), str(path), "--json")
        assert res.returncode == 0 and res.stderr == "", res.stderr


# -- the fuzz loop --------------------------------------------------------------------------

def _interesting(rng: random.Random, old: int, bits: int, size: int) -> int:
    """A value for a ``bits``-wide field: boundaries, the file size, the old value +- 1,
    one flipped bit, small numbers, special section indices, or random bits."""
    top = (1 << bits) - 1
    return rng.choice([0, 1, 2, old + 1, old - 1, old ^ (1 << rng.randrange(bits)), size - 1,
                       size, size + 1, rng.getrandbits(bits), top, top >> 1, rng.randrange(64),
                       0xFF00, 0xFFF1, 0xFFF2, 0xFFFF]) & top


def mutate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """One random corruption of a well-formed object: (what was changed, new bytes)."""
    kind = rng.choice(["truncate", "ehdr", "shdr", "sym", "rela"])
    if kind == "truncate":
        return kind, data[:rng.randrange(len(data))]
    if kind == "ehdr":
        field = rng.choice(list(EHDR_FIELDS))
        at, fmt = EHDR_FIELDS[field]
    else:
        secs = sections(data)
        if kind == "shdr":
            sec = rng.choice(secs)
            field = rng.choice(list(SHDR_FIELDS))
            at, fmt = SHDR_FIELDS[field]
            at += sec.header_at
        else:
            fields = SYM_FIELDS if kind == "sym" else RELA_FIELDS
            sec = rng.choice([s for s in secs if s.type == (SHT_SYMTAB if kind == "sym"
                                                            else SHT_RELA)])
            field = rng.choice(list(fields))
            at, fmt = entry_at(data, sec, rng.randrange(sec.size // 24), fields, field)
    fmt = fmt.upper()
    old = struct.unpack_from("<" + fmt, data, at)[0]
    return f"{kind}.{field}", put(data, at, fmt, _interesting(rng, old, 8 * struct.calcsize(fmt),
                                                                len(data)))


def _model(obj: ElfObject) -> tuple:
    return ([(i, s.name, s.type, s.flags, s.size, s.link, s.info, s.addralign, s.entsize,
              s.data) for i, s in obj.sections.items()],
            obj.symbols, obj.relocs, obj.rela, obj.header)


def _well_formed(obj: ElfObject) -> None:
    """What every accepted object promises its users (objdiff, the passes, the writer)."""
    for s in obj.sections.values():
        assert s.type == SHT_NOBITS or len(s.data) == s.size, s
    for sym in obj.symbols:
        sec = obj.sections.get(sym.shndx)
        if sec is None:
            assert sym.shndx in (SHN_UNDEF, SHN_ABS, SHN_COMMON), sym
        else:
            assert sym.value + sym.size <= sec.size, sym
    for key, relocs in obj.relocs.items():
        target = obj.sections[obj.rela_target(key)]
        for r in relocs:
            assert r.sym < len(obj.symbols) and r.offset + r.size <= target.size, r


def fuzz(sources: list[Path], count: int, seed: int, tmp: Path) -> Counter:
    """``count`` seeded corruptions of ``sources``, each read and diffed in-process.

    Every outcome must be the reader's one-line ElfFormatError naming the
    file, or an accepted object that is well formed (a cut that is accepted
    must read exactly as the whole file), that objdiff either diffs against
    the original or refuses with a one-line error, and that the writer writes
    or refuses the same way.  Returns outcome counts.
    """
    rng = random.Random(seed)
    whole = {p: (p.read_bytes(), read_object(p)) for p in sources}
    views = {p: ObjectView(obj) for p, (_data, obj) in whole.items()}
    path = tmp / "fuzzed.o"
    seen: Counter = Counter()
    for _ in range(count):
        src = rng.choice(sources)
        data, original = whole[src]
        what, bad = mutate(rng, data)
        path.write_bytes(bad)
        try:
            obj = read_object(path)
        except ElfFormatError as exc:
            message = str(exc)
            assert "\n" not in message and message.startswith(f"{path}: "), (what, message)
            seen["refused"] += 1
            continue
        _well_formed(obj)
        if what == "truncate":
            assert _model(obj) == _model(original), f"a cut {src.name} read differently"
        try:
            diff_views(views[src], ObjectView(obj))
            object_bytes(obj)  # the writer, too, gets only what it can write
            seen["accepted"] += 1
        except (ElfFormatError, UserError) as exc:
            assert "\n" not in str(exc).strip(), (what, str(exc))
            seen["diff or write refused"] += 1
    return seen


def test_fuzz_reader_and_objdiff(objects: dict[str, Path], tmp_path: Path) -> None:
    count = 4000
    start = time.monotonic()
    seen = fuzz(sorted(objects.values()), count, seed=11, tmp=tmp_path)
    seconds = time.monotonic() - start
    print(f"fuzz: {count} corruptions in {seconds:.1f} s: {dict(seen)}")
    assert sum(seen.values()) == count
    # Both outcomes occur: the loop is not refusing everything or accepting everything.
    assert seen["refused"] > count // 5 and seen["accepted"] > count // 5, seen


@pytest.mark.kernel
def test_fuzz_real_kernel_object(kernel_lp, tmp_path: Path) -> None:
    """The same loop on a real kernel object of the cached lp test kernel (read only)."""
    src = kernel_lp.build / "kernel/sys.o"
    seen = fuzz([src], 600, seed=7, tmp=tmp_path)
    print(f"fuzz kernel/sys.o: {dict(seen)}")
    assert seen["refused"] > 60 and seen["accepted"] > 60, seen


def test_undefined_symbols_bad_st_name(objects: dict[str, Path], tmp_path: Path) -> None:
    """The kmod stage's symbol reader gives the same one-line error, naming the file."""
    bad = tmp_path / "bad.o"
    bad.write_bytes(set_sym(objects["switch_table"].read_bytes(), 5, "st_name", 1 << 20))
    with pytest.raises(ElfFormatError, match=rf"^{bad}: symbol 5: st_name 0x100000 is outside"):
        undefined_symbols(bad)
