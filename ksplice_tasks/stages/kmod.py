# SPDX-License-Identifier: GPL-2.0-only
"""Build an update's primary and helper modules from ``kmodsrc/`` and the collection objects.

The steps are separate functions so the task graph can make each one a doit
task with its own ``file_dep``/``targets``:

1. :func:`write_tables_asm` - ``.ksplice.*`` tables of one module as assembly;
2. :func:`assemble` - the ``.s`` into an object;
3. :func:`link_tables` - ``ld -r`` the collection object with it
   (:func:`check_linked` then proves every table pointer found its symbol);
4. :func:`prepare_kmod_dir` - kmodsrc sources, ``modcommon.auto.h`` and the
   two ``collection.o.*`` files in one directory;
5. :func:`build_modules` - Kbuild, returning the two ``.ko`` paths.

:func:`build_update_modules` runs them all, for tests and simple callers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from elftools.elf.elffile import ELFFile

from ksplice_tasks.commands import run
from ksplice_tasks.encode import ksplice_tables as metadata
from ksplice_tasks.errors import UserError

KMODSRC_FILES = ("Kbuild", "resolve.c", "runpre.c", "patch.c", "sysfs.c", "primary.c",
                 "helper.c", "ksplice.h", "resolve.h", "runpre.h", "patch.h", "sysfs.h",
                 "ksplice_abort.h", metadata.HEADER_NAME)
# Unexported kernel symbols the primary's own code calls (kmodsrc/patch.c);
# build_update_modules adds them to the primary's imports table.
# module_kallsyms_on_each_symbol finds functions of loaded modules (not in System.map).
PRIMARY_IMPORTS = ("text_poke", "text_mutex", "stop_machine_cpuslocked",
                   "module_kallsyms_on_each_symbol")


def kmodsrc_dir() -> Path:
    """The kernel-side sources: ``<repo>/kmodsrc``, or in an installed package
    ``ksplice_tasks/kmodsrc`` (pyproject maps one onto the other)."""
    here = Path(__file__).resolve().parent.parent
    for d in (here.parent / "kmodsrc", here / "kmodsrc"):
        if (d / "Kbuild").is_file():
            return d
    return here.parent / "kmodsrc"


def _write_atomic(path: Path, data: str | bytes) -> Path:
    """Write unless the file already holds these bytes (Kbuild then has nothing to redo)."""
    raw = data.encode() if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == raw:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    os.replace(tmp, path)
    return path


def _copy_atomic(src: Path, dest: Path) -> Path:
    if dest.is_file() and dest.read_bytes() == src.read_bytes():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest


def write_modcommon(dest: Path, update_id: str, system_map: metadata.SystemMap,
                    anchor: str = metadata.DEFAULT_ANCHOR) -> Path:
    """Write ``modcommon.auto.h`` (id, KASLR anchor) to the file ``dest``."""
    return _write_atomic(dest, metadata.render_modcommon(update_id, system_map, anchor))


def write_tables_asm(dest: Path, tables: metadata.ModuleTables,
                     system_map: metadata.SystemMap) -> Path:
    """Write one module's ``.ksplice.*`` tables as assembly to ``dest``."""
    return _write_atomic(dest, metadata.render_asm(tables, system_map))


def assemble(asm: Path, out: Path, *, verbose: bool = False) -> Path:
    """``gcc -c -x assembler``: the same driver Kbuild uses, no kernel flags needed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".asm-", dir=out.parent) as tmp:
        obj = Path(tmp) / out.name
        run(["gcc", "-c", "-x", "assembler", "-o", obj, asm], verbose=verbose,
            what=f"assembling {asm.name}")
        os.replace(obj, out)
    return out


def link_tables(collection: Path, tables_obj: Path, out: Path, *,
                verbose: bool = False) -> Path:
    """``ld -r`` a collection object with its tables object into ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ld-", dir=out.parent) as tmp:
        obj = Path(tmp) / out.name
        run(["ld", "-r", "-o", obj, collection, tables_obj], verbose=verbose,
            what=f"linking tables into {collection.name}")
        os.replace(obj, out)
    return out


def table_symbols(tables: metadata.ModuleTables) -> set[str]:
    """The collection symbols the tables point at (anchors, copies, replacements)."""
    return ({r.anchor for r in tables.relocs} | {s.pointer for s in tables.sizes}
            | {p.replacement for p in tables.patches})


