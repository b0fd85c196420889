# SPDX-License-Identifier: GPL-2.0-only
"""Real Linux 6.1 test kernels, cached outside the clone, shared by the tests and the demo.

Debian's linux-source-6.1 tarball is extracted once per tarball into the
cache. Each config variant (tinyconfig plus the project's fragments) gets an
ordinary O= build without section flags: that is the "running" kernel, and
its .config and System.map form an ORIG_CONFIG directory. Separate in-tree
copies of the source serve as KERNEL_SOURCE for prebuilds, because an O=
build refuses a source tree that has been built in place.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

from elftools.elf.elffile import ELFFile

from ksplice_tasks.commands import run
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import cache_root, copy_atomic, extract_tarball, locked, write_atomic
from ksplice_tasks.testing import qemu
from ksplice_tasks.tree import kbuild

DEFAULT_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")

VARIANTS: dict[str, tuple[str, ...]] = {
    "up": ("kconfig-base.fragment",),
    "smp": ("kconfig-base.fragment", "kconfig-smp.fragment"),
    "lp": ("kconfig-base.fragment", "kconfig-smp.fragment", "kconfig-lp.fragment"),
}
CPUS = {"up": 1, "smp": 2, "lp": 2}


def default_tarball() -> Path:
    path = Path(os.environ.get("KSPLICE_LINUX_TARBALL", DEFAULT_TARBALL))
    if not path.is_file():
        raise UserError(
            f"Linux source tarball not found: {path} (apt-get install linux-source-6.1)"
        )
    return path


def _short_hash(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:12]


def tarball_key(tarball: Path) -> str:
    """Name, size and mtime: a new Debian upload of the package changes at least one."""
    st = tarball.stat()
    return _short_hash(tarball.name, str(st.st_size), str(st.st_mtime_ns))


def fragment_text(variant: str) -> str:
    if variant not in VARIANTS:
        raise UserError(f"unknown test kernel variant {variant!r} (have: {', '.join(VARIANTS)})")
    data = resources.files("ksplice_tasks") / "data"
    return "".join((data / name).read_text() for name in VARIANTS[variant])


def toolchain_id() -> str:
    out = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def config_key(variant: str, tarball: Path) -> str:
    return _short_hash(tarball_key(tarball), fragment_text(variant), toolchain_id())


def extract(tarball: Path, dest: Path, out: TextIO = sys.stdout) -> Path:
    """The tarball's one top directory at dest, extracted atomically (files.extract_tarball)."""
    return extract_tarball(tarball, dest, out)


def pristine_source(tarball: Path | None = None, out: TextIO = sys.stdout) -> Path:
    """The never-built source that every O= test kernel build reads."""
    tarball = tarball or default_tarball()
    key = tarball_key(tarball)
    with locked(f"src-{key}"):
        return extract(tarball, cache_root() / "src" / key / "linux", out)


def parse_fragment(text: str) -> dict[str, str | None]:
    """Symbol -> value ('y', 'm', a string) or None for 'is not set'; later lines win."""
    out: dict[str, str | None] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            name, val = line[len("CONFIG_"):].split("=", 1)
            out[name] = val
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            out[line[len("# CONFIG_"):-len(" is not set")]] = None
    return out


def fragment_ops(text: str) -> list[str]:
    """scripts/config arguments for a Kconfig fragment."""
    ops: list[str] = []
    for name, val in parse_fragment(text).items():
        if val is None:
            ops += ["--disable", name]
        elif val == "y":
            ops += ["--enable", name]
        elif val == "m":
            ops += ["--module", name]
        else:
            ops += ["--set-val", name, val]
    return ops


def fragment_violations(text: str, config: str) -> list[str]:
    """Fragment settings that olddefconfig did not keep (a dependency is missing)."""
    have = parse_fragment(config)
    return [
        f"CONFIG_{name}={val}" if val is not None else f"# CONFIG_{name} is not set"
        for name, val in parse_fragment(text).items()
        if have.get(name) != val
    ]


