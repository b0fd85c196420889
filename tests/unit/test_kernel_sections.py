# SPDX-License-Identifier: GPL-2.0-only
"""The kernel special-section table: layouts derived from objects, entries as data."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import FIXTURES
from oracles import ld_r, readelf_clean

from ksplice_tasks.obj import kernel_sections as ks
from ksplice_tasks.obj.elfread import read_object
from ksplice_tasks.obj.elfwrite import write_object
from ksplice_tasks.obj.kernel_sections import (
    Kind,
    Role,
    TableLayoutError,
    entry_layout,
    is_special,
    table_entries,
)
from ksplice_tasks.obj.objdiff import Fingerprints, diff_objects
from ksplice_tasks.obj.objmanip import ObjmanipError, keep_primary
from ksplice_tasks.obj.view import ObjectView, sites_by_function

TAG = "____0_t3stk1d0"
BUG = FIXTURES / "bug_table.c"
# Flags words of the fixture's three WARN sites: warn_a has one, warn_b two.
FLAGS = {"warn_a": [0x0201], "warn_b": [0x0302, 0x0403]}


@pytest.fixture(scope="module")
def bug_objects(compile_c) -> dict[int, tuple[Path, Path]]:
    """Entry size -> (pre, post) objects of bug_table.c in that layout."""
    out = {}
    for size, flags in ((8, ()), (12, ("-DBUG_VERBOSE",))):
        out[size] = (compile_c(BUG, f"bug{size}pre", "bug_table", flags),
                     compile_c(BUG, f"bug{size}post", "bug_table", (*flags, "-DPOST")))
    return out


def _section(obj, name):
    secs = obj.sections_named(name)
    assert len(secs) == 1, name
    return secs[0]


def test_every_table_row_has_a_checked_layout():
    for r in ks.SECTIONS:
        if r.kind == Kind.TABLE:
            assert r.layouts and r.source, r.name
            for lay in r.layouts:
                ends = [f.offset + f.size for f in lay.fields]
                assert max(ends) <= lay.size, r.name
                spans = sorted((f.offset, f.offset + f.size) for f in lay.fields)
                assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), r.name
                if r.name != ".orc_unwind":
                    assert lay.field(Role.CODE) is not None, r.name
        else:
            assert not r.layouts, r.name
        if r.carried and r.kind == Kind.TABLE and not r.per_function:
            assert r.name in ks.CARRIED_TABLES
        if r.parallel:
            assert ks.row(r.parallel) is not None
    sizes = {r.name: tuple(lay.size for lay in r.layouts) for r in ks.SECTIONS if r.layouts}
    assert sizes["__bug_table"] == (12, 8)
    assert sizes[".altinstructions"] == (12,) and sizes["__jump_table"] == (16,)
    assert sizes[".static_call_sites"] == (8,) and sizes[".parainstructions"] == (16,)
    assert sizes["__ex_table"] == (12,) and sizes[".orc_unwind"] == (6,)


def test_is_special_and_rows():
    for name in ("__bug_table", ".altinstr_replacement", ".rela.text.f", ".discard.addressable",
                 ".note.GNU-stack", "___ksymtab+f", ".BTF.ext", ".printk_index", ".debug_info"):
        assert is_special(name), name
        assert ks.row(name) is not None
    for name in (".text.f", ".rodata.str1.1", ".data.x", ".bss", ".init.text", ".text"):
        assert not is_special(name), name
        assert ks.row(name) is None
    assert ks.row(".altinstr_replacement").kind == Kind.REPLACEMENT
    assert ks.row(".debug_line").prefix
    assert ks.LOADER_SYMBOLS == {"__fentry__", "__x86_return_thunk", *ks.RETPOLINE_THUNKS}
    assert len(ks.RETPOLINE_THUNKS) == 16 and ks.RETPOLINE_THUNKS[8] == "__x86_indirect_thunk_r8"
    assert ks.is_discarded(".init.text") and ks.is_discarded(".exit.text")
    assert not ks.is_discarded(".text.init_thing") and not ks.is_discarded(".initcall6.init")


@pytest.mark.parametrize("size", [8, 12])
def test_bug_table_layout_is_derived(bug_objects, size):
    obj = read_object(bug_objects[size][0])
    sec = _section(obj, "__bug_table")
    assert sec.entsize == 0  # nothing in the object says; the layout is inferred
    got, layout = entry_layout(obj, sec)
    assert got == size and layout is not None and layout.size == size
    assert sec.size == 3 * size  # 24 or 36 bytes: 24 would also split into 12s
    entries = table_entries(obj, sec)
    assert [e.value(sec.data, "flags") for e in entries] == [0x0201, 0x0302, 0x0403]
    assert [len(e.relocs) for e in entries] == [2 if size == 12 else 1] * 3
    text = {s.index: s.name for s in obj.sections.values() if s.is_exec}
    code = [e.site(obj, Role.CODE) for e in entries]
    assert [text[c.shndx] for c in code] == [".text.warn_a", ".text.warn_b", ".text.warn_b"]
    for c in code:  # each names a ud2
        assert obj.sections[c.shndx].data[c.offset:c.offset + 2] == b"\x0f\x0b"
    files = [e.site(obj, Role.FILE) for e in entries]
    if size == 12:
        for f in files:
            s = obj.sections[f.shndx].data
            assert s[f.offset:s.index(b"\0", f.offset)] == b"bug_table.c"
        assert all(e.value(sec.data, "line") > 0 for e in entries)
    else:
        assert files == [None] * 3 and entries[0].value(sec.data, "line") is None


def test_sh_entsize_wins_and_bad_sizes_are_refused(bug_objects):
    obj = read_object(bug_objects[8][0])
    sec = _section(obj, "__bug_table")
    obj.sections[sec.index] = replace(sec, entsize=8)
    assert entry_layout(obj, obj.sections[sec.index])[0] == 8
    obj.sections[sec.index] = replace(sec, entsize=16)
    with pytest.raises(TableLayoutError, match="multiple of its sh_entsize"):
        entry_layout(obj, obj.sections[sec.index])
    # A size with no known layout: entries split, fields unknown...
    obj.sections[sec.index] = replace(sec, entsize=4)
    assert entry_layout(obj, obj.sections[sec.index]) == (4, None)
    assert len(table_entries(obj, obj.sections[sec.index])) == 6
    # ... unless a relocated field would straddle two entries.
    obj.sections[sec.index] = replace(sec, entsize=3)
    with pytest.raises(TableLayoutError, match="straddles"):
        entry_layout(obj, obj.sections[sec.index])
    odd = replace(sec, size=sec.size - 2, data=sec.data[:-2])
    obj.sections[sec.index] = odd
    with pytest.raises(TableLayoutError, match="fit no entry layout"):
        table_entries(obj, odd)
    with pytest.raises(TableLayoutError, match="not a table"):
        entry_layout(obj, _section(obj, ".text.plain"))


@pytest.mark.parametrize("size", [8, 12])
def test_objdiff_reads_both_bug_layouts(bug_objects, size):
    pre, post = bug_objects[size]
    d = diff_objects(pre, post)
    assert d.changed == ["warn_b"] and d.new == [] and d.line_only == []
    bugs = Fingerprints(ObjectView(read_object(post))).bug_entries()
    assert {f: [e[3] for e in v] for f, v in bugs.items()} == FLAGS
    assert all((e[2] is not None) == (size == 12) for v in bugs.values() for e in v)
    assert d == diff_objects(pre, post)  # and the same pair again: nothing cached wrongly
    assert diff_objects(pre, pre).is_empty


@pytest.mark.parametrize("size", [8, 12])
def test_keep_primary_keeps_the_right_bug_entries(bug_objects, size, tmp_path):
    _pre, post = bug_objects[size]
    obj = read_object(post)
    full = _section(obj, "__bug_table")
    prim, _recs = keep_primary(obj, ["warn_b"], TAG)
    sec = _section(prim, "__bug_table")
    assert sec.size == 2 * size
    # The bytes are warn_b's two entries, whole: an 8-byte table is not cut as 12.
    assert sec.data == full.data[size:3 * size]
    entries = table_entries(prim, sec)
    assert [e.value(sec.data, "flags") for e in entries] == FLAGS["warn_b"]
    text = _section(prim, ".text.warn_b" + TAG + "_post")
    for e in entries:
        c = e.site(prim, Role.CODE)
        assert c.shndx == text.index and text.data[c.offset:c.offset + 2] == b"\x0f\x0b"
        if size == 12:
            f = e.site(prim, Role.FILE)
            assert prim.sections[f.shndx].data[f.offset:].startswith(b"bug_table.c\0")
    assert [r.offset for r in prim.relocs[sec.index]] == (
        [0, 4, 12, 16] if size == 12 else [0, 8])
    out = tmp_path / "p.o"
    write_object(prim, out)
    readelf_clean(out)
    ld_r(tmp_path, out)


def test_keep_primary_refuses_a_table_it_cannot_split(bug_objects):
    obj = read_object(bug_objects[8][1])
    sec = _section(obj, "__bug_table")
    obj.sections[sec.index] = replace(sec, size=20, data=sec.data[:20])  # 8s, 12s: neither
    with pytest.raises(ObjmanipError, match="__bug_table"):
        keep_primary(obj, ["warn_b"], TAG)
    keep_primary(obj, ["plain"], TAG)  # no entry about plain: the table is just left out


def test_tables_fixture_entries_and_sites(compile_c):
    obj = read_object(compile_c(FIXTURES / "tables.c", "tables", "tables"))
    view = ObjectView(obj)
    alt = _section(obj, ".altinstructions")
    entries = table_entries(obj, alt)
    assert len(entries) == 2
    repl = _section(obj, ".altinstr_replacement")
    for e in entries:
        r = e.site(obj, Role.REPLACEMENT)
        assert r.shndx == repl.index
        n = e.value(alt.data, Role.REPLACEMENT_LEN)
        assert repl.data[r.offset] == 0xB8 and n == 5  # mov $imm32, %eax
        assert e.value(alt.data, Role.CODE_LEN) == 3
    sites = sites_by_function(view)
    assert set(sites) == {"keep_me", "drop_me"}
    for fn, got in sites.items():
        assert {s.table for s in got} == {".altinstructions", "__ex_table", "__bug_table",
                                         "__fentry__"}, fn
        assert all(s.part == fn for s in got)
        fentry = next(s for s in got if s.table == "__fentry__")
        assert fentry.entry is None and fentry.offset == 0  # the call opens the function
        text = obj.sections[fentry.shndx].data
        assert text[fentry.at] == 0xE8
        assert [s.at for s in got] == sorted(s.at for s in got)


def test_undefined_symbols(compile_c, stubs_o, tmp_path):
    from ksplice_tasks.obj.elfread import undefined_symbols

    obj = compile_c(FIXTURES / "tables.c", "tables", "tables")
    assert undefined_symbols(obj) == {"__fentry__"}
    assert "printk" not in undefined_symbols(stubs_o)
    bare = tmp_path / "bare.o"
    subprocess.run(["as", "-o", bare, "/dev/null"], check=True)
    subprocess.run(["strip", "--strip-all", bare], check=True)
    assert undefined_symbols(bare) == set()
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an elf")
    with pytest.raises(Exception, match="not an ELF"):
        undefined_symbols(junk)


ORC_ASM = """
        .section .text.one,"ax",@progbits
        .globl one
        .type one, @function
