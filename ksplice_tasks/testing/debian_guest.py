# SPDX-License-Identifier: GPL-2.0-only
"""Debian's own vmlinuz booted under qemu, like the self-built test kernels (testkernel.py).

A target directory made by ``ksplice-debian-target`` (distro.debian) holds
the unpacked image package: ``boot/vmlinuz-<release>`` and
``lib/modules/<release>``. Debian's amd64 flavour builds virtio and 9p as
modules, and the package has no modules.dep, so the 9p stack's load order
comes from each .ko's ``depends=`` in its ``.modinfo`` section; /init
insmods them (qemu.boot's ``preload``) before it mounts the host's root.
The initramfs is packed with the source tree's ``usr/gen_init_cpio.c``,
compiled once into the cache (Debian ships no built copy).

:func:`capture_kallsyms` stands in for "the user copies /proc/kallsyms from
the running machine": one boot, /proc/kallsyms read as root, written to
ORIG_CONFIG/kallsyms.
"""

from __future__ import annotations

import base64
import gzip
import re
import subprocess
import sys
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ksplice_tasks.artifacts import DebianTarget
from ksplice_tasks.distro import debian
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import atomic_path, locked, write_atomic
from ksplice_tasks.testing import qemu

# The modules that give the guest the host's root over virtio-9p; their
# depends= bring in the rest (virtio, virtio_ring, the virtio_pci helpers,
# 9pnet, netfs, fscache).
NINEP_ROOTS = ("virtio_pci", "9pnet_virtio", "9p")
CPUS = 2
MEMORY_MB = 1024

KALLSYMS_BEGIN = "KSPLICE-KALLSYMS-BEGIN"
KALLSYMS_END = "KSPLICE-KALLSYMS-END"


# -- modules and their order -----------------------------------------------------------


def modinfo(ko: Path) -> dict[str, list[str]]:
    """A module's ``.modinfo`` (NUL-separated ``key=value``) as key -> values.

    Read with pyelftools; UserError when ``ko`` is not an ELF module (a
    compressed .ko.xz, say) or has no .modinfo section.
    """
    try:
        with open(ko, "rb") as f:
            sec = ELFFile(f).get_section_by_name(".modinfo")
            data = sec.data() if sec is not None else None
    except (OSError, ELFError) as e:
        raise UserError(f"{ko}: not a kernel module ({e})") from None
    if data is None:
        raise UserError(f"{ko}: no .modinfo section")
    out: dict[str, list[str]] = {}
    for entry in data.split(b"\0"):
        key, sep, value = entry.decode(errors="replace").partition("=")
        if sep:
            out.setdefault(key, []).append(value)
    return out


def depends(info: Mapping[str, list[str]]) -> list[str]:
    """The module names in ``depends=`` (comma separated, maybe empty)."""
    return [d for v in info.get("depends", []) for d in v.split(",") if d]


def module_index(modules_dir: Path) -> dict[str, Path]:
    """Module name -> .ko under ``modules_dir`` (file names with '-' are named with '_')."""
    return {ko.name[:-3].replace("-", "_"): ko for ko in sorted(modules_dir.rglob("*.ko"))}


def load_order(roots: Sequence[str], index: Mapping[str, Path],
               deps_of: Mapping[str, Sequence[str]] | None = None) -> list[Path]:
    """The .ko files to insmod, dependencies first, for ``roots`` and all they depend on.

    ``deps_of`` (name -> depends) defaults to reading each module's
    .modinfo. UserError for a module that is not in ``index`` or a cycle.
    """
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            raise UserError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in index:
            via = f" (needed by {chain[-1]})" if chain else ""
            raise UserError(f"module {name}{via} is not in the image's modules")
        state[name] = "open"
        needs = deps_of[name] if deps_of is not None else depends(modinfo(index[name]))
        for dep in needs:
            visit(dep, (*chain, name))
        state[name] = "done"
        order.append(name)

    for root in roots:
        visit(root, ())
    return [index[n] for n in order]


