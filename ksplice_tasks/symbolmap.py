# SPDX-License-Identifier: GPL-2.0-only
"""The target kernel's symbols: ORIG_CONFIG's ``System.map`` or ``kallsyms``, and its
``Module.symvers``, read into the link-time map the pipeline uses.

The *link-time map* is ``name -> [address, ...]`` (file order, duplicates
dropped: static names repeat), addresses as the linker placed them, before
any KASLR offset. A real ``System.map`` is that already. A ``kallsyms`` (a
root copy of the target's ``/proc/kallsyms``) carries the boot's KASLR offset
and the loaded modules' symbols; :func:`parse_kallsyms` removes both.

Facts used (Linux 6.1, x86-64):

- ``__START_KERNEL_map`` is 0xffffffff80000000
  (``arch/x86/include/asm/page_64_types.h``);
- the linker script starts the image at ``__START_KERNEL`` =
  ``__START_KERNEL_map + __PHYSICAL_START`` and puts ``_text`` there
  (``arch/x86/kernel/vmlinux.lds.S``), where ``__PHYSICAL_START`` is
  CONFIG_PHYSICAL_START rounded up to CONFIG_PHYSICAL_ALIGN
  (``arch/x86/include/asm/page_types.h``, ``asm/boot.h``);
- KASLR moves the image by a multiple of CONFIG_PHYSICAL_ALIGN within
  KERNEL_IMAGE_SIZE (1 GiB with RANDOMIZE_BASE, ``page_64_types.h``);
- with CONFIG_KALLSYMS_ABSOLUTE_PERCPU, per-CPU symbols are listed at their
  small offsets into the per-CPU area, which KASLR does not move;
- ``/proc/kallsyms`` shows all-zero addresses to a reader without
  CAP_SYSLOG (kptr_restrict), and lists module symbols as
  ``addr t name\\t[module]``;
- Debian's ``/boot/System.map-*`` is one stub line (``ffffffffffffffff B The
  real System.map is in the linux-image-<version>-dbg package``);
- ``Module.symvers`` lines are ``crc<TAB>name<TAB>module<TAB>export<TAB>namespace``
  (``scripts/mod/modpost.c``), and each exported symbol has a
  ``__ksymtab_<name>`` entry in the image (``include/linux/export.h``).

Everything here is pure parsing and comparing; errors are one-line UserErrors.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ksplice_tasks.errors import UserError

SymbolMap = Mapping[str, Sequence[int]]

SYSTEM_MAP = "System.map"
KALLSYMS = "kallsyms"
MODULE_SYMVERS = "Module.symvers"
KERNEL_RELEASE = "kernel.release"

START_KERNEL_MAP = 0xFFFFFFFF80000000
KERNEL_IMAGE_SIZE = 1024 * 1024 * 1024
# Kconfig defaults on x86-64 (arch/x86/Kconfig) when a .config lacks them.
DEFAULT_PHYSICAL_START = 0x1000000
DEFAULT_PHYSICAL_ALIGN = 0x200000
# gcc aligns x86-64 functions to 16 bytes: at most 15 bytes of padding follow one.
FUNCTION_PADDING = 16

_MAP_LINE = re.compile(r"^([0-9a-fA-F]+)\s+(\S)\s+(\S+)(.*)$")
_STUB_MARK = "The real System.map is in"

HOW_TO_GET = ("install linux-image-$(uname -r)-dbg on the target and copy "
              "/usr/lib/debug/boot/System.map-$(uname -r) to {dir}/System.map, or as root "
              "copy the running kernel's /proc/kallsyms to {dir}/kallsyms")


def parse_system_map(text: str) -> dict[str, list[int]]:
    """``nm``-style lines ``addr type name`` -> name -> addresses (hex, bytes of address space).

    File order, duplicates dropped (static names may repeat); lines that do
    not parse are skipped. The one parser for System.map and kallsyms lines.
    """
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        m = _MAP_LINE.match(line)
        if not m:
            continue
        addrs = out.setdefault(m.group(3), [])
        addr = int(m.group(1), 16)
        if addr not in addrs:
            addrs.append(addr)
    return out


def is_stub(text: str) -> bool:
    """True for Debian's one-line placeholder System.map (no symbols, a pointer to -dbg)."""
    return _STUB_MARK in text[:4096] and len(text) < 4096


def config_value(config_text: str, name: str) -> str | None:
    """``CONFIG_<name>``'s value in a .config, quotes kept; None when unset or absent."""
    m = re.search(rf"^CONFIG_{name}=(.*)$", config_text, re.M)
    return m.group(1).strip() if m else None