def undefined_symbols(obj: Path) -> set[str]:
    """Names an object leaves for the module loader to resolve."""
    with open(obj, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {s.name for s in symtab.iter_symbols()
                if s.name and s["st_shndx"] == "SHN_UNDEF"} if symtab else set()


def check_linked(obj: Path, tables: metadata.ModuleTables) -> None:
    """Refuse a linked collection whose tables point at symbols it does not define.

    Such a name would reach the module loader, which knows only exported
    kernel symbols: the module would fail to load with "Unknown symbol".
    """
    missing = sorted(table_symbols(tables) & undefined_symbols(obj))
    if missing:
        raise UserError(f"{obj}: table symbols not defined by the collection: "
                        + ", ".join(missing[:10]))


def prepare_kmod_dir(dest: Path, update_id: str, system_map: metadata.SystemMap,
                     primary: Path, helper: Path, *, src: Path | None = None,
                     anchor: str = metadata.DEFAULT_ANCHOR) -> Path:
    """A directory Kbuild can build: kmodsrc, modcommon.auto.h, collection.o.{primary,helper}.

    ``primary``/``helper`` are collection objects with their tables linked in.
    """
    metadata.check_id(update_id)
    src = src or kmodsrc_dir()
    for name in KMODSRC_FILES:
        if not (src / name).is_file():
            raise UserError(f"kernel module source missing: {src / name}")
        _copy_atomic(src / name, dest / name)
    write_modcommon(dest / "modcommon.auto.h", update_id, system_map, anchor)
    _copy_atomic(primary, dest / "collection.o.primary")
    _copy_atomic(helper, dest / "collection.o.helper")
    return dest


def module_names(update_id: str) -> tuple[str, str]:
    """File names of the primary and helper modules."""
    return f"ksplice-{update_id}.ko", f"ksplice-{update_id}-helper.ko"


def kbuild_argv(kdir: Path, moddir: Path, update_id: str, jobs: int = 1) -> list[str]:
    """The external-module Kbuild command (kdir: an O= build dir or a built tree)."""
    return ["make", "-C", str(kdir), f"M={moddir}", f"KSPLICE_ID={update_id}",
            f"-j{jobs}", "modules"]


def build_modules(kdir: Path, moddir: Path, update_id: str, *, jobs: int = 1,
                  verbose: bool = False) -> tuple[Path, Path]:
    """Run Kbuild in a prepared directory; return (primary .ko, helper .ko)."""
    argv = kbuild_argv(kdir, moddir.resolve(), update_id, jobs)
    if not (kdir / "Module.symvers").is_file():
        raise UserError(f"{kdir} has no Module.symvers: build the kernel with "
                        "'make modules' first")
    run(argv, verbose=verbose, what="building the update modules")
    kos = tuple(moddir / n for n in module_names(update_id))
    for ko in kos:
        if not ko.is_file():
            raise UserError(f"Kbuild did not produce {ko}")
    return kos[0], kos[1]


@dataclass(frozen=True)
class ModuleInputs:
    """One module's collection object (without tables) and its table records."""

    collection: Path
    tables: metadata.ModuleTables


def with_primary_imports(tables: metadata.ModuleTables) -> metadata.ModuleTables:
    """The primary's tables plus any of :data:`PRIMARY_IMPORTS` they lack."""
    have = {i.name for i in tables.imports}
    extra = tuple(metadata.ImportInput(n) for n in PRIMARY_IMPORTS if n not in have)
    return replace(tables, imports=tuple(tables.imports) + extra)


def build_update_modules(workdir: Path, kdir: Path, update_id: str,
                         system_map: metadata.SystemMap, primary: ModuleInputs,
                         helper: ModuleInputs, *, jobs: int = 1,
                         verbose: bool = False) -> tuple[Path, Path]:
    """All steps: tables, collection objects, kmod dir, Kbuild. Returns the two .ko.

    The primary's imports always include :data:`PRIMARY_IMPORTS`, which the
    kernel side needs to patch.
    """
    primary = ModuleInputs(primary.collection, with_primary_imports(primary.tables))
    linked: list[Path] = []
    for role, inputs in (("primary", primary), ("helper", helper)):
        asm = write_tables_asm(workdir / f"tables.{role}.s", inputs.tables, system_map)
        obj = assemble(asm, workdir / f"tables.{role}.o", verbose=verbose)
        out = link_tables(inputs.collection, obj, workdir / f"collection.o.{role}.linked",
                          verbose=verbose)
        check_linked(out, inputs.tables)
        linked.append(out)
    moddir = prepare_kmod_dir(workdir / "kmodsrc", update_id, system_map, *linked)
    return build_modules(kdir, moddir, update_id, jobs=jobs, verbose=verbose)


def read_system_map(path: Path) -> dict[str, list[int]]:
    """Parse an ORIG_CONFIG System.map file."""
    return metadata.parse_system_map(path.read_text())


def all_kmodsrc_files(src: Path | None = None) -> Iterable[Path]:
    """The sources a module build depends on (for doit file_dep)."""
    src = src or kmodsrc_dir()
    return [src / n for n in KMODSRC_FILES]
