# SPDX-License-Identifier: GPL-2.0-only
"""Hashes of running kernel functions, read in the guest from /proc/kcore (root only).

A refused apply must leave every byte of the kernel's text as it was; the
update's modules are gone by then, so their sysfs ``before=``/``now=``
hashes cannot say so.  This reads the bytes directly: a function's address
from /proc/kallsyms, its extent up to the next symbol's address there (an
upper bound of its size, padding included), the bytes from /proc/kcore's
PT_LOAD segment that maps that address (pyelftools).

    python -m ksplice_tasks.testing.kcore NAME...   # prints "NAME <sha256>" per function
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

from elftools.elf.elffile import ELFFile

from ksplice_tasks.errors import UserError


def text_extents(kallsyms: str, wanted: Sequence[str]) -> dict[str, tuple[int, int]]:
    """name -> (address, bytes up to the next higher symbol) for each of ``wanted``.

    ``kallsyms`` is /proc/kallsyms text (``addr type name [module]``).
    UserError when a name is missing, listed twice, or its address is 0
    (kallsyms read without root).
    """
    addrs: list[int] = []
    where: dict[str, list[int]] = {}
    for line in kallsyms.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        a = int(parts[0], 16)
        addrs.append(a)
        if parts[2] in wanted:
            where.setdefault(parts[2], []).append(a)
    addrs = sorted(set(addrs))
    out = {}
    for name in wanted:
        found = where.get(name, [])
        if len(found) != 1 or found[0] == 0:
            raise UserError(f"{name}: {len(found)} addresses in /proc/kallsyms (need one, nonzero)")
        i = bisect.bisect_right(addrs, found[0])
        if i >= len(addrs):
            raise UserError(f"{name}: no symbol after it to bound its size")
        out[name] = (found[0], addrs[i] - found[0])
    return out


def read_kcore(kcore: Path, addr: int, size: int) -> bytes:
    """``size`` bytes at virtual ``addr`` of a /proc/kcore-style ELF core; UserError if unmapped."""
    with open(kcore, "rb") as f:
        elf = ELFFile(f)
        for seg in elf.iter_segments():
            h = seg.header
            if h.p_type == "PT_LOAD" and h.p_vaddr <= addr and addr + size <= h.p_vaddr + h.p_memsz:
                f.seek(h.p_offset + addr - h.p_vaddr)
                return f.read(size)
    raise UserError(f"{addr:#x}+{size:#x} is in no PT_LOAD segment of {kcore}")


def hashes(names: Sequence[str], proc: Path = Path("/proc")) -> dict[str, str]:
    """name -> sha256 hex of the function's running bytes (see text_extents)."""
    ext = text_extents((proc / "kallsyms").read_text(), names)
    return {n: hashlib.sha256(read_kcore(proc / "kcore", a, s)).hexdigest()
            for n, (a, s) in ext.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kcore", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="+", help="function names in /proc/kallsyms")
    args = p.parse_args(argv)
    try:
        for name, digest in hashes(args.names).items():
            print(f"{name} {digest}")
    except (UserError, OSError) as e:
        print(f"kcore: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