def _config_int(config_text: str, name: str, default: int) -> int:
    value = config_value(config_text, name)
    if value is None:
        return default
    try:
        return int(value, 0)
    except ValueError as e:
        raise UserError(f".config: CONFIG_{name}={value} is not a number") from e


def physical_align(config_text: str) -> int:
    """CONFIG_PHYSICAL_ALIGN in bytes (KASLR's step); the Kconfig default when absent."""
    return _config_int(config_text, "PHYSICAL_ALIGN", DEFAULT_PHYSICAL_ALIGN)


def text_link_address(config_text: str) -> int:
    """``_text``'s link-time address for a .config: where System.map puts it.

    0xffffffff80000000 + CONFIG_PHYSICAL_START rounded up to
    CONFIG_PHYSICAL_ALIGN (page_64_types.h, page_types.h, vmlinux.lds.S).
    With Debian's and the defaults' values: 0xffffffff81000000.
    """
    start = _config_int(config_text, "PHYSICAL_START", DEFAULT_PHYSICAL_START)
    align = physical_align(config_text)
    return START_KERNEL_MAP + (start + align - 1) // align * align


def in_kernel_image(addr: int) -> bool:
    """Addresses KASLR moves: those in the kernel image mapping (not per-CPU offsets)."""
    return addr >= START_KERNEL_MAP


@dataclass(frozen=True)
class Kallsyms:
    """A kallsyms file made a link-time map: ``symbols`` and the KASLR ``offset`` removed."""

    symbols: dict[str, list[int]]
    offset: int
    module_lines: int


def parse_kallsyms(text: str, config_text: str, where: str = KALLSYMS) -> Kallsyms:
    """A ``/proc/kallsyms`` copy -> the link-time map of the same kernel.

    Drops module symbols (lines ending ``[module]``); subtracts the KASLR
    offset (kallsyms' ``_text`` minus :func:`text_link_address`) from
    addresses in the kernel image mapping; keeps per-CPU offsets as they are.
    UserError (one line, naming ``where``) when every address is zero (read
    without root), when ``_text`` is missing or listed twice, or when the
    offset is not a KASLR offset for this .config (not a multiple of
    CONFIG_PHYSICAL_ALIGN in [0, 1 GiB)): a kallsyms of a kernel with
    another config.
    """
    core: list[tuple[str, int]] = []
    modules = 0
    nonzero = False
    for line in text.splitlines():
        m = _MAP_LINE.match(line)
        if not m:
            continue
        if m.group(4).strip().startswith("["):
            modules += 1
            continue
        addr = int(m.group(1), 16)
        nonzero = nonzero or addr != 0
        core.append((m.group(3), addr))
    if not core:
        raise UserError(f"{where} lists no kernel symbols: copy the target's /proc/kallsyms")
    if not nonzero:
        raise UserError(f"{where} has only zero addresses: read /proc/kallsyms as root "
                        "(sudo cat /proc/kallsyms > kallsyms)")
    texts = [a for n, a in core if n == "_text"]
    if len(texts) != 1:
        raise UserError(f"{where} lists _text {len(texts)} times, need exactly once: "
                        "it is not a copy of /proc/kallsyms")
    link = text_link_address(config_text)
    offset = texts[0] - link
    align = physical_align(config_text)
    if offset < 0 or offset >= KERNEL_IMAGE_SIZE or offset % align:
        raise UserError(f"{where}: _text at {texts[0]:#x} is not the .config's link address "
                        f"{link:#x} plus a KASLR offset (a multiple of {align:#x} below 1 GiB): "
                        "it is from a kernel with another config")
    out: dict[str, list[int]] = {}
    for name, addr in core:
        if in_kernel_image(addr):
            addr -= offset
        addrs = out.setdefault(name, [])
        if addr not in addrs:
            addrs.append(addr)
    return Kallsyms(out, offset, modules)


def render_map(symbols: SymbolMap) -> bytes:
    """A canonical byte form of a map (``addr name`` lines, sorted): what ids hash."""
    lines = sorted(f"{a:016x} {n}" for n, addrs in symbols.items() for a in addrs)
    return ("\n".join(lines) + "\n").encode()


def choose(orig: Path) -> Path:
    """Which file describes the target's symbols: ORIG_CONFIG/System.map, else kallsyms.

    UserError (one line) when neither exists, or when the only System.map is
    Debian's stub and there is no kallsyms; both name the ways to get one.
    """
    smap, ksyms = orig / SYSTEM_MAP, orig / KALLSYMS
    how = HOW_TO_GET.format(dir=orig)
    if smap.is_file():
        with open(smap, errors="replace") as f:
            head = f.read(4096)
        if not is_stub(head):
            return smap
        if ksyms.is_file():
            return ksyms
        raise UserError(f"{smap} is the distribution's stub, not the real System.map: {how}")
    if ksyms.is_file():
        return ksyms
    raise UserError(f"Failed to find System.map or kallsyms file in ORIG_CONFIG directory "
                    f"({orig}): {how}")


