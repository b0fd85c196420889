# SPDX-License-Identifier: GPL-2.0-only
"""Drive Kbuild: the make command lines, progress from its output, and its logs."""

from __future__ import annotations

import posixpath
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ksplice_tasks.commands import echo, run_process, spawn
from ksplice_tasks.errors import UserError

SECTION_FLAGS = "-ffunction-sections -fdata-sections"

# "  CC      kernel/fork.o", "  CC [M]  fs/foo.o", "  AS      arch/x86/entry/entry_64.o"
_OBJECT_LINE = re.compile(r"^\s+(?:CC|AS)(?: \[M\])?\s+(\S+\.o)\s*$")


def section_flag_vars() -> list[str]:
    """The seed's pre/post build variables: one ELF section per function and per datum."""
    return [f"CFLAGS_KERNEL={SECTION_FLAGS}", f"CFLAGS_MODULE={SECTION_FLAGS}"]


def make_argv(
    tree: Path,
    jobs: int,
    targets: Sequence[str] = (),
    *,
    section_flags: bool = True,
    build_dir: Path | None = None,
    make_vars: Sequence[str] = (),
) -> list[str]:
    """A make command line for a tree; in-tree unless build_dir (O=) is given.

    make_vars are extra ``NAME=value`` words that describe the target kernel's
    build (``KERNELRELEASE=6.1.0-57-amd64``, ``CC=gcc-12``); see
    :func:`ksplice_tasks.stages.inputs.target_make_vars`.
    """
    argv = ["make", "-C", str(tree), f"-j{jobs}"]
    if build_dir is not None:
        argv.append(f"O={build_dir}")
    argv += list(make_vars)
    if section_flags:
        argv += section_flag_vars()
    return argv + list(targets)


def compiled_object(line: str) -> str | None:
    """The object a Kbuild quiet-mode line says it is compiling, if any."""
    m = _OBJECT_LINE.match(line)
    return m.group(1) if m else None


@dataclass
class Progress:
    """Prints 'phase: done/total objects' at most every `interval` seconds."""

    phase: str
    total: int | None = None
    out: TextIO = sys.stdout
    interval: float = 5.0
    done: int = 0
    _last: float = 0.0

    def start(self) -> None:
        self._last = time.monotonic()
        self.out.write(f"{self.phase}: started\n")
        self.out.flush()

    def feed(self, line: str) -> None:
        if compiled_object(line) is None:
            return
        self.done += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.report()

    def report(self, final: bool = False) -> None:
        of = f"/{self.total}" if self.total else ""
        tail = " (done)" if final else ""
        self.out.write(f"{self.phase}: {self.done}{of} objects compiled{tail}\n")
        self.out.flush()


@dataclass(frozen=True)
class MakeResult:
    returncode: int
    objects: int
    seconds: float
    log: Path