@dataclass(frozen=True)
class TestKernel:
    """An ordinary (no section flags) build of a test config: the kernel that runs in qemu."""

    variant: str
    source: Path
    build: Path
    orig_config: Path
    release: str
    cpus: int

    @property
    def bzimage(self) -> Path:
        return self.build / "arch/x86/boot/bzImage"

    @property
    def vmlinux(self) -> Path:
        return self.build / "vmlinux"

    @property
    def gen_init_cpio(self) -> Path:
        return self.build / "usr/gen_init_cpio"

    def banner(self) -> str:
        """linux_banner from vmlinux: what /proc/version must print when this kernel runs.

        Read through the symbol, not by searching the bytes: init/version.o
        carries a weak placeholder banner that the linked one overrides.
        """
        with open(self.vmlinux, "rb") as f:
            elf = ELFFile(f)
            symtab = elf.get_section_by_name(".symtab")
            syms = symtab.get_symbol_by_name("linux_banner") if symtab else None
            if not syms:
                raise UserError(f"no linux_banner symbol in {self.vmlinux}")
            sym = syms[0]
            sec = elf.get_section(sym["st_shndx"])
            off = sym["st_value"] - sec["sh_addr"]
            data = sec.data()[off:off + sym["st_size"]]
        return data.split(b"\n", 1)[0].decode()

    def is_running(self, proc_version: str) -> bool:
        """True when ``proc_version`` (a /proc/version line) is this kernel's banner."""
        return self.banner().strip() in proc_version

    def boot(self, script: str, **kwargs) -> qemu.BootResult:
        """qemu.boot with this kernel's CPU count; a hang report names RIPs from System.map."""
        kwargs.setdefault("cpus", self.cpus)
        kwargs.setdefault("symbols", self.build / "System.map")
        return qemu.boot(self.bzimage, self.gen_init_cpio, script, **kwargs)


def configure(source: Path, build: Path, variant: str, jobs: int, verbose: bool = False) -> None:
    text = fragment_text(variant)
    base = ["make", "-C", str(source), f"O={build}", f"-j{jobs}", "-s"]
    run(base + ["tinyconfig"], verbose=verbose, what="make tinyconfig")
    run([source / "scripts/config", "--file", build / ".config", *fragment_ops(text)],
        verbose=verbose, what="scripts/config")
    run(base + ["olddefconfig"], verbose=verbose, what="make olddefconfig")
    bad = fragment_violations(text, (build / ".config").read_text())
    if bad:
        raise UserError(f"test config for {variant!r} lost fragment lines: {', '.join(bad)}")


def build_test_kernel(
    variant: str,
    *,
    jobs: int | None = None,
    tarball: Path | None = None,
    verbose: bool = False,
    out: TextIO = sys.stdout,
) -> TestKernel:
    """Build (or reuse) the running kernel for a variant; ~3 min cold on 2 cores."""
    tarball = tarball or default_tarball()
    jobs = jobs or os.cpu_count() or 1
    source = pristine_source(tarball, out)
    key = config_key(variant, tarball)
    build = cache_root() / "build" / f"{variant}-{key}"
    stamp = build / ".ksplice-test-kernel"
    with locked(f"build-{variant}-{key}"):
        if not stamp.is_file():
            build.mkdir(parents=True, exist_ok=True)
            if not (build / ".config").is_file():
                configure(source, build, variant, jobs, verbose)
            progress = kbuild.Progress(f"test kernel {variant}", out=out)
            argv = kbuild.make_argv(source, jobs, build_dir=build, section_flags=False)
            res = kbuild.run_make(argv, build / "ksplice-build.log", progress, verbose=verbose)
            if res.returncode != 0:
                raise UserError(f"test kernel {variant} failed to build:\n"
                                + kbuild.error_excerpt(res.log))
            orig = build / "orig"
            copy_atomic(build / ".config", orig / ".config")
            copy_atomic(build / "System.map", orig / "System.map")
            copy_atomic(build / "Module.symvers", orig / "Module.symvers")
            write_atomic(stamp, f"{key}\n")
        if not (build / "orig/Module.symvers").is_file():  # cached before ORIG held it
            copy_atomic(build / "Module.symvers", build / "orig/Module.symvers")
        release = (build / "include/config/kernel.release").read_text().strip()
    return TestKernel(variant, source, build, build / "orig", release, CPUS[variant])


def prebuild_tree(kernel: TestKernel, name: str, tarball: Path | None = None,
                  out: TextIO = sys.stdout) -> tuple[Path, Path]:
    """A KERNEL_SOURCE copy for in-tree prebuilds, and a writable ORIG_CONFIG beside it.

    Returns (ksrc, orig). The tree is extracted fresh (never built) the first
    time; afterwards whatever prebuilds did to it stays, which is the point.
    """
    tarball = tarball or default_tarball()
    base = cache_root() / "ksrc" / f"{name}-{kernel.build.name}"
    with locked(f"ksrc-{name}-{kernel.build.name}"):
        ksrc = extract(tarball, base / "linux", out)
        orig = base / "orig"
        for f in (".config", "System.map", "Module.symvers"):
            if not (orig / f).is_file() or (orig / f).read_bytes() != (
                kernel.orig_config / f
            ).read_bytes():
                copy_atomic(kernel.orig_config / f, orig / f)
    return ksrc, orig
