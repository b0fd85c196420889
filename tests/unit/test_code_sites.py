# SPDX-License-Identifier: GPL-2.0-only
"""Code sites for run-pre matching: the pre object's boot-rewritten instructions.

The object below is assembled by hand with the instruction forms measured in
Debian's 6.1.0-57-amd64 objects (kmodsrc/README.md, "Debian's shipped
kernel"): ``jmp __x86_return_thunk``, a retpoline call (plain and with the
CS prefix GCC adds for r8-r15), an inline static call, and two jump labels
(a 5-byte NOP and a 2-byte jmp).  Each site's table entry is written the
way objtool and the jump label macros write it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ksplice_tasks.encode import ksplice_tables as md
from ksplice_tasks.obj.elfread import read_object
from ksplice_tasks.obj.kernel_sections import LOADER_SYMBOLS
from ksplice_tasks.obj.objmanip import helper_sites, keep_primary

TAG = "____0_s1t3s"

ASM = r"""
    .section .text.f, "ax"
    .globl f
    .type f, @function
f:
    call __fentry__                      # +0x00
0:  .byte 0x0f, 0x1f, 0x44, 0x00, 0x00   # +0x05 jump label, NOP5
    call __x86_indirect_thunk_rax        # +0x0a retpoline
1:  .byte 0x2e                           # +0x0f retpoline, CS prefix
    call __x86_indirect_thunk_r11
2:  call __SCT__preempt_schedule         # +0x15 inline static call
3:  jmp 4f                               # +0x1a jump label, jmp rel8
    nop
4:  jmp __x86_return_thunk               # +0x1d return site
    int3
5:  .byte 0x66, 0x0f                     # +0x23 not a form any table allows
    .size f, . - f

    .section .return_sites, "a"
    .long 4b - .
    .long 5b - .
    .section .retpoline_sites, "a"
    .long f + 0xa - .
    .long 1b - .
    .section .static_call_sites, "a"
    .long 2b - .
    .long __SCK__preempt_schedule - .
    .section __jump_table, "aw"
    .balign 8
    .long 0b - ., 4b - .
    .quad static_key_x - .
    .long 3b - ., 4b - .
    .quad static_key_x + 1 - .
"""


@pytest.fixture(scope="module")
def sites_obj(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sites")
    (d / "s.s").write_text(ASM)
    subprocess.run(["as", "-o", d / "s.o", d / "s.s"], check=True)
    return d / "s.o"


def test_helper_sites_follow_the_tables(sites_obj: Path) -> None:
    sites = helper_sites(read_object(sites_obj), TAG)
    sec = ".text.f" + TAG + "_pre"
    got = [(s.section, s.offset, s.kind, s.length, s.reg, s.target) for s in sites]
    assert got == [
        (sec, 0x05, "jump_label", 5, 0, 0x1d),
        (sec, 0x0a, "retpoline", 5, 0, -1),
        (sec, 0x0f, "retpoline", 6, 11, -1),
        (sec, 0x15, "static_call", 5, 0, -1),
        (sec, 0x1a, "jump_label", 2, 0, 0x1d),
        (sec, 0x1d, "return", 5, 0, -1),
    ]  # the entry at +0x23 is no jmp: left out, compared strictly


def test_site_table_assembles(sites_obj: Path, tmp_path: Path) -> None:
    sites = md.sites_from_records(helper_sites(read_object(sites_obj), TAG))
    asm = md.render_asm(md.ModuleTables(sites=sites), {})
    (tmp_path / "t.s").write_text(asm)
    subprocess.run(["as", "-o", tmp_path / "t.o", tmp_path / "t.s"], check=True)
    obj = read_object(tmp_path / "t.o")
    tab = next(s for s in obj.sections.values() if s.name == ".ksplice.ksplice_codesites")
    assert tab.size == (len(sites) + 1) * md.CODESITE.size  # and the terminator
    kind_off, len_off = md.CODESITE.offset("kind"), md.CODESITE.offset("len")
    first = tab.data[:md.CODESITE.size]
    assert first[kind_off] == md.FLAGS["KSPLICE_SITE_JUMP_LABEL"][0] and first[len_off] == 5
    assert tab.data[-md.CODESITE.size:] == bytes(md.CODESITE.size)


def test_bad_site_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        md.render_asm(md.ModuleTables(sites=[md.SiteInput("a", 0, "alternative", 5)]), {})


def test_primary_keeps_thunk_relocations_for_the_loader(sites_obj: Path) -> None:
    """module_finalize() patches return and retpoline sites only if it sees the thunk."""
    prim, records = keep_primary(read_object(sites_obj), ["f"], TAG)
    sizes = {s.name: s.size for s in prim.sections.values()}
    assert sizes[".return_sites"] == 8 and sizes[".retpoline_sites"] == 8
    stripped = {r.symbol for r in records}
    assert {"__x86_return_thunk", "__x86_indirect_thunk_rax",
            "__x86_indirect_thunk_r11", "__fentry__"} <= stripped
    assert {"__x86_return_thunk", "__x86_indirect_thunk_rax",
            "__x86_indirect_thunk_r11"} <= LOADER_SYMBOLS
    assert "__SCT__preempt_schedule" not in LOADER_SYMBOLS
