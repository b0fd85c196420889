# SPDX-License-Identifier: GPL-2.0-only
"""The three oracles every written object goes through: readelf, ld -r, link-and-run."""

from __future__ import annotations

import subprocess
from pathlib import Path


def readelf_clean(path: Path) -> str:
    """readelf -a succeeds and warns about nothing."""
    r = subprocess.run(["readelf", "-aW", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    assert "Warning" not in r.stdout and "Error" not in r.stdout
    return r.stdout


def ld_r(tmp: Path, *objs: Path) -> Path:
    out = tmp / "ld-r.o"
    r = subprocess.run(["ld", "-r", "-o", str(out), *map(str, objs)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    return out


def link_and_run(tmp: Path, name: str, objs: list[Path],
                 redirect: dict[str, str] | None = None) -> str:
    """Link a non-PIE executable and run it.

    ``redirect`` maps old function -> new function: the old entry gets a
    5-byte ``jmp rel32`` to the new one, as ksplice does to the running kernel.
    """
    exe = tmp / name
    subprocess.run(["gcc", "-no-pie", "-o", str(exe), *map(str, objs)], check=True)
    if redirect:
        _redirect(exe, redirect)
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout


def driver(tmp: Path, name: str, calls: list[tuple[str, str]]) -> Path:
    """A main() printing label=f(i) for a few inputs; calls are (label, symbol)."""
    src = tmp / f"{name}.c"
    lines = ["#include <stdio.h>"]
    lines += [f"extern int {sym}(int);" for _label, sym in calls]
    lines.append("int main(void) {")
    lines.append("  static const int in[] = {-3, 0, 1, 2, 3, 4, 5, 6, 7, 9, 42, 43, 2000};")
    lines.append("  for (unsigned i = 0; i < sizeof in / sizeof in[0]; i++) {")
    for label, sym in calls:
        lines.append(f'    printf("{label}(%d)=%d\\n", in[i], {sym}(in[i]));')
    lines += ["  }", "  return 0;", "}"]
    src.write_text("\n".join(lines) + "\n")
    out = tmp / f"{name}.o"
    subprocess.run(["gcc", "-O0", "-c", "-o", str(out), str(src)], check=True)
    return out


def _redirect(exe: Path, pairs: dict[str, str]) -> None:
    from elftools.elf.elffile import ELFFile

    nm = subprocess.run(["nm", str(exe)], capture_output=True, text=True, check=True).stdout
    addr = {}
    for line in nm.splitlines():
        parts = line.split()
        if len(parts) == 3:
            addr.setdefault(parts[2], int(parts[0], 16))
    data = bytearray(exe.read_bytes())
    with open(exe, "rb") as f:
        segs = [(s["p_vaddr"], s["p_offset"], s["p_filesz"]) for s in ELFFile(f).iter_segments()
                if s["p_type"] == "PT_LOAD"]
    for old, new in pairs.items():
        a, b = addr[old], addr[new]
        off = next(o + a - v for v, o, n in segs if v <= a < v + n)
        data[off:off + 5] = b"\xe9" + (b - (a + 5)).to_bytes(4, "little", signed=True)
    exe.write_bytes(bytes(data))
