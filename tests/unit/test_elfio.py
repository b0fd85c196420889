# SPDX-License-Identifier: GPL-2.0-only
"""The ELF reader and writer: round trips checked by readelf and ld -r."""

from __future__ import annotations

import subprocess

import pytest
from conftest import CASES, FIXTURES
from oracles import ld_r, readelf_clean

from ksplice_tasks.obj.elfread import (
    SHF_ALLOC,
    SHF_INFO_LINK,
    SHF_RELA_LIVEPATCH,
    STB_LOCAL,
    ElfFormatError,
    gcc_comment_count,
    group_data,
    group_members,
    read_object,
)
from ksplice_tasks.obj.elfwrite import object_bytes, write_object


@pytest.mark.parametrize("case", CASES)
def test_round_trip(case, fixture_pair, tmp_path):
    for src in fixture_pair(case):
        obj = read_object(src)
        out = tmp_path / "rt.o"
        write_object(obj, out)
        readelf_clean(out)
        ld_r(tmp_path, out)
        back = read_object(out)
        assert [(s.name, s.type, s.flags, s.data) for s in obj.sections.values()] == \
            [(s.name, s.type, s.flags, s.data) for s in back.sections.values()]
        assert sorted((s.name, s.value, s.size, s.bind) for s in obj.symbols) == \
            sorted((s.name, s.value, s.size, s.bind) for s in back.symbols)
        assert sum(map(len, obj.relocs.values())) == sum(map(len, back.relocs.values()))
        # A second write is byte-identical: the writer is deterministic.
        assert object_bytes(back) == out.read_bytes()


def test_same_named_sections_and_groups(tmp_path):
    asm = tmp_path / "dup.s"
    asm.write_text("""
        .section .text.dup,"ax",@progbits,unique,1
one:    call ext1
        .section .text.dup,"ax",@progbits,unique,2
two:    call ext2
        .section .text.grp,"axG",@progbits,sig,comdat
        .globl sig
sig:    call one
        .section .note.GNU-stack,"",@progbits
""")
    obj_path = tmp_path / "dup.o"
    subprocess.run(["as", "-o", obj_path, asm], check=True)
    obj = read_object(obj_path)
    dups = obj.sections_named(".text.dup")
    assert len(dups) == 2 and dups[0].index != dups[1].index
    assert {obj.symbols[r.sym].name for d in dups for r in obj.relocs[d.index]} == {"ext1",
                                                                                  "ext2"}
    out = tmp_path / "out.o"
    write_object(obj, out)
    readelf_clean(out)
    ld_r(tmp_path, out)
    back = read_object(out)
    dups = back.sections_named(".text.dup")
    assert [back.symbols[back.relocs[d.index][0].sym].name for d in dups] == ["ext1", "ext2"]
    group = [s for s in back.sections.values() if s.type == 17]
    assert len(group) == 1 and back.symbols[group[0].info].name == "sig"


def test_locals_first(fixture_pair, tmp_path):
    obj = read_object(fixture_pair("static_local")[1])
    obj.symbols.append(obj.symbols[1])  # a local after the globals
    out = tmp_path / "o.o"
    write_object(obj, out)
    back = read_object(out)
    binds = [s.bind for s in back.symbols[1:]]
    assert binds == sorted(binds, key=lambda b: b != STB_LOCAL)
    text = subprocess.run(["readelf", "-SW", str(out)], capture_output=True, text=True).stdout
    line = next(ln for ln in text.splitlines() if ".symtab" in ln)
    info = int(line.split()[-2])
    assert info == 1 + sum(1 for s in back.symbols[1:] if s.bind == STB_LOCAL)


def test_rejects_non_relocatable(tmp_path):
    exe = tmp_path / "a.out"
    src = tmp_path / "m.c"
    src.write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-o", exe, src], check=True)
    with pytest.raises(ElfFormatError, match="not a relocatable"):
        read_object(exe)


def test_gcc_comment_count(fixture_pair, tmp_path, compile_c):
    pre, _ = fixture_pair("changed_body")
    assert gcc_comment_count(read_object(pre)) == 1
    other = compile_c(FIXTURES / "shared_static_name" / "other.c", "other", "other")
    linked = tmp_path / "linked.o"
    subprocess.run(["ld", "-r", "-o", linked, pre, other], check=True)
    # ld merges identical .comment strings; a linked object is still not a compile
    assert gcc_comment_count(read_object(linked)) >= 1


def _rela_headers(path) -> list[tuple[str, str, str, str]]:
    """(name, flags, link, info) of every RELA section, from readelf -SW."""
    text = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True,
                          check=True).stdout
    rows = []
    for line in text.splitlines():
        if " RELA " in line:
            f = line.split("]", 1)[1].split()
            flags = f[6] if len(f) == 10 else ""
            rows.append((f[0], flags, f[-3], f[-2]))
    return rows


