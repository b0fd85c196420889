# SPDX-License-Identifier: GPL-2.0-only
"""Validate ksplice-create's inputs before anything on disk is touched.

Every check raises UserError with the seed's message, so that a bad command
line never leaves the tree, the prebuilt tree or the post tree half-modified.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ksplice_tasks import symbolmap
from ksplice_tasks.encode.ksplice_tables import DEFAULT_ANCHOR
from ksplice_tasks.errors import UserError
from ksplice_tasks.stages.layout import STATE_DIRNAME as STATE_DIRNAME
from ksplice_tasks.stages.layout import StateLayout, state_layout
from ksplice_tasks.tree.snapshot import POST_MARKER


@dataclass(frozen=True)
class Settings:
    """Resolved, validated paths and options shared by every task."""

    ksrc: Path
    orig: Path
    postdir: Path
    jobs: int
    verbose: bool = False
    patch: Path | None = None
    diffext: str | None = None
    patch_opts: tuple[str, ...] = field(default=("-p1",))
    outdir: Path = field(default_factory=Path.cwd)
    make_vars: tuple[str, ...] = ()
    full: bool = False
    symbol_map: Path | None = None

    def __post_init__(self) -> None:
        if self.symbol_map is None:
            object.__setattr__(self, "symbol_map", self.orig / symbolmap.SYSTEM_MAP)

    @property
    def map_file(self) -> Path:
        """ORIG_CONFIG's System.map or kallsyms: the file the tables are made from."""
        assert self.symbol_map is not None
        return self.symbol_map

    @property
    def state(self) -> Path:
        """Where doit's dep file, stamps and logs live (ORIG_CONFIG is ours to write)."""
        return self.layout.root

    @property
    def layout(self) -> StateLayout:
        """Every path under :attr:`state`."""
        return state_layout(self.orig)

    @property
    def excluded(self) -> tuple[Path, ...]:
        """Directories inside KERNEL_SOURCE that belong to ksplice, not to the kernel."""
        return tuple(p for p in (self.orig, self.postdir) if is_within(p, self.ksrc))


def is_within(path: Path, root: Path) -> bool:
    """True when path is root or below it (both already resolved)."""
    return path == root or root in path.parents


