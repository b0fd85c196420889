# SPDX-License-Identifier: GPL-2.0-only
"""What the boot's patching writes, as the host ships it to run-pre matching (obj/bootpatch).

The object is assembled with the forms Linux 6.1.192's headers emit
(arch/x86/include/asm/alternative.h ALTERNATIVE/ALTERNATIVE_TERNARY with
``.skip`` padding of ``0x90``, cpufeature.h's static_cpu_has() with its
``.altinstr_aux`` slow path, paravirt_types.h's ``_paravirt_alt`` entry,
alternative.h's LOCK_PREFIX_HERE), and a tail call to another function of the
file next to an intra-function branch (issue 10's kind 2).  The expected bytes
were read off Linux 6.1 alternative.c (optimize_nops(), add_nops(),
<asm/nops.h>) and the running kernels measured in issue 10 (``90 90 90`` ->
``0f 1f 00``; ``f3 aa 90 90 90`` -> ``f3 aa 0f 1f 00``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ksplice_tasks.encode import ksplice_tables as md
from ksplice_tasks.obj import bootpatch
from ksplice_tasks.obj.elfread import read_object
from ksplice_tasks.obj.objmanip import helper_sites

TAG = "____0_b00t"

ASM = r"""
    .section .text.f, "ax"
    .globl f
    .type f, @function
f:
661: .skip 3, 0x90                         # +0x00 stac: "" / "stac", padding only
662:
663: rep stosb                             # +0x03 clear_user: call or rep stosb
     .skip 3, 0x90
664:
665: jmp 6f                                # +0x08 static_cpu_has(feature 0x210)
666:
     jne 7f                                # +0x0d plain branch, no relocation
     jmp g                                 # +0x0f tail call: relaxable
7:   ret                                   # +0x14 t_no
771: call *pv_ops+8(%rip)                  # +0x15 PVOP_ALT irq_enable: sti unless XENPV
772:
8:   lock; incl (%rdi)                     # +0x1b LOCK_PREFIX
     ret
    .size f, . - f

    .section .text.g, "ax"
    .type g, @function
g:  ret
    .size g, . - g

    .section .altinstr_aux, "ax"
6:  testb $1, boot_cpu_data+40(%rip)
    jnz 7b
    jmp 7b

    .section .altinstr_replacement, "ax"
r1: .byte 0x0f, 0x01, 0xcb
r2: call clear_user_erms
r3: jmp 7b
r4:
r5: sti
r6:

    .section .altinstructions, "a"
    .long 661b - ., r1 - .
    .word 0x134
    .byte 662b - 661b, r2 - r1
    .long 663b - ., r2 - .
    .word 0x8244
    .byte 664b - 663b, r3 - r2
    .long 665b - ., r3 - .
    .word 0x75
    .byte 666b - 665b, r4 - r3
    .long 665b - ., r4 - .
    .word 0x210
    .byte 666b - 665b, 0
    .long 771b - ., r5 - .
    .word 0x8000 | 0x74
    .byte 772b - 771b, r6 - r5

    .section .parainstructions, "a"
    .balign 8
    .quad 771b
    .byte 34, 772b - 771b
    .short 1
    .balign 8

    .section .smp_locks, "a"
    .long 8b - .
"""


@pytest.fixture(scope="module")
def obj_path(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bootpatch")
    (d / "b.s").write_text(ASM)
    subprocess.run(["as", "-o", d / "b.o", d / "b.s"], check=True)
    return d / "b.o"


@pytest.mark.parametrize("code, length, want", [
    ("909090", 3, "0f1f00"),                       # issue 10 kind 1, as measured
    ("f3aa909090", 5, "f3aa0f1f00"),               # copy_siginfo_to_user's clear_user
    ("90" * 9, 9, "0f1f840000000000" + "90"),      # NOP8 + NOP1, as add_nops() chunks
    ("fb" + "90" * 5, 6, "fb0f1f440000"),          # sti + NOP5
    ("90", 1, "90"),                               # one 0x90 stays
    ("b0909090", 4, "b0906690"),                   # mov $0x90, %al: its 0x90 is kept
])
def test_optimize_nops(code: str, length: int, want: str) -> None:
    assert bootpatch.optimize_nops(bytes.fromhex(code), length).hex() == want


def test_add_nops_are_the_kernels() -> None:
    assert bootpatch.add_nops(3) == bytes.fromhex("0f1f00")
    assert bootpatch.add_nops(13) == bootpatch.NOPS[8] + bootpatch.NOPS[5]


def _sites(obj_path: Path) -> list:
    return helper_sites(read_object(obj_path), TAG)


def test_alternatives_ship_original_then_entries_in_table_order(obj_path: Path) -> None:
    alts = [(s.offset, s.feature, s.template, s.repl_len, s.symbol, s.addend, s.target, s.flags)
            for s in _sites(obj_path) if s.kind == "alternative"]
    orig, pv = bootpatch.ALT_ORIGINAL, bootpatch.ALT_ORIGINAL | bootpatch.ALT_PARAVIRT
    assert alts == [
        (0x00, 0, "0f1f00", 0, "", 0, -1, orig),
        (0x00, 0x134, "0f01cb", 3, "", 0, -1, 0),
        (0x03, 0, "f3aa0f1f00", 0, "", 0, -1, orig),
        (0x03, 0x8244, "e800000000", 5, "clear_user_erms", 0, -1, 0),
        (0x08, 0, "e900000000", 0, "", 0, -1, orig),      # jmp .altinstr_aux: a relocation
        (0x08, 0x75, "e900000000", 5, "", 0, 0x14, 0),    # jmp t_no: offset 0x14 of f
        (0x08, 0x210, "0f1f440000", 0, "", 0, -1, 0),     # "": NOP5
        (0x15, 34, "ff1500000000", 0, "", 0, -1, pv),     # also a paravirt site, type 34
        (0x15, 0x8074, "fb0f1f440000", 1, "", 0, -1, 0),  # sti, padded
    ]


def test_relaxable_function_gets_its_branches(obj_path: Path) -> None:
    sites = _sites(obj_path)
    branches = [(s.offset, s.length, s.target) for s in sites if s.kind == "branch"]
    # jne +0x0d -> 0x14; the jmp to g is a relocation, not a branch site
    assert branches == [(0x0d, 2, 0x14)]
    assert [(s.offset, s.length) for s in sites if s.kind == "smp_lock"] == [(0x1b, 1)]
    assert not [s for s in sites if s.kind == "paravirt"]  # merged into the alternative


def test_sites_encode(obj_path: Path, tmp_path: Path) -> None:
    sites = md.sites_from_records(_sites(obj_path))
    asm = md.render_asm(md.ModuleTables(sites=sites), {"clear_user_erms": [0xFFFFFFFF81000010]})
    (tmp_path / "t.s").write_text(asm)
    subprocess.run(["as", "-o", tmp_path / "t.o", tmp_path / "t.s"], check=True)
    tab = next(s for s in read_object(tmp_path / "t.o").sections.values()
               if s.name == ".ksplice.ksplice_codesites")
    assert tab.size == (len(sites) + 1) * md.CODESITE.size
    assert "\t.byte 0xe8, 0x0, 0x0, 0x0, 0x0" in asm and "\t.quad 0xffffffff81000010" in asm
