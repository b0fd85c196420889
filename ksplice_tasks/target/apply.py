# SPDX-License-Identifier: GPL-2.0-only
"""``ksplice-apply``, ``ksplice-view`` and ``ksplice-undo``: the target machine's commands.

They talk to an update's modules only through the kernel's module syscalls
and the primary's sysfs directory ``/sys/module/ksplice_<id>/ksplice/``
(see ``kmodsrc/README.md``): writing ``apply`` or ``reverse`` to ``stage``
runs the operation in the kernel, and ``abort_cause`` says why one failed
(:func:`explain` turns it into a sentence, from the list in
``encode/abort_causes.py`` that the kernel side's header is generated from).

Apply extracts the tarball into a private temporary directory (tarfile's
"data" filter refuses links, devices and paths outside it), loads the
primary and then the helper, applies, and unloads the helper.  Whenever it
fails it unloads what it loaded, so the kernel is left as it was.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ksplice_tasks.encode.abort_causes import explain
from ksplice_tasks.errors import UserError
from ksplice_tasks.names import (
    HELPER,
    PACKAGE_DIR_RE,
    PRIMARY,
    is_id,
    module_files,
    sysfs_module,
    sysfs_module_id,
)

# x86-64 system call numbers (the only architecture ksplice-py targets).
SYS_DELETE_MODULE = 176
SYS_FINIT_MODULE = 313
O_NONBLOCK = 0o4000


class ApplyError(UserError):
    """An operation was refused or aborted; the kernel is as it was before."""


def module_name(update_id: str, helper: bool = False) -> str:
    """The kernel's name of an update module (Kbuild turns '-' into '_')."""
    return sysfs_module(update_id, HELPER if helper else PRIMARY)


def check_id(update_id: str) -> str:
    """Return ``update_id``; ApplyError unless it is 8 characters from [a-z0-9]."""
    if not is_id(update_id):
        raise ApplyError(f"bad update id {update_id!r}: expected 8 characters from [a-z0-9]")
    return update_id


# -- the package ------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    """An extracted update tarball."""

    id: str
    primary: Path
    helper: Path


def extract_package(tarball: Path, dest: Path) -> Package:
    """Extract ``ksplice-<id>/`` safely into ``dest`` and find its two modules."""
    if not tarball.is_file():
        raise ApplyError(f"{tarball}: no such file")
    try:
        with tarfile.open(tarball) as tf:
            names = tf.getnames()
            tops = {n.split("/", 1)[0] for n in names}
            if len(tops) != 1:
                raise ApplyError(f"{tarball}: expected one ksplice-<id> directory")
            top = tops.pop()
            m = PACKAGE_DIR_RE.fullmatch(top)
            if not m:
                raise ApplyError(f"{tarball}: {top!r} is not a ksplice-<id> directory")
            tf.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        if isinstance(e, ApplyError):
            raise
        reason = str(e).splitlines()[0].rstrip(":") if str(e) else type(e).__name__
        raise ApplyError(f"{tarball}: not a usable ksplice tarball ({reason})") from None
    update_id = m.group(1)
    primary, helper = module_files(update_id)
    pkg = Package(update_id, dest / top / primary, dest / top / helper)
    for f in (pkg.primary, pkg.helper):
        if not f.is_file() or f.is_symlink():
            raise ApplyError(f"{tarball}: missing {top}/{f.name}")
    return pkg


# -- the kernel ---------------------------------------------------------------------