def load(path: Path, config_text: str | None = None) -> dict[str, list[int]]:
    """The link-time map of a System.map or kallsyms file (by its name).

    For ``kallsyms`` the .config is ``config_text`` or the ``.config`` beside
    it. UserError for a stub System.map, one without ``_text``, or a bad
    kallsyms (see :func:`parse_kallsyms`); OSError when unreadable.
    """
    text = path.read_text(errors="replace")
    if path.name == KALLSYMS:
        if config_text is None:
            config_text = (path.parent / ".config").read_text(errors="replace")
        return parse_kallsyms(text, config_text, str(path)).symbols
    if is_stub(text):
        raise UserError(f"{path} is the distribution's stub, not the real System.map: "
                        + HOW_TO_GET.format(dir=path.parent))
    return parse_system_map(text)


# The linker script's bounds of the image (arch/x86/kernel/vmlinux.lds.S), in address
# order. Every System.map lists them; /proc/kallsyms keeps _end (a B symbol) only with
# CONFIG_KALLSYMS_ALL, but always the text bounds (scripts/kallsyms.c keeps symbols of
# the _stext.._etext range, both ends included).
IMAGE_BOUNDS = ("_text", "_etext", "_end")
KALLSYMS_BOUNDS = ("_text", "_etext")


def check_complete(symbols: SymbolMap, where: str, required: Iterable[str] = (),
                   bounds: Sequence[str] = IMAGE_BOUNDS) -> None:
    """A whole map of one kernel image: UserError (one line, naming ``where``) otherwise.

    Needs the image ``bounds`` (:data:`IMAGE_BOUNDS` for a System.map,
    :data:`KALLSYMS_BOUNDS` for a kallsyms) once each and in address order (an
    empty file, or one cut short, loses ``_end`` first: System.map is sorted
    by address, ``nm -n``), and each name of ``required`` (the update's KASLR
    anchor) exactly once.
    """
    if not symbols:
        raise UserError(f"{where} lists no symbols: it is empty or not a symbol map")
    addrs = []
    for name in bounds:
        found = symbols.get(name, ())
        if len(found) != 1:
            raise UserError(f"{where} lists {name} {len(found)} times, need exactly once: "
                            "it is cut short or not the map of a kernel image")
        addrs.append(found[0])
    if addrs != sorted(addrs):
        raise UserError(f"{where}: {', '.join(bounds)} are not in address order: "
                        "it is not the map of one kernel image")
    for name in required:
        found = symbols.get(name, ())
        if len(found) != 1:
            raise UserError(f"{where} lists {name} {len(found)} times, need exactly once "
                            "(the update finds the kernel's KASLR offset from it)")


def map_bytes(path: Path) -> bytes:
    """What an update id hashes for a symbol file: a System.map's bytes, or for a
    kallsyms its normalised map (:func:`render_map`), the same on every boot."""
    if path.name == KALLSYMS:
        return render_map(load(path))
    return path.read_bytes()


# -- versions ------------------------------------------------------------------------

_CONFIG_HEADER = re.compile(r"^# Linux/\S+ (\S+) Kernel Configuration$", re.M)


def config_source_version(config_text: str) -> str | None:
    """The kernel version a .config was made from (its ``# Linux/x86 6.1.192 Kernel
    Configuration`` header, written by Kconfig); None without that header."""
    m = _CONFIG_HEADER.search(config_text[:2048])
    return m.group(1) if m else None


def makefile_version(makefile_text: str) -> str | None:
    """VERSION.PATCHLEVEL.SUBLEVEL plus EXTRAVERSION of a top Makefile (its KERNELVERSION)."""
    vals = {}
    for key in ("VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION"):
        m = re.search(rf"^{key}\s*=[ \t]*(\S*)[ \t]*$", makefile_text, re.M)
        vals[key] = m.group(1) if m else ""
    if not vals["VERSION"] or not vals["PATCHLEVEL"]:
        return None
    return (f"{vals['VERSION']}.{vals['PATCHLEVEL']}.{vals['SUBLEVEL'] or 0}"
            f"{vals['EXTRAVERSION']}")


