# SPDX-License-Identifier: GPL-2.0-only
"""The kernel side's sources: generated abort causes, layering, kernel-doc and checkpatch.

The modules themselves are built and run by tests/system; these checks need
only a host compiler and, for checkpatch and kernel-doc, the cached Linux
6.1 source tree (``testkernel.pristine_source()``).
"""

from __future__ import annotations

import errno
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ksplice_tasks.encode import abort_causes as ac
from ksplice_tasks.errors import UserError
from ksplice_tasks.stages import kmod
from ksplice_tasks.target import apply
from ksplice_tasks.testing import testkernel

SRC = kmod.kmodsrc_dir()
C_FILES = sorted(p for p in SRC.iterdir() if p.suffix in (".c", ".h"))

# Each unit (a .c file and its header) may include the headers of the units
# before it, never after: the dependency graph of the kernel side is a DAG.
LAYERS = ("ksplice", "resolve", "runpre", "patch", "sysfs", "primary", "helper")
# Generated headers everything may include, and what includes them.
GENERATED = {"ksplice_tables.h", ac.HEADER_NAME, "modcommon.auto.h"}
# ksplice.h declares the one function the two modules share across their
# boundary (symbol_get in helper.c); primary.c defines it.
DEFINED_ELSEWHERE = {"ksplice_helper_attach": "primary.c"}


# -- abort causes ------------------------------------------------------------------


def test_checked_in_abort_header_is_generated() -> None:
    text = (SRC / ac.HEADER_NAME).read_text()
    assert text == ac.render_abort_header(), ("regenerate: python -m "
                                               "ksplice_tasks.encode.headers"
                                               f" > kmodsrc/{ac.HEADER_NAME}")


def test_abort_header_compiles_and_agrees_with_python(tmp_path: Path) -> None:
    """Enumerator values, sysfs names and errnos of the compiled header equal the Python list."""
    lines = ["#include <stdio.h>", f'#include "{ac.HEADER_NAME}"', "int main(void) {"]
    for c in ac.ABORT_CAUSES:
        lines.append(f'printf("%d %s %d\\n", (int){c.enumerator}, '
                     f"ksplice_abort_name({c.enumerator}), ksplice_abort_errno({c.enumerator}));")
    n = len(ac.ABORT_CAUSES)
    lines += [f'printf("%s %d\\n", ksplice_abort_name((enum ksplice_abort){n}), '
              f"ksplice_abort_errno((enum ksplice_abort){n}));", "return 0;", "}"]
    (tmp_path / "causes.c").write_text("\n".join(lines) + "\n")
    exe = tmp_path / "causes"
    subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", f"-I{SRC}", "-o", str(exe),
                    str(tmp_path / "causes.c")], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    expect = [f"{i} {c.name} {-getattr(errno, c.errno) if c.errno else 0}"
              for i, c in enumerate(ac.ABORT_CAUSES)]
    assert out.splitlines() == [*expect, f"unknown {-errno.EINVAL}"]


def test_abort_causes_are_well_formed() -> None:
    names = [c.name for c in ac.ABORT_CAUSES]
    assert names[0] == "none" and not ac.ABORT_CAUSES[0].errno
    assert len(set(names)) == len(names)
    for c in ac.ABORT_CAUSES[1:]:
        assert re.fullmatch(r"[a-z][a-z_]*", c.name), c
        assert c.errno and hasattr(errno, c.errno), c
        assert c.explain and c.doc, c


def test_abort_causes_have_one_source() -> None:
    """No kmodsrc file but the generated header spells the enum or a cause's name,
    and the target commands explain causes from the same list."""
    for p in C_FILES:
        if p.name == ac.HEADER_NAME:
            continue
        text = re.sub(r"/\*.*?\*/|//.*", "", p.read_text(), flags=re.S)
        assert "enum ksplice_abort {" not in text, p.name
        for c in ac.ABORT_CAUSES:
            assert f'"{c.name}"' not in text, (p.name, c.name)
    assert apply.explain is ac.explain
    assert "code busy" in apply.explain("code_busy")
    assert apply.explain("bogus") == "the kernel reported 'bogus'"


# -- structure -----------------------------------------------------------------------

_INCLUDE = re.compile(r'^#include "([^"]+)"', re.M)


def _unit(name: str) -> str:
    return name.rsplit(".", 1)[0]


def test_every_source_is_shipped() -> None:
    """kmod copies KMODSRC_FILES into the build directory: nothing may be left behind."""
    present = {p.name for p in SRC.iterdir() if p.name != "README.md"}
    assert present == set(kmod.KMODSRC_FILES)