def run_make(
    argv: Sequence[str],
    log: Path,
    progress: Progress,
    *,
    verbose: bool = False,
    env: dict[str, str] | None = None,
) -> MakeResult:
    """Run make, keeping its full output in `log` and showing progress (or all of it with -v).

    make runs in a watched process group of its own (:func:`ksplice_tasks.commands.spawn`):
    an interrupt, a failure here or this process's death ends make and its compilers.
    """
    if verbose:
        echo(argv)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    progress.start()
    with open(log, "w", encoding="utf-8", errors="replace") as logf, spawn(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace", env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            if verbose:
                progress.out.write(line)
            progress.feed(line)
    rc = proc.returncode
    progress.report(final=True)
    return MakeResult(rc, progress.done, time.monotonic() - t0, log)


# make -n prints each Kbuild recipe with its quiet line: echo '  CC [M]  fs/foo.o';
_QUIET_ECHO = re.compile(r"echo '  (?P<tag>[A-Z][A-Z0-9_]*(?: \[M\])?)\s+(?P<target>[^\s']+)'")


def parse_outstanding(text: str) -> list[tuple[str, str]]:
    """(tag, target) of every Kbuild step a ``make -n`` listing would still run, in order.

    ``tag`` is Kbuild's quiet-mode word (``CC``, ``CC [M]``, ``HOSTCC``,
    ``LD``, ``UPD``...), ``target`` the file it makes; each pair once.
    """
    out: dict[tuple[str, str], None] = {}
    for m in _QUIET_ECHO.finditer(text):
        out.setdefault((m.group("tag"), m.group("target")), None)
    return list(out)


def dry_run(argv: Sequence[str], env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """What the make command ``argv`` (a ``make_argv`` list) would still do: ``make -n``.

    Returns :func:`parse_outstanding`'s pairs; empty when everything is up to
    date. GNU make -n runs only the recursive ``$(MAKE)`` lines, which is
    how Kbuild descends; make's exit status is ignored (a failing link step
    still lists what precedes it). OSError when make cannot be run.
    """
    cmd = [argv[0], "-n", *argv[1:]]
    res = run_process(cmd, env=env)
    return parse_outstanding(res.stdout)


_ERROR_LINE = re.compile(r"(\berror\b|\*\*\*)", re.I)
_COMPILER_ERROR = re.compile(r"\berror:", re.I)


def error_excerpt(log: Path) -> str:
    """One line for a failed build's log: its first compiler error (gcc/ld ``error:``),
    else make's first ``***`` line (the innermost target), else the log's last line;
    with how many more error lines the log holds. "" when the log is unreadable or empty.
    """
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    hits = [ln for ln in lines if _ERROR_LINE.search(ln) and "warning" not in ln.lower()]
    compiler = [ln for ln in hits if _COMPILER_ERROR.search(ln)]
    first = compiler[0] if compiler else (hits[0] if hits else (lines[-1] if lines else ""))
    more = len(hits) - 1 if first in hits else 0
    return first + (f" (+{more} more error lines)" if more > 0 else "")


# The archives Kbuild links vmlinux from, best first: vmlinux.a (6.1 on) holds
# every built-in object and library member; the top built-in.a holds the built-in ones.
IMAGE_ARCHIVES = ("vmlinux.a", "built-in.a")


def archive_members(archive: Path) -> list[str]:
    """The member names of an ar archive, relative to its directory, normalised.

    Kbuild's archives are thin: ``ar t`` names each member by its path, which
    it prints relative to the directory it runs in (so it runs in the
    archive's). UserError when ar cannot read it.
    """
    res = subprocess.run(["ar", "t", archive.name], cwd=archive.parent, capture_output=True,
                         text=True, errors="surrogateescape", check=False)
    if res.returncode != 0:
        raise UserError(f"cannot list the objects of {archive}: {res.stderr.strip()}")
    return [posixpath.normpath(m) for m in res.stdout.splitlines() if m]


def module_objects(tree: Path) -> set[str] | None:
    """Every object linked into a module: each ``modules.order`` module's ``.mod`` file lists
    them (tree-relative). None when the tree has no modules.order (modules never built)."""
    try:
        order = (tree / "modules.order").read_text().split()
    except FileNotFoundError:
        return None
    out: set[str] = set()
    for mod in order:
        stem = mod.removesuffix(".ko").removesuffix(".o")
        try:
            words = (tree / f"{stem}.mod").read_text().split()
        except FileNotFoundError:
            raise UserError(f"{tree}/modules.order names {mod}, which has no {stem}.mod: "
                            "the modules build did not finish") from None
        out.update(w for w in words if w.endswith(".o"))
    return out


def linked_objects(tree: Path) -> set[str] | None:
    """The objects of the kernel image and its modules, from Kbuild's own link inputs.

    The image's come from the first of :data:`IMAGE_ARCHIVES` in the tree,
    the modules' from :func:`module_objects`. Objects a build compiles but
    links into neither (boot stubs, ``init/version-timestamp.o``, the vDSO's
    and real-mode code's own objects, which reach the image only as data) are
    not in the set. None when the tree has no image archive (never linked).
    """
    archive = next((tree / a for a in IMAGE_ARCHIVES if (tree / a).is_file()), None)
    if archive is None:
        return None
    return set(archive_members(archive)) | (module_objects(tree) or set())