one:    nop
1:      ret
        .size one, .-one
        .section .text.two,"ax",@progbits
        .globl two
        .type two, @function
two:    nop
2:      ret
        .size two, .-two
        .section .orc_unwind_ip,"a",@progbits
        .long one - .
        .long 1b - .
        .long two - .
        .long 2b - .
        .section .orc_unwind,"a",@progbits
        .short 0x1111, 0x1112, 0x1113
        .short 0x1121, 0x1122, 0x1123
        .short 0x2211, 0x2212, 0x2213
        .short 0x2221, 0x2222, 0x2223
        .section .note.GNU-stack,"",@progbits
"""


def test_orc_entries_are_cut_with_their_ips(tmp_path):
    asm = tmp_path / "orc.s"
    asm.write_text(ORC_ASM)
    o = tmp_path / "orc.o"
    subprocess.run(["as", "-o", o, asm], check=True)
    obj = read_object(o)
    prim, _recs = keep_primary(obj, ["two"], TAG)
    ip = _section(prim, ".orc_unwind_ip")
    orc = _section(prim, ".orc_unwind")
    assert ip.size == 8 and orc.size == 12
    assert orc.data == _section(obj, ".orc_unwind").data[12:]
    text = _section(prim, ".text.two" + TAG + "_post")
    assert [(e.site(prim).shndx, e.site(prim).offset) for e in table_entries(prim, ip)] == \
        [(text.index, 0), (text.index, 1)]
    out = tmp_path / "p.o"
    write_object(prim, out)
    readelf_clean(out)
    short = _section(obj, ".orc_unwind")
    obj.sections[short.index] = replace(short, size=18, data=short.data[:18])
    with pytest.raises(ObjmanipError, match="not 6 per .orc_unwind_ip entry"):
        keep_primary(obj, ["two"], TAG)