def check_source_version(makefile_text: str, config_text: str,
                         config_name: str = "ORIG_CONFIG/.config") -> None:
    """UserError when the tree's version is not the one the .config was made for.

    A .config without Kconfig's header line is not checked.
    """
    want = config_source_version(config_text)
    have = makefile_version(makefile_text)
    if want is not None and have is not None and want != have:
        raise UserError(f"KERNEL_SOURCE is {have} but {config_name} was made for {want}")


# -- Module.symvers ------------------------------------------------------------------


@dataclass(frozen=True)
class Export:
    """One Module.symvers line: CRC (0 without MODVERSIONS), where it is exported from."""

    crc: int
    module: str
    kind: str


def parse_symvers(text: str, where: str = MODULE_SYMVERS) -> dict[str, Export]:
    """Module.symvers -> name -> :class:`Export`. UserError for a malformed line."""
    out: dict[str, Export] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            if len(parts) < 4:
                raise ValueError
            out[parts[1]] = Export(int(parts[0], 16), parts[2], parts[3])
        except ValueError:
            raise UserError(f"{where}:{n}: not a Module.symvers line "
                            "(crc, name, module, export)") from None
    return out


KSYMTAB = "__ksymtab_"
# Section bounds the linker script defines, not exports.
_KSYMTAB_NOT_EXPORTS = ("__ksymtab_gpl", "__ksymtab_strings")


def map_exports(symbols: SymbolMap) -> set[str]:
    """The names a map says are exported: each ``__ksymtab_<name>``."""
    return {n[len(KSYMTAB):] for n in symbols
            if n.startswith(KSYMTAB) and n not in _KSYMTAB_NOT_EXPORTS}


def check_symvers_matches_map(exports: Mapping[str, Export], symbols: SymbolMap,
                              symvers_name: str, map_name: str) -> int:
    """Every ``vmlinux`` export of Module.symvers has ``__ksymtab_<name>`` in the map
    and vice versa. Returns how many were compared; 0 when the map lists no
    ``__ksymtab_`` at all (a kallsyms without CONFIG_KALLSYMS_ALL: not checkable).
    UserError naming the first (sorted) differing symbol and both files.
    """
    in_map = map_exports(symbols)
    if not in_map:
        return 0
    in_symvers = {n for n, e in exports.items() if e.module == "vmlinux"}
    diff = sorted(in_map ^ in_symvers)
    if diff:
        name = diff[0]
        has, lacks = (map_name, symvers_name) if name in in_map else (symvers_name, map_name)
        raise UserError(f"{symvers_name} does not belong to {map_name}: {has} exports {name} "
                        f"but {lacks} does not ({len(diff)} differences)")
    return len(in_map)


# -- "another kernel" ----------------------------------------------------------------


class SortedAddresses:
    """The map's distinct addresses, sorted, to find the symbol after an address."""

    def __init__(self, symbols: SymbolMap) -> None:
        self.addrs = sorted({a for addrs in symbols.values() for a in addrs})

    def next_after(self, addr: int) -> int | None:
        i = bisect.bisect_right(self.addrs, addr)
        return self.addrs[i] if i < len(self.addrs) else None


def size_mismatches(functions: Iterable[tuple[str, int, int]], symbols: SymbolMap,
                    order: SortedAddresses | None = None,
                    padding: int = FUNCTION_PADDING) -> list[tuple[str, int, int]]:
    """Functions whose size in an object disagrees with the map.

    ``functions``: (name, size, shrink) in bytes from the object, ``shrink``
    being how much shorter the linked function may legitimately be. For a
    function the map lists exactly once, ``distance`` is how far on the next
    map symbol is. A function that does not fit (``distance < size -
    shrink``) always disagrees. A larger gap (``distance >= size + padding``)
    is normal now and then: the linker may place code the map does not name
    after a function (seen on the lp test kernel: two unnamed 11-byte stubs
    after __x64_sys_umask); it counts only when most compared functions of
    the object (at least two) show it. Names the map lists several times or
    not at all, and size 0, are skipped. Returns (name, object size, map
    distance) for each disagreement.
    """
    order = order or SortedAddresses(symbols)
    small, large = [], []
    compared = 0
    for name, size, shrink in functions:
        addrs = symbols.get(name, ())
        if size <= 0 or len(addrs) != 1:
            continue
        nxt = order.next_after(addrs[0])
        if nxt is None:
            continue
        compared += 1
        distance = nxt - addrs[0]
        if distance < size - shrink:
            small.append((name, size, distance))
        elif distance >= size + padding:
            large.append((name, size, distance))
    if len(large) >= 2 and 2 * len(large) > compared:
        return small + large
    return small