# -- the kernel ------------------------------------------------------------------------


def setup_version(bzimage: Path) -> str:
    """The bzImage setup header's kernel_version string (boot protocol 2.00+, offset 0x20e).

    For Debian: ``6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP
    PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)``. UserError when the file
    is not a bzImage.
    """
    data = bzimage.read_bytes()[:0x10000]
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        raise UserError(f"{bzimage}: not a bzImage (no HdrS setup header)")
    ptr = int.from_bytes(data[0x20E:0x210], "little")
    start = ptr + 0x200
    end = data.find(b"\0", start)
    if ptr == 0 or end < 0:
        raise UserError(f"{bzimage}: no kernel_version string in the setup header")
    return data[start:end].decode(errors="replace")


def compile_gen_init_cpio(source: Path, dest: Path) -> Path:
    """``usr/gen_init_cpio.c`` of ``source`` compiled to ``dest`` (once; the tree is only read)."""
    if dest.is_file():
        return dest
    with locked("debian-gen_init_cpio"), atomic_path(dest) as tmp:
        if dest.is_file():
            return dest
        proc = subprocess.run(["gcc", "-O2", "-o", str(tmp), str(source / "usr/gen_init_cpio.c")],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise UserError(f"gcc usr/gen_init_cpio.c failed: {proc.stderr.strip()[-500:]}")
        tmp.chmod(0o755)
    return dest


@dataclass(frozen=True)
class DebianKernel:
    """Debian's shipped kernel in a target directory: what TestKernel is for a test build.

    ``bzimage``, ``release``, ``orig_config``, ``source`` and ``boot()``
    behave like TestKernel's; ``boot(hostfs=True)`` also loads the 9p stack.
    """

    directory: Path
    record: DebianTarget
    cpus: int = CPUS

    @property
    def release(self) -> str:
        return self.record.release

    @property
    def variant(self) -> str:
        return f"debian-{self.record.flavour}"

    @property
    def bzimage(self) -> Path:
        return self.directory / self.record.vmlinuz

    @property
    def source(self) -> Path:
        return self.directory / self.record.source

    @property
    def orig_config(self) -> Path:
        return self.directory / self.record.orig_config

    @property
    def modules_dir(self) -> Path:
        return self.directory / self.record.modules

    @property
    def gen_init_cpio(self) -> Path:
        dest = (debian.debian_cache(self.record.package_version) / "tools" / "gen_init_cpio")
        return compile_gen_init_cpio(self.source, dest)

    def ninep_modules(self) -> list[Path]:
        """The virtio and 9p modules in load order (from their depends=)."""
        return load_order(NINEP_ROOTS, module_index(self.modules_dir))

    def banner(self) -> str:
        """The bzImage's own version string (see setup_version)."""
        return setup_version(self.bzimage)

    def is_running(self, proc_version: str) -> bool:
        """True when ``proc_version`` (/proc/version) is this kernel's banner.

        /proc/version is ``Linux version <release> (<builder>) (<compiler>)
        #<build>``; the setup header lacks the compiler part, so both ends
        are compared.
        """
        head, _, tail = self.banner().partition(") #")
        line = proc_version.strip()
        return line.startswith(f"Linux version {head})") and line.endswith(f") #{tail}")

    def boot(self, script: str, **kwargs) -> qemu.BootResult:
        """qemu.boot with -smp 2 and 1 GiB; with hostfs=True the 9p stack is loaded first.

        A hang report names RIPs from the captured ORIG_CONFIG/kallsyms, if any.
        """
        kwargs.setdefault("cpus", self.cpus)
        kwargs.setdefault("symbols", self.orig_config / "kallsyms")
        kwargs.setdefault("memory_mb", MEMORY_MB)
        if kwargs.get("hostfs"):
            kwargs.setdefault("preload", self.ninep_modules())
        return qemu.boot(self.bzimage, self.gen_init_cpio, script, **kwargs)


def debian_kernel(directory: Path) -> DebianKernel:
    """The kernel of a prepared target DIR; UserError when DIR is not one or lacks the vmlinuz."""
    record = debian.read_target(directory)
    kernel = DebianKernel(Path(directory).resolve(), record)
    if not kernel.bzimage.is_file():
        raise UserError(f"{kernel.bzimage} is missing (is the cache it points into gone? "
                        "run ksplice-debian-target again in a new directory)")
    return kernel


def prepare(release: str | None = None, directory: Path | None = None,
            out: TextIO = sys.stdout) -> DebianKernel:
    """A target for ``release`` (None: the newest amd64) in ``directory``, prepared once.

    The default directory is in the cache, keyed by the package version
    (``debian/<version>/targets/<release>``), so a new upload of the same
    release gets a new target. Returns its kernel; UserError as prepare_target.
    """
    if release is None:
        release = str(debian.newest_release())
    if directory is None:
        version = debian.resolve_packages(release).version
        directory = debian.debian_cache(version) / "targets" / release
    with locked(f"debian-target-{release}"):
        debian.prepare_target(release, directory, out=out)
    return debian_kernel(directory)


# -- /proc/kallsyms from the running guest ----------------------------------------------

_KALLSYMS_SCRIPT = f"""dmesg -n 1
echo {KALLSYMS_BEGIN}
gzip -c /proc/kallsyms | base64
echo {KALLSYMS_END}
"""
_KALLSYMS_LINE = re.compile(r"^[0-9a-f]{16} [A-Za-z] \S+(\t\[\S+\])?$")


def decode_kallsyms(output: str) -> str:
    """The /proc/kallsyms text the guest sent as gzip + base64 between the two marks.

    gzip's CRC catches a console line mangled in transit. UserError when the
    marks are missing or the data does not decode.
    """
    _, begin, rest = output.partition(KALLSYMS_BEGIN + "\n")
    body, end, _ = rest.partition(KALLSYMS_END)
    if not begin or not end:
        raise UserError("the guest did not send /proc/kallsyms (marks missing)")
    try:
        text = gzip.decompress(base64.b64decode("".join(body.split()), validate=True))
    except (ValueError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"/proc/kallsyms from the guest is damaged: {e}") from None
    return text.decode()


def check_kallsyms(text: str) -> None:
    """UserError unless ``text`` looks like a root's /proc/kallsyms (addresses not zeroed)."""
    lines = text.splitlines()
    bad = [ln for ln in lines[:1000] if not _KALLSYMS_LINE.match(ln)]
    if not lines or bad:
        raise UserError(f"not a /proc/kallsyms: {bad[0] if bad else 'empty'!r}")
    if all(ln.startswith("0000000000000000 ") for ln in lines[:1000]):
        raise UserError("/proc/kallsyms has only zero addresses (not read as root?)")


def capture_kallsyms(target: Path | DebianKernel, timeout: float = 300.0) -> Path:
    """Boot the target once, read /proc/kallsyms as root, write ORIG_CONFIG/kallsyms atomically.

    The addresses carry that boot's KASLR offset; the file also lists the
    symbols of the modules loaded at the time (none here). Returns the path.
    UserError when the boot fails or what came back is not a kallsyms.
    """
    kernel = target if isinstance(target, DebianKernel) else debian_kernel(target)
    res = kernel.boot(_KALLSYMS_SCRIPT, timeout=timeout)
    if not res.ok:
        raise UserError(f"booting {kernel.release} to read /proc/kallsyms failed "
                        f"(status {res.status}, timed out: {res.timed_out})")
    text = decode_kallsyms(res.guest_output)
    check_kallsyms(text)
    return write_atomic(kernel.orig_config / "kallsyms", text)


def kallsyms_types(text: str, types: Iterable[str] = "Tt") -> int:
    """How many symbols of the given type letters ``text`` lists."""
    wanted = set(types)
    return sum(1 for ln in text.splitlines() if len(ln) > 17 and ln[17] in wanted)