@pytest.mark.parametrize("case", CASES)
def test_round_trip_keeps_relocation_sections(case, fixture_pair, tmp_path):
    for src in fixture_pair(case):
        obj = read_object(src)
        assert all(obj.rela_section(k).target == k for k in obj.relocs)
        out = tmp_path / "rt.o"
        write_object(obj, out)
        back = read_object(out)
        assert back.rela == obj.rela
        names = {s.name for s in obj.sections.values()}
        got = _rela_headers(out)
        assert got and all(n[len(".rela"):] in names for n, *_ in got)
        # Same names, flags and targets as the compiler wrote (the link is the symtab).
        assert [(n, fl) for n, fl, _l, _i in got] == \
            [(n, fl) for n, fl, _l, _i in _rela_headers(src)]


def test_round_trip_keeps_kernel_shaped_relocation_sections(compile_c, tmp_path):
    src = compile_c(FIXTURES / "tables.c", "tables", "tables")
    obj = read_object(src)
    assert {h.name for h in obj.rela.values()} >= {
        ".rela__bug_table", ".rela__ex_table", ".rela.altinstructions",
        ".rela.text.keep_me"}
    out = tmp_path / "rt.o"
    write_object(obj, out)
    readelf_clean(out)
    ld_r(tmp_path, out)
    assert sorted(_rela_headers(out)) == sorted(_rela_headers(src))


def test_livepatch_relocation_section(fixture_pair, tmp_path):
    """A second relocation section for one target, with its own name and flags."""
    obj = read_object(fixture_pair("string_literal")[1])
    text = obj.sections_named(".text.f")[0]
    ordinary = obj.relocs[text.index]
    printk = [r for r in ordinary if obj.symbols[r.sym].name == "printk"]
    obj.relocs[text.index] = [r for r in ordinary if r not in printk]
    flags = SHF_RELA_LIVEPATCH | SHF_ALLOC | SHF_INFO_LINK
    key = obj.add_rela_section(".klp.rela.vmlinux..text.f", flags, text.index, printk)
    assert key not in obj.sections and obj.rela_target(key) == text.index
    out = tmp_path / "klp.o"
    write_object(obj, out)
    readelf_clean(out)
    rows = {n: (fl, info) for n, fl, _link, info in _rela_headers(out)}
    assert rows[".klp.rela.vmlinux..text.f"][0] == "AIo"  # alloc, info link, OS-specific
    assert rows[".klp.rela.vmlinux..text.f"][1] == rows[".rela.text.f"][1]
    back = read_object(out)
    klp = [(k, h) for k, h in back.rela.items() if h.name.startswith(".klp.")]
    assert len(klp) == 1
    k, hdr = klp[0]
    assert (hdr.flags, back.sections[hdr.target].name) == (flags, ".text.f")
    assert [back.symbols[r.sym].name for r in back.relocs[k]] == ["printk"]
    assert object_bytes(back) == out.read_bytes()


def test_group_members_round_trip(tmp_path):
    asm = tmp_path / "g.s"
    asm.write_text("""
        .section .text.g,"axG",@progbits,sig,comdat
        .globl sig
sig:    call ext
        .section .data.g,"awG",@progbits,sig,comdat
        .quad sig
        .section .note.GNU-stack,"",@progbits
""")
    o = tmp_path / "g.o"
    subprocess.run(["as", "-o", o, asm], check=True)
    obj = read_object(o)
    group = next(s for s in obj.sections.values() if s.type == 17)
    members = group_members(group)
    assert len(members) == 4  # the two sections and their relocation sections
    assert [obj.sections[m].name for m in members if m in obj.sections] == [".text.g", ".data.g"]
    assert group_data(group, members) == group.data
    out = tmp_path / "out.o"
    write_object(obj, out)
    readelf_clean(out)
    text = subprocess.run(["readelf", "-gW", str(out)], capture_output=True, text=True).stdout
    assert "contains 4 sections" in text
    assert {line.split()[-1] for line in text.splitlines() if line.strip().startswith("[ ")} == \
        {".text.g", ".rela.text.g", ".data.g", ".rela.data.g"}


def test_truncated_objects_are_format_errors(fixture_pair, tmp_path):
    """Every cut of a real object is refused as ElfFormatError, never another exception."""
    data = fixture_pair("switch_table")[1].read_bytes()
    cut = tmp_path / "cut.o"
    step = max(1, len(data) // 400)
    for n in range(0, len(data), step):
        cut.write_bytes(data[:n])
        with pytest.raises(ElfFormatError):
            read_object(cut)
