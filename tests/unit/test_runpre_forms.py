# SPDX-License-Identifier: GPL-2.0-only
"""The retpoline encodings run-pre matching accepts, against bytes measured on Debian.

``ksplice_retpoline_form()`` of kmodsrc/runpre.c is a pure function; it is
compiled here in user space with the few <asm/*.h> names it uses.  The lfence
forms were read from Debian's 6.1.0-57-amd64 booted under qemu TCG with
``spectre_v2=retpoline,lfence`` (kmodsrc/README.md): ``vfs_llseek`` +0x13
(``jmp`` through rax), ``vfs_fallocate`` +0x12b (CS-prefixed call through r8),
``do_dentry_open`` +0x1df (through r13), and 15 calls through rax.  The forms
without lfence are what apply_retpolines() writes when spectre_v2 selects no
retpoline (eIBRS; not reachable under TCG).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

RUNPRE = Path(__file__).resolve().parents[2] / "kmodsrc" / "runpre.c"

SHIM = """
#include <stdio.h>
#include <string.h>
#include <stdbool.h>
typedef unsigned char u8;
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define CALL_INSN_OPCODE 0xE8
#define JMP32_INSN_OPCODE 0xE9
#define JMP8_INSN_SIZE 2
#define INT3_INSN_OPCODE 0xCC
#define BYTES_NOP1 0x90
#define BYTES_NOP2 0x66, 0x90
#define BYTES_NOP3 0x0f, 0x1f, 0x00
#define BYTES_NOP4 0x0f, 0x1f, 0x40, 0x00
"""

MAIN = r"""
int main(int argc, char **argv)
{
	u8 pre[6], out[6];
	unsigned int len = 0, reg, lfence, i;

	sscanf(argv[2], "%u", &reg);
	sscanf(argv[3], "%u", &lfence);
	for (; argv[1][2 * len]; len++)
		sscanf(argv[1] + 2 * len, "%2hhx", &pre[len]);
	if (!ksplice_retpoline_form(pre, len, reg, lfence, out)) {
		printf("unpatched\n");
		return 0;
	}
	for (i = 0; i < len; i++)
		printf("%02x", out[i]);
	printf("\n");
	return argc - 4;
}
"""


@pytest.fixture(scope="module")
def form_tool(tmp_path_factory) -> Path:
    s = RUNPRE.read_text()
    defines = "\n".join(ln for ln in s.splitlines() if ln.startswith("#define KSPLICE_"))
    tables = s[s.index("static const u8 ksplice_lfence"):s.index("/* static_call's")]
    m = re.search(r"^static bool ksplice_retpoline_form\(.*?^}\n", s, re.S | re.M)
    assert m, "ksplice_retpoline_form() not found in runpre.c"
    d = tmp_path_factory.mktemp("forms")
    (d / "t.c").write_text(SHIM + defines + "\n" + tables + "\n" + m.group(0) + MAIN)
    subprocess.run(["gcc", "-Wall", "-Wno-unused-const-variable", "-Werror", "-o", d / "t",
                    d / "t.c"], check=True)
    return d / "t"


@pytest.mark.parametrize(("pre", "reg", "lfence", "want"), [
    # measured: Debian 6.1.0-57-amd64, spectre_v2=retpoline,lfence
    ("e800000000", 0, 1, "0faee8ffd0"),
    ("e900000000", 0, 1, "0faee8ffe0"),
    ("2ee800000000", 8, 1, "0faee841ffd0"),
    ("2ee800000000", 13, 1, "0faee841ffd5"),
    # does not fit: the kernel leaves the thunk call
    ("e800000000", 11, 1, "unpatched"),
    ("0f8500000000", 0, 1, "unpatched"),
    # without retpolines: the indirect branch, int3 after a jmp, NOPs merged
    ("e800000000", 0, 0, "ffd00f1f00"),
    ("e900000000", 0, 0, "ffe0cc6690"),
    ("e800000000", 11, 0, "41ffd36690"),
    ("2ee800000000", 8, 0, "41ffd00f1f00"),
    ("0f8500000000", 0, 0, "7404ffe0cc90"),
    ("0f8400000000", 11, 0, "750441ffe3cc"),
])
def test_retpoline_forms(form_tool: Path, pre: str, reg: int, lfence: int, want: str) -> None:
    r = subprocess.run([form_tool, pre, str(reg), str(lfence)], capture_output=True, text=True,
                       check=True)
    assert r.stdout.strip() == want
