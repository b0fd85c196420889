# SPDX-License-Identifier: GPL-2.0-only
"""The ELF reader and writer: round trips checked by readelf and ld -r."""

from __future__ import annotations

import subprocess

import pytest
from conftest import CASES, FIXTURES
from oracles import ld_r, readelf_clean

from ksplice_tasks.obj.elfread import (
    STB_LOCAL,
    ElfFormatError,
    gcc_comment_count,
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