def test_includes_follow_the_layers() -> None:
    """Every quoted include is a generated header or a lower layer's (or its own) header."""
    for p in C_FILES:
        if p.name in GENERATED:
            continue
        me = LAYERS.index(_unit(p.name))
        for inc in _INCLUDE.findall(p.read_text()):
            if inc in GENERATED:
                continue
            assert (SRC / inc).is_file(), (p.name, inc)
            them = LAYERS.index(_unit(inc))
            assert them < me or (them == me and p.suffix == ".c"), \
                f"{p.name} includes {inc}: only lower layers' headers"
    for g in GENERATED - {"modcommon.auto.h"}:
        assert not _INCLUDE.findall((SRC / g).read_text()), g


def _prototypes(header: Path) -> list[str]:
    """Names of the functions a header declares (not its static inline definitions)."""
    text = re.sub(r"/\*.*?\*/", "", header.read_text(), flags=re.S)
    text = re.sub(r"^#.*(?:\\\n.*)*$", "", text, flags=re.M)
    while True:  # struct and enum bodies, inline function bodies: innermost first
        text, n = re.subn(r"\{[^{}]*\}", "@", text)
        if not n:
            break
    out = []
    for stmt in re.split(r"[;@]", text):
        stmt = " ".join(stmt.split())
        m = re.match(r"[\w\s*]*?\b(\w+) ?\(", stmt)
        if m and not stmt.startswith(("static ", "typedef ", "extern ")):
            out.append(m.group(1))
    return out


def test_headers_declare_only_their_own_unit() -> None:
    """A function declared in x.h is defined in x.c: a unit's header is its whole interface."""
    headers = [p for p in C_FILES if p.suffix == ".h" and p.name not in GENERATED]
    assert headers
    seen = 0
    for h in headers:
        for name in _prototypes(h):
            seen += 1
            home = DEFINED_ELSEWHERE.get(name, h.with_suffix(".c").name)
            text = (SRC / home).read_text()
            assert re.search(rf"^\w[\w\s\*]*\b{name}\(", text, re.M), \
                f"{name}() is declared in {h.name} but not defined in {home}"
    assert seen >= 20


def test_entry_points_have_kernel_doc() -> None:
    """Every function declared in a header has a kernel-doc comment where it is defined."""
    docs = {m.group(1) for p in C_FILES
            for m in re.finditer(r"^/\*\*\n \* (\w+)\(\) - \S", p.read_text(), re.M)}
    for h in (p for p in C_FILES if p.suffix == ".h" and p.name not in GENERATED):
        for name in _prototypes(h):
            assert name in docs, f"{name}() ({h.name}) has no kernel-doc comment"


def test_no_hand_rolled_opcodes() -> None:
    """Opcodes and the ftrace NOP come from <asm/text-patching.h> and <asm/nops.h>."""
    for p in C_FILES:
        text = p.read_text()
        for op in ("0xe8", "0xe9", "0xeb", "0xcc", "0x1f, 0x44"):
            assert op not in text.lower(), (p.name, op)
    assert sum("BYTES_NOP5" in p.read_text() for p in C_FILES) == 1


# -- the kernel's own checkers ---------------------------------------------------------


@pytest.fixture(scope="module")
def linux_src() -> Path:
    """The extracted Linux 6.1 source (scripts/checkpatch.pl, scripts/kernel-doc)."""
    try:
        src = testkernel.pristine_source()
    except UserError as e:
        pytest.fail(f"checkpatch and kernel-doc need the Linux 6.1 source tree: {e}")
    for script in ("checkpatch.pl", "kernel-doc"):
        if not (src / "scripts" / script).is_file():
            pytest.fail(f"{src} has no scripts/{script}: remove the directory to re-extract it")
    return src


def _checkpatch(src: Path, path: Path) -> tuple[str, int, str]:
    r = subprocess.run(["perl", str(src / "scripts" / "checkpatch.pl"), "--strict", "--no-tree",
                        "--no-summary", "--terse", "-f", str(path)],
                       capture_output=True, text=True, cwd=SRC)
    return path.name, r.returncode, (r.stdout + r.stderr).strip()


def test_checkpatch_strict_is_clean(linux_src: Path) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda p: _checkpatch(linux_src, p), C_FILES))
    findings = [f"{name}: {out or f'exit {rc}'}" for name, rc, out in results if rc or out]
    assert not findings, "checkpatch --strict:\n" + "\n".join(findings)


def test_kernel_doc_is_clean(linux_src: Path) -> None:
    r = subprocess.run(["perl", str(linux_src / "scripts" / "kernel-doc"), "-v", "-none",
                        "-Werror", *map(str, C_FILES)], capture_output=True, text=True)
    problems = [line for line in r.stderr.splitlines() if ": info: " not in line]
    assert r.returncode == 0 and not problems, "\n".join(problems) or f"exit {r.returncode}"


def test_generated_headers_are_current() -> None:
    """The one command that writes kmodsrc's generated headers finds nothing stale."""
    from ksplice_tasks.encode import headers

    assert set(headers.GENERATED) == {"ksplice_tables.h", "ksplice_abort.h"}
    assert headers.stale(kmod.kmodsrc_dir()) == []
    assert headers.main(["--check", str(kmod.kmodsrc_dir())]) == 0
