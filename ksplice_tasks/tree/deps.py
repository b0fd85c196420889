# SPDX-License-Identifier: GPL-2.0-only
"""Which objects a source patch affects, in a tree that has never been fully built.

A targeted prebuild (``ksplice-create --prebuild`` on a fresh tree) builds no
objects, so there are no Kbuild ``.cmd`` files to say which headers each
object read. Two facts replace them:

- **The object inventory.** ``make -n vmlinux modules`` right after
  ``make prepare`` walks every Makefile with the target's config and prints,
  without running it, the compile command of every object the config builds
  (``... -c -o fs/proc/loadavg.o fs/proc/loadavg.c``), with that object's
  ``-I``/``-iquote`` directories and ``-include`` files (scripts/Makefile.build,
  ``rule_cc_o_c`` and ``rule_as_o_S``). Kbuild, not us, decides what is
  configured. On Debian's amd64 config it lists 13,647 objects in about 17 s.
- **An include scan.** Every ``#include`` line of the tree's C, header and
  assembler files. A file is affected when it is a touched file or includes
  an affected file; an object is affected when its source or one of its
  ``-include`` files is. An include name is taken to reach a file when it
  does relative to the including file's directory or to *any* include
  directory of *any* object: this may list objects that do not really read
  the header (they are rebuilt and found unchanged), but it never misses one
  that does. ``#include MACRO`` lines (trace events) count as including any
  file whose stem the including file names. Objects whose source is
  generated during the build (ASN.1 parsers, raid6 tables, vDSO images) are
  counted as affected by any header under an ``include`` directory.

Anything else a patch touches (a Makefile, Kconfig, a ``.tbl`` or ``.txt``
that generates code) is refused by :func:`affected_objects` with the reason:
only Kbuild's full build can say what that changes.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ksplice_tasks.artifacts import IncludeIndex, ObjectInventory
from ksplice_tasks.tree import snapshot

SCANNED_SUFFIXES = (".c", ".h", ".S", ".inc")

# One compile command in make -n output: the part from -Wp,-MMD to "-c -o OBJ SRC".
_COMPILE = re.compile(r"-Wp,-MMD,\S+\.o\.d (?P<flags>.*?) -c -o (?P<obj>\S+\.o) (?P<src>\S+\.[cS])"
                      r"(?=[\s;']|$)")
_INCLUDE_DIR = re.compile(r"(?:^|\s)(?:-I|-iquote|-isystem)\s*(\S+)")
_FORCED = re.compile(r"(?:^|\s)-include\s+(\S+)")
_INCLUDE_LINE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*([<"])([^>"\n]+)[>"]', re.M)


@dataclass(frozen=True)
class CompileUnit:
    """One object the config builds: its source, include directories and forced includes.

    Paths are tree-relative, normalised (no ``./``); directories outside the
    tree (the compiler's own) are dropped.
    """

    source: str
    include_dirs: tuple[str, ...]
    forced: tuple[str, ...]


def _tree_path(path: str, tree: str) -> str | None:
    """A command-line path as tree-relative, normalised; None when outside the tree."""
    if path.startswith("/"):
        if path == tree or path.startswith(tree + "/"):
            path = path[len(tree) + 1:]
        else:
            return None
    norm = posixpath.normpath(path)
    return None if norm.startswith("..") else ("" if norm == "." else norm)


def parse_dry_run(text: str, tree: str = "") -> dict[str, CompileUnit]:
    """Object -> CompileUnit from ``make -n`` output (Kbuild prints each command twice).

    ``tree`` is the tree's absolute path, for absolute ``-I`` directories.
    """
    units: dict[str, CompileUnit] = {}
    for m in _COMPILE.finditer(text):
        obj = _tree_path(m.group("obj"), tree)
        src = _tree_path(m.group("src"), tree)
        if not obj or not src or obj in units:
            continue
        flags = m.group("flags")
        if "-D__KERNEL__" not in flags:
            continue  # a host program (scripts/, tools/), not part of the kernel
        dirs = tuple(d for d in (_tree_path(x, tree) for x in _INCLUDE_DIR.findall(flags))
                     if d is not None)
        forced = tuple(f for f in (_tree_path(x, tree) for x in _FORCED.findall(flags))
                       if f)
        units[obj] = CompileUnit(src, dirs, forced)
    return units


def dry_run_argv(tree: Path, make_vars: Sequence[str] = ()) -> list[str]:
    """``make -n`` over everything the config builds; it writes nothing (GNU make, -n)."""
    return ["make", "-C", str(tree), "-n", *make_vars, "vmlinux", "modules"]


@dataclass(frozen=True)
class IncludeScan:
    """The include lines of every scanned file of a tree.

    ``by_basename`` maps the last component of an include name to the
    ``(including file, name, quoted)`` triples that use it; ``files`` is
    every scanned file.
    """

    by_basename: Mapping[str, tuple[tuple[str, str, bool], ...]]
    files: frozenset[str]


def scan_includes(tree: Path, exclude: Sequence[Path] = ()) -> IncludeScan:
    """Read the include lines of every ``.c``, ``.h``, ``.S`` and ``.inc`` file below ``tree``."""
    index: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)
    files = set()
    for rel, entry in snapshot.walk(tree, exclude):
        if not rel.endswith(SCANNED_SUFFIXES) or not entry.is_file(follow_symlinks=False):
            continue
        files.add(rel)
        with open(entry.path, "rb") as f:
            data = f.read()
        if b"include" not in data:
            continue
        for kind, name in _INCLUDE_LINE.findall(data):
            text = name.decode("utf-8", "replace").strip()
            index[posixpath.basename(text)].append((rel, text, kind == b'"'))
    return IncludeScan({k: tuple(v) for k, v in index.items()}, frozenset(files))


def _reaches(includer: str, name: str, quoted: bool, target: str,
             include_dirs: frozenset[str]) -> bool:
    """Can ``#include name`` in ``includer`` open ``target``? (over-approximate)."""
    if quoted and posixpath.normpath(posixpath.join(posixpath.dirname(includer), name)) == target:
        return True
    norm = posixpath.normpath(name)
    if not target.endswith("/" + norm) and target != norm:
        return False
    root = target[: len(target) - len(norm)].rstrip("/")
    return root in include_dirs


def affected_files(scan: IncludeScan, touched: Iterable[str],
                   include_dirs: frozenset[str]) -> set[str]:
    """The touched files and every scanned file that includes one of them, transitively."""
    done: set[str] = set()
    todo = list(touched)
    while todo:
        target = todo.pop()
        if target in done:
            continue
        done.add(target)
        for includer, name, quoted in scan.by_basename.get(posixpath.basename(target), ()):
            if includer not in done and _reaches(includer, name, quoted, target, include_dirs):
                todo.append(includer)
    return done


def is_global_header(path: str) -> bool:
    """A header under an ``include`` directory (include/, arch/x86/include/, ...)."""
    return path.endswith(".h") and (path.startswith("include/") or "/include/" in path)


def affected_objects(units: Mapping[str, CompileUnit], scan: IncludeScan,
                     touched: Sequence[str]) -> tuple[list[str] | None, str]:
    """The objects of ``units`` that a patch to ``touched`` files can change.

    Returns ``(objects, why)``: ``objects`` is a sorted list (possibly empty),
    or None when only a full build can tell, and ``why`` says which file made
    it so.
    """
    for t in touched:
        if not t.endswith(SCANNED_SUFFIXES):
            return None, f"the patch changes {t}, which is not C, a header or assembler"
    include_dirs = frozenset(d for u in units.values() for d in u.include_dirs)
    files = affected_files(scan, touched, include_dirs)
    any_global = any(is_global_header(t) for t in touched)
    out = []
    for obj, unit in units.items():
        if unit.source in files or any(f in files for f in unit.forced):
            out.append(obj)
        elif any_global and unit.source not in scan.files:
            out.append(obj)  # generated source: its includes are unknown before the build
    return sorted(out), ""


def object_source_missing(units: Mapping[str, CompileUnit], tree: Path) -> list[str]:
    """Objects whose source does not exist in ``tree`` (it is generated by the build)."""
    return sorted(o for o, u in units.items() if not os.path.exists(tree / u.source))


def inventory_record(units: Mapping[str, CompileUnit]) -> ObjectInventory:
    """The JSON record of an inventory, with include lists shared between objects."""
    include_sets: dict[tuple[str, ...], int] = {}
    forced_sets: dict[tuple[str, ...], int] = {}
    objects = {}
    for obj, u in sorted(units.items()):
        i = include_sets.setdefault(u.include_dirs, len(include_sets))
        f = forced_sets.setdefault(u.forced, len(forced_sets))
        objects[obj] = (u.source, i, f)
    return ObjectInventory(objects, [list(k) for k in include_sets],
                           [list(k) for k in forced_sets])


def units_from_record(rec: ObjectInventory) -> dict[str, CompileUnit]:
    """The inverse of :func:`inventory_record`; ValueError for an index out of range."""
    incs = [tuple(x) for x in rec.include_sets]
    forced = [tuple(x) for x in rec.forced_sets]
    try:
        return {obj: CompileUnit(src, incs[i], forced[f])
                for obj, (src, i, f) in rec.objects.items()}
    except IndexError:
        raise ValueError("object inventory: an include-set index is out of range") from None


def index_record(scan: IncludeScan) -> IncludeIndex:
    """The JSON record of an include scan."""
    files = sorted(scan.files)
    number = {f: i for i, f in enumerate(files)}
    rows = sorted((number[f], name, quoted) for entries in scan.by_basename.values()
                  for f, name, quoted in entries)
    return IncludeIndex(files, [r[0] for r in rows], [r[1] for r in rows],
                        [r[2] for r in rows])


def scan_from_record(rec: IncludeIndex) -> IncludeScan:
    """The inverse of :func:`index_record`; ValueError for a file index out of range."""
    index: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)
    if not len(rec.includer) == len(rec.name) == len(rec.quoted):
        raise ValueError("include index: its columns differ in length")
    try:
        for i, name, quoted in zip(rec.includer, rec.name, rec.quoted, strict=True):
            index[posixpath.basename(name)].append((rec.files[i], name, quoted))
    except IndexError:
        raise ValueError("include index: a file index is out of range") from None
    return IncludeScan({k: tuple(v) for k, v in index.items()}, frozenset(rec.files))


def scan_exclusions(tree: Path, units: Mapping[str, CompileUnit]) -> list[Path]:
    """Directories no configured object can read: other architectures, Documentation, samples.

    An ``arch/<name>`` directory is kept when any object's source or include
    directory lies in it.
    """
    used = {p.split("/")[1] for u in units.values() for p in (u.source, *u.include_dirs)
            if p.startswith("arch/") and p.count("/") >= 1}
    arch = tree / "arch"
    out = [tree / "Documentation", tree / "samples"]
    if arch.is_dir():
        out += [p for p in arch.iterdir() if p.is_dir() and p.name not in used]
    return out