def default_jobs() -> int:
    """The seed honours CONCURRENCY_LEVEL; otherwise use every core."""
    env = os.environ.get("CONCURRENCY_LEVEL", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return os.cpu_count() or 1


_VERSION_RE = re.compile(rb"^VERSION\s*=\s*\d+\s*$", re.M)
_PATCHLEVEL_RE = re.compile(rb"^PATCHLEVEL\s*=\s*\d+\s*$", re.M)


def check_kernel_tree(ksrc: Path) -> None:
    """A kernel tree has a top Makefile with VERSION/PATCHLEVEL, Kbuild and Kconfig."""
    if not ksrc.is_dir():
        raise UserError(f"KERNEL_SOURCE is not a directory: {ksrc}")
    makefile = ksrc / "Makefile"
    try:
        head = makefile.read_bytes()[:4096]
    except OSError:
        head = b""
    if not (
        _VERSION_RE.search(head)
        and _PATCHLEVEL_RE.search(head)
        and (ksrc / "Kbuild").is_file()
        and (ksrc / "Kconfig").is_file()
    ):
        raise UserError(
            f"Not a kernel source tree: {ksrc} (no top-level Makefile with VERSION and "
            "PATCHLEVEL, Kbuild and Kconfig)"
        )


def resolve(
    ksrc: str | Path,
    orig: str | Path | None = None,
    postdir: str | Path | None = None,
    jobs: int | None = None,
    verbose: bool = False,
    patch: str | Path | None = None,
    diffext: str | None = None,
    patch_opts: tuple[str, ...] | list[str] | None = None,
    outdir: str | Path | None = None,
    full: bool = False,
) -> Settings:
    """Check everything the seed checks, in the seed's order, and a few things it missed."""
    ksrc_p = Path(ksrc).expanduser().resolve()
    check_kernel_tree(ksrc_p)

    if orig is None:
        orig_p = ksrc_p / "ksplice"
    else:
        orig_p = Path(orig).expanduser().resolve()
        if is_within(orig_p, ksrc_p) and orig_p != ksrc_p / "ksplice":  # the default is fine
            raise UserError(
                "Aborting: User-specified ORIG_CONFIG cannot be KERNEL_SOURCE or a subdirectory"
            )
    if not orig_p.is_dir():
        raise UserError(f"Failed to find ORIG_CONFIG directory ({orig_p})")
    if not (orig_p / ".config").is_file():
        raise UserError(f"Failed to find .config file in ORIG_CONFIG directory ({orig_p})")
    symbol_map = check_target_files(ksrc_p, orig_p, verbose=verbose)
    if not os.access(orig_p, os.W_OK):
        raise UserError(
            f"ORIG_CONFIG directory is not writable ({orig_p}): ksplice keeps its state there"
        )

    if postdir is None:
        post_p = orig_p / "post"
    else:
        post_p = Path(postdir).expanduser().resolve()
        if is_within(post_p, ksrc_p):
            raise UserError(
                "Aborting: User-specified postdir cannot be KERNEL_SOURCE or a subdirectory"
            )
    for precious, what in ((ksrc_p, "KERNEL_SOURCE"), (orig_p, "ORIG_CONFIG")):
        if is_within(precious, post_p):
            raise UserError(f"Aborting: postdir {post_p} would contain {what}, which it replaces")
    check_postdir_is_ours(post_p)

    if jobs is not None and jobs < 1:
        raise UserError(f"-j needs a positive number of jobs, not {jobs}")
    patch_p = None
    if patch is not None:
        patch_p = Path(patch).expanduser().resolve()
        if not patch_p.is_file():
            raise UserError(f"Failed to find patch file ({patch_p})")
    if diffext is not None:
        patch_opts = ("-p0",)  # the seed: --patch-opt is ignored with --diffext
    out_p = Path(outdir).expanduser().resolve() if outdir else Path.cwd()
    if patch_p is not None or diffext is not None:
        check_output_dir(out_p)
    return Settings(
        ksrc=ksrc_p,
        orig=orig_p,
        postdir=post_p,
        jobs=jobs or default_jobs(),
        verbose=verbose,
        patch=patch_p,
        diffext=diffext,
        patch_opts=tuple(patch_opts) if patch_opts else ("-p1",),
        outdir=out_p,
        make_vars=target_make_vars(orig_p),
        full=full,
        symbol_map=symbol_map,
    )


def check_output_dir(out: Path) -> None:
    """Where the tarball goes must be a writable directory: UserError (one line) before
    any build, not an OSError after it. A full disk is still only seen at the write."""
    if not out.exists():
        raise UserError(f"the output directory {out} does not exist")
    if not out.is_dir():
        raise UserError(f"the output directory {out} is not a directory")
    if not os.access(out, os.W_OK | os.X_OK):  # also False on a read-only mount, for root
        raise UserError(f"the output directory {out} is not writable")


def check_target_files(ksrc: Path, orig: Path, *, verbose: bool = False) -> Path:
    """Check ORIG_CONFIG's description of the target against itself and the tree.

    Returns the symbol file to use (:func:`ksplice_tasks.symbolmap.choose`:
    System.map, else kallsyms; with -v says which). One-line UserError when:
    neither is usable (a stub System.map, no file); the tree's Makefile version
    is not the one the .config's header names; ``kernel.release`` is malformed;
    a kallsyms is unreadable as this config's kernel; the map is not whole
    (:func:`ksplice_tasks.symbolmap.check_complete`: empty, cut short, no KASLR
    anchor); or ``Module.symvers``
    does not export what the map's ``__ksymtab_*`` say
    (:func:`check_symvers`). Reads files only; runs before any build, for
    prebuild and create alike.
    """
    config_text = (orig / ".config").read_text(errors="replace")
    try:
        makefile_text = (ksrc / "Makefile").read_text(errors="replace")
    except OSError:
        makefile_text = ""
    symbolmap.check_source_version(makefile_text, config_text, f"{orig}/.config")
    chosen = symbolmap.choose(orig)
    if verbose:
        other = orig / symbolmap.KALLSYMS
        also = " (kallsyms is there too, unused)" if (
            chosen.name == symbolmap.SYSTEM_MAP and other.is_file()) else ""
        print(f"ksplice: target symbols from {chosen}{also}", flush=True)
    read_release(orig)
    symbols = symbolmap.load(chosen, config_text)
    bounds = (symbolmap.KALLSYMS_BOUNDS if chosen.name == symbolmap.KALLSYMS
              else symbolmap.IMAGE_BOUNDS)
    symbolmap.check_complete(symbols, str(chosen), (DEFAULT_ANCHOR,), bounds)
    check_symvers(orig, chosen, symbols)
    return chosen


def check_symvers(orig: Path, symbol_file: Path, symbols: symbolmap.SymbolMap) -> int:
    """ORIG_CONFIG/Module.symvers against ``symbols``, the map read from ``symbol_file``;
    the number of exports compared.

    0 when there is no Module.symvers or the map lists no ``__ksymtab_*``.
    UserError naming the first differing symbol and both files.
    """
    path = orig / symbolmap.MODULE_SYMVERS
    if not path.is_file():
        return 0
    exports = symbolmap.parse_symvers(path.read_text(errors="replace"), str(path))
    return symbolmap.check_symvers_matches_map(exports, symbols, str(path), str(symbol_file))


_RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$")
_CC_TEXT_RE = re.compile(r'^CONFIG_CC_VERSION_TEXT="([^" ]+) ', re.M)


def read_release(orig: Path) -> str | None:
    """ORIG_CONFIG/kernel.release: the target's ``uname -r``, one line; None when absent.

    UserError when the file is not one plausible release string (the kernel's
    UTS release is at most 64 characters, include/uapi/linux/utsname.h).
    """
    path = orig / "kernel.release"
    if not path.is_file():
        return None
    lines = path.read_text(errors="replace").splitlines()
    release = lines[0].strip() if lines else ""
    if len(lines) != 1 or not _RELEASE_RE.match(release):
        raise UserError(f"{path} must be one line holding the target's 'uname -r', "
                        f"such as 6.1.0-57-amd64")
    return release


def target_make_vars(orig: Path) -> tuple[str, ...]:
    """Make variables that rebuild the target's objects as its distributor did.

    - ``KERNELRELEASE=<ORIG_CONFIG/kernel.release>``: Debian's release string
      (6.1.0-57-amd64) is not the source Makefile's (6.1.192); it goes into
      UTS_RELEASE and so into the modules' vermagic (include/linux/vermagic.h).
    - ``CC=<compiler>`` when the config's CONFIG_CC_VERSION_TEXT names a
      versioned gcc that is installed (Debian builds with ``CC=gcc-12``);
      otherwise Kconfig would rewrite CONFIG_CC_VERSION_TEXT.
    """
    out = []
    release = read_release(orig)
    if release is not None:
        out.append(f"KERNELRELEASE={release}")
    try:
        text = (orig / ".config").read_text(errors="replace")
    except OSError:
        text = ""
    m = _CC_TEXT_RE.search(text)
    if m and re.fullmatch(r"gcc-\d+", m.group(1)) and shutil.which(m.group(1)):
        out.append(f"CC={m.group(1)}")
    return tuple(out)


def check_postdir_is_ours(postdir: Path) -> None:
    """The postdir is emptied on every prebuild: refuse one that holds someone else's files."""
    if postdir.exists():
        if not postdir.is_dir():
            raise UserError(f"postdir exists and is not a directory: {postdir}")
        if any(postdir.iterdir()) and not (postdir / POST_MARKER).exists():
            raise UserError(
                f"postdir {postdir} is not empty and was not made by ksplice; "
                "refusing to replace its contents"
            )