class Kernel:
    """Module syscalls and the update modules' sysfs files; tests substitute a fake."""

    def __init__(self, sys_root: Path = Path("/sys")) -> None:
        self.sys_root = sys_root
        self._libc = ctypes.CDLL(None, use_errno=True)

    def _syscall(self, *args: object) -> None:
        if self._libc.syscall(*args) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def load(self, ko: Path) -> None:
        """finit_module(2): the module file is read by the kernel, not copied here."""
        fd = os.open(ko, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._syscall(ctypes.c_long(SYS_FINIT_MODULE), ctypes.c_int(fd),
                          ctypes.c_char_p(b""), ctypes.c_int(0))
        finally:
            os.close(fd)

    def unload(self, name: str) -> None:
        self._syscall(ctypes.c_long(SYS_DELETE_MODULE), ctypes.c_char_p(name.encode()),
                      ctypes.c_uint(O_NONBLOCK))

    def attr_dir(self, module: str) -> Path:
        return self.sys_root / "module" / module / "ksplice"

    def loaded(self, module: str) -> bool:
        return (self.sys_root / "module" / module).is_dir()

    def read(self, module: str, attr: str) -> str:
        return (self.attr_dir(module) / attr).read_text().strip()

    def write(self, module: str, attr: str, value: str) -> None:
        """One write(2): a buffered file would retry a failed command when it closes."""
        fd = os.open(self.attr_dir(module) / attr, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, (value + "\n").encode())
        finally:
            os.close(fd)

    def update_ids(self) -> list[str]:
        """Ids of loaded primaries, sorted."""
        root = self.sys_root / "module"
        out = []
        for d in sorted(root.glob("ksplice_*")):
            uid = sysfs_module_id(d.name)
            if uid and (d / "ksplice").is_dir():
                out.append(uid)
        return out


def _oserror(what: str, e: OSError) -> ApplyError:
    reason = {errno.EEXIST: "already loaded", errno.EPERM: "permission denied",
              errno.ENOEXEC: "not a module for this kernel"}.get(e.errno or 0, e.strerror)
    return ApplyError(f"{what}: {reason}")


def _unload_quietly(kernel: Kernel, name: str) -> None:
    if kernel.loaded(name):
        try:
            kernel.unload(name)
        except OSError:
            pass


def apply_package(kernel: Kernel, pkg: Package, notes: list[str] | None = None) -> str:
    """Load, apply, unload the helper; returns the stage. Any failure leaves nothing loaded.

    ``notes`` (when given) gets one line per pre function run-pre matching
    found no running copy of although it has some, which the update does not
    need (kmodsrc/README.md, "Which functions must match"): applied anyway.
    """
    primary, helper = module_name(pkg.id), module_name(pkg.id, helper=True)
    if kernel.loaded(primary):
        stage = kernel.read(primary, "stage")
        if stage == "applied":
            raise ApplyError(f"update {pkg.id}: {explain('already_applied')}")
        raise ApplyError(f"update {pkg.id} is already loaded (stage {stage}); "
                         f"run ksplice-undo {pkg.id} first")
    try:
        kernel.load(pkg.primary)
    except OSError as e:
        raise _oserror(f"loading {pkg.primary.name}", e) from None
    try:
        try:
            kernel.load(pkg.helper)
        except OSError as e:
            raise _oserror(f"loading {pkg.helper.name}", e) from None
        try:
            kernel.write(primary, "stage", "apply")
        except OSError:
            cause = kernel.read(primary, "abort_cause")
            if cause == "no_match":  # say which functions run-pre matching failed on
                for line in format_runpre(read_runpre(kernel, helper)):
                    print(line, flush=True)
            raise ApplyError(f"Aborted: {explain(cause)}") from None
    except ApplyError:
        _unload_quietly(kernel, helper)
        _unload_quietly(kernel, primary)
        raise
    if notes is not None:
        notes += [f"run-pre: {r.function}: failed, not needed by the update"
                  for r in read_runpre(kernel, helper) if r.status == "failed"]
    _unload_quietly(kernel, helper)
    return kernel.read(primary, "stage")


def undo_update(kernel: Kernel, update_id: str) -> None:
    """Reverse (if applied) and unload; an abort leaves the update applied."""
    primary, helper = module_name(update_id), module_name(update_id, helper=True)
    if not kernel.loaded(primary):
        raise ApplyError(f"update {update_id} is not loaded")
    if kernel.read(primary, "stage") == "applied":
        try:
            kernel.write(primary, "stage", "reverse")
        except OSError:
            cause = kernel.read(primary, "abort_cause")
            raise ApplyError(f"Aborted: {explain(cause)}; update {update_id} stays applied"
                             ) from None
    _unload_quietly(kernel, helper)
    try:
        kernel.unload(primary)
    except OSError as e:
        raise _oserror(f"unloading {primary}", e) from None


@dataclass(frozen=True)
class RunPre:
    """Run-pre matching's result for one function of the update's pre code.

    ``status`` is kmodsrc/runpre.c's name: untried, found, several, outside or
    failed; ``address`` is the running copy it matched (0 when none).
    """

    function: str
    status: str
    address: int


def parse_runpre(text: str) -> tuple[RunPre, ...]:
    """The primary's ``runpre`` sysfs file: ``<function> <status> <hex address>`` per line.

    Empty for ``not run`` (before the first apply) or an unreadable line.
    """
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            try:
                out.append(RunPre(parts[0], parts[1], int(parts[2], 16)))
            except ValueError:
                continue
    return tuple(out)


def read_runpre(kernel: Kernel, module: str) -> tuple[RunPre, ...]:
    """The module's run-pre results; empty when its kernel side has no such file."""
    try:
        return parse_runpre(kernel.read(module, "runpre"))
    except OSError:
        return ()


def format_runpre(results: Sequence[RunPre]) -> list[str]:
    """One line per function: ``run-pre: <function>: <status> [at <address>]``."""
    return [f"run-pre: {r.function}: {r.status}"
            + (f" at {r.address:#x}" if r.address else "") for r in results]


@dataclass(frozen=True)
class UpdateView:
    """What ``ksplice-view`` shows about one loaded update."""

    id: str
    stage: str
    functions: tuple[str, ...]
    pause_us: str
    abort_cause: str
    runpre: tuple[RunPre, ...] = ()
    tsc_khz: int | None = None   # the pause's time base; 0: ktime, None: not reported


def parse_timing(text: str) -> dict[str, int]:
    """The primary's ``timing`` file (``name value`` lines, kmodsrc/sysfs.c) as a dict.

    Lines that are not one name and one decimal value are skipped, so a module
    built before a field existed reads as that field missing.
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def view_update(kernel: Kernel, update_id: str) -> UpdateView:
    """The primary's stage, functions, pause and last abort; where run-pre found each function.

    The helper, which holds run-pre's own results, is unloaded once an update
    is applied; the primary's ``functions`` file then gives the address of
    each replaced function, which run-pre matching settled (``name addr ok``).
    """
    m = module_name(update_id)
    rows = [line.split() for line in kernel.read(m, "functions").splitlines() if line.strip()]
    funcs = tuple(r[0] for r in rows)
    helper = module_name(update_id, helper=True)
    runpre = read_runpre(kernel, helper) if kernel.loaded(helper) else ()
    if not runpre:
        runpre = tuple(RunPre(r[0], "found", int(r[1], 16)) for r in rows
                       if len(r) >= 2 and _is_hex(r[1]))
    try:
        timing = parse_timing(kernel.read(m, "timing"))
    except FileNotFoundError:
        timing = {}
    return UpdateView(update_id, kernel.read(m, "stage"), funcs, kernel.read(m, "pause_us"),
                      kernel.read(m, "abort_cause"), runpre, timing.get("tsc_khz"))


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def format_view(v: UpdateView) -> str:
    lines = [f"ksplice-{v.id}: {v.stage}",
             f"  functions: {' '.join(v.functions) or '-'}",
             f"  stop_machine pause: {v.pause_us} us"
             + (" (kernel clock: this kernel has no TSC rate)" if v.tsc_khz == 0 else "")]
    lines += [f"  {line}" for line in format_runpre(v.runpre)]
    if v.abort_cause != "none":
        lines.append(f"  last abort: {explain(v.abort_cause)}")
    return "\n".join(lines)


# -- console commands -----------------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ApplyError("must be run as root")


def _run(prog: str, fn, argv: Sequence[str] | None) -> int:
    try:
        return fn(argv)
    except UserError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1


def _apply(argv: Sequence[str] | None, kernel: Kernel | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ksplice-apply",
                                 description="Apply a ksplice update to the running kernel.")
    ap.add_argument("tarball", type=Path, help="ksplice-<id>.tar.gz from ksplice-create")
    args = ap.parse_args(argv)
    kernel = kernel or Kernel()
    _require_root()
    with tempfile.TemporaryDirectory(prefix="ksplice-apply-") as tmp:
        pkg = extract_package(args.tarball, Path(tmp))
        notes: list[str] = []
        apply_package(kernel, pkg, notes)
    print("Done!")
    for line in notes:
        print(line)
    return 0


def _view(argv: Sequence[str] | None, kernel: Kernel | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ksplice-view",
                                 description="List the ksplice updates in the running kernel.")
    ap.add_argument("--id", help="show only this update")
    args = ap.parse_args(argv)
    kernel = kernel or Kernel()
    ids = kernel.update_ids()
    if args.id is not None:
        check_id(args.id)
        if args.id not in ids:
            raise ApplyError(f"update {args.id} is not loaded")
        ids = [args.id]
    if not ids:
        print("No ksplice updates are loaded.")
    for i in ids:
        print(format_view(view_update(kernel, i)))
    return 0


def _undo(argv: Sequence[str] | None, kernel: Kernel | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ksplice-undo",
                                 description="Reverse a ksplice update and unload it.")
    ap.add_argument("id", help="the update's 8-character id")
    args = ap.parse_args(argv)
    check_id(args.id)
    kernel = kernel or Kernel()
    _require_root()
    undo_update(kernel, args.id)
    print("Done!")
    return 0


def apply_main(argv: Sequence[str] | None = None) -> int:
    """``ksplice-apply TARBALL``."""
    return _run("ksplice-apply", _apply, argv)


def view_main(argv: Sequence[str] | None = None) -> int:
    """``ksplice-view [--id ID]``."""
    return _run("ksplice-view", _view, argv)


def undo_main(argv: Sequence[str] | None = None) -> int:
    """``ksplice-undo ID``."""
    return _run("ksplice-undo", _undo, argv)


COMMANDS = {"apply": apply_main, "view": view_main, "undo": undo_main}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ksplice_tasks.target.apply {apply,view,undo} ...`` (no console scripts)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m ksplice_tasks.target.apply {{{','.join(COMMANDS)}}} ...",
              file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
