# SPDX-License-Identifier: GPL-2.0-only
"""Phase 4, the update's two modules: tables into the collections, Kbuild, the rmsyms check.

Each step is the action of one doit task and takes its inputs explicitly, a
:class:`~ksplice_tasks.stages.layout.CreateLayout` for the work files, so a
test drives the same functions in a directory of its own:

1. :func:`write_tables` - each module's ``.ksplice.*`` tables (collect's
   ``tables.<role>.json``) as assembly, with System.map candidates;
2. :func:`assemble_tables` - assembled and ``ld -r``'d into the collection
   objects (:func:`check_linked` proves every table pointer found its symbol);
3. :func:`write_modcommon` - ``modcommon.auto.h``: the id and the KASLR anchor;
4. :func:`build` - kmodsrc and the linked collections in the module
   directory, Kbuild against the pre tree (so the vermagic is the running
   kernel's), and the ``modules.json`` record;
5. :func:`rmsyms_check` - neither module needs an unexported symbol, and
   (with the target's Module.symvers and kernel.release) each import's CRC
   and the vermagic are the target's.

:func:`check_pre_objects` (run by :func:`write_tables`) refuses a System.map
or kallsyms that does not describe the kernel the pre objects were built
for; :func:`install_symvers` puts ORIG_CONFIG's Module.symvers in the tree
the modules build against.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from ksplice_tasks import artifacts, symbolmap
from ksplice_tasks.commands import run
from ksplice_tasks.encode import ksplice_tables as metadata
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import (
    atomic_path,
    copy_if_changed,
    file_sha256,
    write_if_changed,
    write_json,
)
from ksplice_tasks.names import (
    HELPER,
    PRIMARY,
    ROLES,
    check_id,
    module_file,
    module_files,
    parse_tagged,
)
from ksplice_tasks.obj.elfread import (
    SHN_UNDEF,
    STB_WEAK,
    STT_FUNC,
    read_object,
    undefined_symbols,
)
from ksplice_tasks.obj.objmanip import KSPLICE_JUMP_TABLE
from ksplice_tasks.obj.view import ObjectView
from ksplice_tasks.stages.collect import TABLES
from ksplice_tasks.stages.inputs import Settings, read_release
from ksplice_tasks.stages.layout import CreateLayout
from ksplice_tasks.tree import cmdfile

KMODSRC_FILES = ("Kbuild", "resolve.c", "runpre.c", "patch.c", "sysfs.c", "primary.c",
                 "helper.c", "ksplice.h", "resolve.h", "runpre.h", "patch.h", "sysfs.h",
                 "ksplice_abort.h", metadata.HEADER_NAME)
# Unexported kernel symbols the primary's own code calls (kmodsrc/patch.c);
# write_tables adds them to the primary's imports table.
# module_kallsyms_on_each_symbol finds functions of loaded modules (not in System.map).
PRIMARY_IMPORTS = ("text_poke", "text_mutex", "stop_machine_cpuslocked",
                   "module_kallsyms_on_each_symbol", "idle_task")
# Registers the primary's jump entries (patch.c ksplice_link_jumps); static in
# kernel/jump_label.c, only in kernels with CONFIG_JUMP_LABEL: imported only by
# a primary that has jump entries.
JUMP_IMPORT = "jump_label_module_notify"

# The module file names, as tests and older callers know them.
module_names = module_files


def kmodsrc_dir() -> Path:
    """The kernel-side sources: ``<repo>/kmodsrc``, or in an installed package
    ``ksplice_tasks/kmodsrc`` (pyproject maps one onto the other)."""
    here = Path(__file__).resolve().parent.parent
    for d in (here.parent / "kmodsrc", here / "kmodsrc"):
        if (d / "Kbuild").is_file():
            return d
    return here.parent / "kmodsrc"


def all_kmodsrc_files(src: Path | None = None) -> Iterable[Path]:
    """The sources a module build depends on (for doit file_dep)."""
    src = src or kmodsrc_dir()
    return [src / n for n in KMODSRC_FILES]


def read_system_map(path: Path) -> dict[str, list[int]]:
    """ORIG_CONFIG's System.map or kallsyms as the link-time map: name -> addresses.

    See :func:`ksplice_tasks.symbolmap.load` (a kallsyms loses its KASLR
    offset and module symbols; UserError for a stub or a bad kallsyms).
    """
    return symbolmap.load(path)


# -- the target's symbols against the pre objects ----------------------------------------


# Text sections that are one .text section in a build without -ffunction-sections.
_SPLIT_ONLY = ".text."
_OWN_SECTIONS = (".text.unlikely.", ".text.hot.", ".text.startup.", ".text.exit.")


def _plain_text(name: str) -> bool:
    return name.startswith(_SPLIT_ONLY) and not name.startswith(_OWN_SECTIONS)


def object_functions(obj: Path) -> list[tuple[str, int, int]]:
    """(name, size, shrink) in bytes of the non-weak functions an object defines.

    ``shrink``: how much shorter the function may be in a kernel built
    without -ffunction-sections. There a tail jump (``jmp``/``jcc`` rel32,
    opcodes e9 and 0f 8x) to another function of the same object stays in one
    .text section and the assembler may use the 2-byte short form: 3 bytes
    less per jmp, 4 per jcc. Measured on the test kernels: __x64_sys_getrusage
    is 12 bytes in the section-flagged object and 9 in System.map.
    """
    elf = read_object(obj)
    shrink: dict[int, int] = {}
    for key, relocs in elf.relocs.items():
        sec = elf.sections.get(key)
        if sec is None or not _plain_text(sec.name):
            continue
        for r in relocs:
            target = elf.symbols[r.sym]
            tsec = elf.sections.get(target.shndx) if target.in_section else None
            if tsec is None or tsec.index == key or not _plain_text(tsec.name):
                continue
            op = sec.data[max(r.offset - 2, 0):r.offset]
            if op[-1:] == b"\xe9":
                shrink[key] = shrink.get(key, 0) + 3
            elif len(op) == 2 and op[0] == 0x0F and 0x80 <= op[1] <= 0x8F:
                shrink[key] = shrink.get(key, 0) + 4
    return [(sym.name, sym.size, shrink.get(sym.shndx, 0)) for sym in elf.symbols
            if sym.type == STT_FUNC and sym.in_section and sym.bind != STB_WEAK]


def is_module_object(tree: Path, rel: str) -> bool:
    """True when Kbuild compiled ``rel`` for a module (-DMODULE): not in vmlinux's map."""
    cmd = cmdfile.read(tree, rel)
    return bool(cmd and cmd.command and "-DMODULE" in cmd.command.split())


def check_pre_objects(pre_tree: Path, objects: Sequence[str],
                      symbols: metadata.SystemMap, map_file: Path | str) -> int:
    """Refuse a symbol map that is not the pre objects' kernel's: compare function sizes.

    For each built-in object of ``objects`` (tree-relative, under
    ``pre_tree``), every non-weak function the map lists exactly once must be
    followed by the next map symbol after its size (less what short tail
    jumps may save, :func:`object_functions`) plus at most 15 bytes of
    alignment padding (:func:`ksplice_tasks.symbolmap.size_mismatches`).
    Returns the number of functions compared; UserError naming the object,
    the function and both sizes.
    """
    order = symbolmap.SortedAddresses(symbols)
    compared = 0
    for rel in objects:
        if is_module_object(pre_tree, rel):
            continue
        funcs = object_functions(pre_tree / rel)
        bad = symbolmap.size_mismatches(funcs, symbols, order)
        if bad:
            name, size, distance = bad[0]
            raise UserError(f"{map_file} is not the map of the kernel {rel} was built for: "
                            f"{name} is {size} bytes in {rel} but {distance} bytes in the map "
                            f"({len(bad)} functions differ)")
        compared += sum(1 for n, _, _ in funcs if len(symbols.get(n, ())) == 1)
    return compared


def install_symvers(s: Settings) -> bool:
    """Copy ORIG_CONFIG/Module.symvers into KERNEL_SOURCE when it differs; True if it did.

    The modules are built against KERNEL_SOURCE, and modpost takes the CRCs
    and exports from its Module.symvers: with the target's copy they are the
    target's. Atomic (temp file, rename); a no-op without ORIG_CONFIG/Module.symvers.
    """
    return install_symvers_into(s.orig, s.ksrc)


def install_symvers_into(orig: Path, tree: Path) -> bool:
    """:func:`install_symvers` for an ORIG_CONFIG and a tree given as paths."""
    src = orig / symbolmap.MODULE_SYMVERS
    dest = tree / symbolmap.MODULE_SYMVERS
    if not src.is_file():
        return False
    if dest.is_file() and dest.read_bytes() == src.read_bytes():
        return False
    copy_if_changed(src, dest)
    return True


# -- the tables ----------------------------------------------------------------------


def with_primary_imports(tables: metadata.ModuleTables, *,
                         jump_labels: bool = False) -> metadata.ModuleTables:
    """The primary's tables plus any of :data:`PRIMARY_IMPORTS` they lack
    (and :data:`JUMP_IMPORT` when the primary has ``jump_labels``)."""
    have = {i.name for i in tables.imports}
    want = PRIMARY_IMPORTS + ((JUMP_IMPORT,) if jump_labels else ())
    extra = tuple(metadata.ImportInput(n) for n in want if n not in have)
    return replace(tables, imports=tuple(tables.imports) + extra)


def has_jump_entries(collection: Path) -> bool:
    """Whether a collection object carries jump entries (``__ksplice_jump_table*``)."""
    return any(s.name.startswith(KSPLICE_JUMP_TABLE) and s.size
               for s in read_object(collection).sections.values())


def module_tables(work: CreateLayout, role: str) -> metadata.ModuleTables:
    """What module ``role`` carries: collect's tables, plus the primary's own imports."""
    tables = TABLES.read(work.tables_json(role))
    if role != PRIMARY:
        return tables
    return with_primary_imports(tables, jump_labels=has_jump_entries(work.collection(role)))


def write_tables_asm(dest: Path, tables: metadata.ModuleTables,
                     system_map: metadata.SystemMap) -> Path:
    """Write one module's ``.ksplice.*`` tables as assembly to ``dest`` (unless unchanged)."""
    return write_if_changed(dest, metadata.render_asm(tables, system_map))


def assemble(asm: Path, out: Path, *, verbose: bool = False) -> Path:
    """``gcc -c -x assembler``: the same driver Kbuild uses, no kernel flags needed."""
    with atomic_path(out) as tmp:
        run(["gcc", "-c", "-x", "assembler", "-o", tmp, asm], verbose=verbose,
            what=f"assembling {asm.name}")
    return out


# Every object's piece of the primary's jump entries (objmanip.move_jump_keys) in one
# array, as jump_label_add_module() (kernel/jump_label.c) wants a module's entries;
# the QUAD keeps the section allocated (so the symbols stay in the module) when empty.
JUMP_START, JUMP_STOP = "ksplice_jump_start", "ksplice_jump_stop"
JUMP_LINK_SCRIPT = f"""SECTIONS {{
	{KSPLICE_JUMP_TABLE} : ALIGN(8) {{
		{JUMP_START} = .;
		KEEP(*({KSPLICE_JUMP_TABLE}*))
		{JUMP_STOP} = .;
		QUAD(0)
	}}
}}
"""


def link_tables(collection: Path, tables_obj: Path, out: Path, *,
                verbose: bool = False) -> Path:
    """``ld -r`` a collection object with its tables object into ``out``.

    The link script (:data:`JUMP_LINK_SCRIPT`) merges the objects'
    ``__ksplice_jump_table*`` pieces into one section between
    ``ksplice_jump_start`` and ``ksplice_jump_stop`` (kmodsrc/primary.c).
    """
    with tempfile.TemporaryDirectory(prefix="ksplice-lds-") as d, atomic_path(out) as tmp:
        script = Path(d) / "jump.lds"
        script.write_text(JUMP_LINK_SCRIPT)
        run(["ld", "-r", "-T", script, "-o", tmp, collection, tables_obj], verbose=verbose,
            what=f"linking tables into {collection.name}")
    return out


def table_symbols(tables: metadata.ModuleTables) -> set[str]:
    """The collection symbols the tables point at (anchors, copies, replacements)."""
    return ({r.anchor for r in tables.relocs} | {s.pointer for s in tables.sizes}
            | {p.replacement for p in tables.patches})


def check_linked(obj: Path, tables: metadata.ModuleTables) -> None:
    """Refuse a linked collection whose tables point at symbols it does not define.

    Such a name would reach the module loader, which knows only exported
    kernel symbols: the module would fail to load with "Unknown symbol".
    """
    missing = sorted(table_symbols(tables) & undefined_symbols(obj))
    if missing:
        raise UserError(f"{obj}: table symbols not defined by the collection: "
                        + ", ".join(missing[:10]))


def write_tables(work: CreateLayout, system_map: Path, pre_tree: Path | None = None) -> None:
    """The .ksplice.* tables as assembly, one file per module (the seed's save_using_asm).

    Reads ``work.tables_json(role)``, writes ``work.tables_asm(role)``. With
    ``pre_tree``, first checks the map against the pre objects of the changed
    objects (``work.post_build``; :func:`check_pre_objects`).
    """
    smap = read_system_map(system_map)
    if pre_tree is not None:
        changed = artifacts.POST_BUILD.read(work.post_build).changed
        check_pre_objects(pre_tree, changed, smap, system_map)
    tables = {role: module_tables(work, role) for role in ROLES}
    check_resolvable(tables[PRIMARY], tables[HELPER], smap, system_map)
    for role in ROLES:
        write_tables_asm(work.tables_asm(role), tables[role], smap)


def check_resolvable(primary: metadata.ModuleTables, helper: metadata.ModuleTables,
                     smap: metadata.SystemMap, map_file: Path) -> None:
    """Refuse, at create, an update whose every apply would abort as ``unresolved``.

    :func:`ksplice_tasks.encode.ksplice_tables.unresolvable_relocs` names the
    primary's relocations the kernel side can give no value.  Typically a fix
    whose other file, the one defining a new function, is not in the patch.
    UserError naming the first symbol and the function that refers to it.
    """
    bad = metadata.unresolvable_relocs(primary, helper, smap)
    if not bad:
        return
    r = bad[0]
    tagged = parse_tagged(metadata.map_name(r.section))
    fn = tagged.name if tagged else r.section
    n = len(metadata.candidates(smap, r.symbol))
    why = (f"which {map_file.name} lists {n} times and run-pre matching never sees"
           if n else f"which neither the running kernel ({map_file.name}) nor the update "
           "defines: the change that defines it must be in the patch too")
    names = sorted({metadata.map_name(b.symbol) for b in bad})
    more = f" ({len(names)} such symbols: {', '.join(names[:6])})" if len(names) > 1 else ""
    raise UserError(f"the new code of {fn} refers to {metadata.map_name(r.symbol)}, {why}{more}")


def assemble_tables(work: CreateLayout, *, verbose: bool = False) -> None:
    """Assemble each module's tables and link them into its collection object.

    Reads ``work.tables_asm(role)`` and ``work.collection(role)``, writes
    ``work.linked(role)``; UserError if a table points at a missing symbol.
    """
    for role in ROLES:
        obj = assemble(work.tables_asm(role), work.tables_obj(role), verbose=verbose)
        out = link_tables(work.collection(role), obj, work.linked(role), verbose=verbose)
        check_linked(out, module_tables(work, role))


# -- the modules ---------------------------------------------------------------------


def write_modcommon(work: CreateLayout, system_map: Path, update_id: str) -> Path:
    """``modcommon.auto.h`` (the id, the KASLR anchor's System.map address) in ``work.kmod``.

    Left alone when unchanged, so Kbuild has nothing to redo. ValueError for a
    malformed id or an anchor System.map does not list exactly once.
    """
    text = metadata.render_modcommon(update_id, read_system_map(system_map))
    return write_if_changed(work.modcommon, text)


def kbuild_argv(kdir: Path, moddir: Path, update_id: str, jobs: int = 1,
                make_vars: Sequence[str] = ()) -> list[str]:
    """The external-module Kbuild command (kdir: an O= build dir or a built tree).

    make_vars: the target's ``KERNELRELEASE=``/``CC=`` words
    (:func:`ksplice_tasks.stages.inputs.target_make_vars`), so the vermagic is
    the target's.
    """
    return ["make", "-C", str(kdir), *make_vars, f"M={moddir}", f"KSPLICE_ID={update_id}",
            f"-j{jobs}", "modules"]


def symbol_uses(obj_path: Path, wanted: Iterable[str]) -> dict[str, str]:
    """Where an object first refers to each of ``wanted``: name -> ``section (function+off)``.

    Function names are the kernel's (the ``____<tag>_post`` suffix taken off).
    """
    obj = read_object(obj_path)
    view = ObjectView(obj)
    want = set(wanted)
    out: dict[str, str] = {}
    for k, rl in sorted(obj.relocs.items()):
        sec = obj.sections.get(k)
        if sec is None:
            continue
        for r in rl:
            sym = obj.symbols[r.sym]
            if sym.shndx != SHN_UNDEF or sym.name not in want or sym.name in out:
                continue
            it = view.covering(k, r.offset)
            where = sec.name
            if it is not None and it.kind in ("func", "cold"):
                tagged = parse_tagged(it.name)
                where += f" ({tagged.name if tagged else it.name}+{r.offset - it.start:#x})"
            out[sym.name] = where
    return out


def check_loader_symbols(linked: Path, exported: set[str], role: str) -> None:
    """Refuse a collection the module loader cannot load: an undefined, unexported symbol.

    The passes strip every relocation the ksplice core resolves itself; what
    is left undefined in a collection is for the module loader: the kernel
    tables it applies, alternatives and ftrace/thunk calls (jump-label keys are
    the ksplice core's: objmanip.move_jump_keys).
    modpost would fail on an unexported one with a bare "undefined!"; this
    names it, with the section and function that need it (UserError).
    """
    missing = sorted(undefined_symbols(linked) - exported)
    if not missing:
        return
    where = symbol_uses(linked, missing[:1]).get(missing[0], "?")
    raise UserError(f"the {role} module's code needs {missing[0]} in {where}, which the "
                    "module loader must resolve before ksplice runs, but the kernel does not "
                    f"export it ({len(missing)} such symbols: {', '.join(missing[:5])})")


def build(work: CreateLayout, kdir: Path, update_id: str, *, jobs: int = 1,
          verbose: bool = False, src: Path | None = None,
          make_vars: Sequence[str] = (), orig: Path | None = None) -> artifacts.ModulesRecord:
    """Kbuild of kmodsrc/ plus the linked collections in ``work.kmod``, against ``kdir``.

    ``kdir`` is a built kernel tree (or O= directory) with Module.symvers;
    ``work.modcommon`` must be written first. Writes and returns the
    ``work.modules`` record. UserError when a source is missing, a collection
    needs an unexported symbol from the module loader
    (:func:`check_loader_symbols`), or Kbuild fails.
    With ``orig`` (ORIG_CONFIG), its Module.symvers is installed in ``kdir``
    first (:func:`install_symvers_into`; normally the prebuild already did).
    """
    check_id(update_id)
    src = src or kmodsrc_dir()
    moddir = work.kmod
    for path in all_kmodsrc_files(src):
        if not path.is_file():
            raise UserError(f"kernel module source missing: {path}")
        copy_if_changed(path, moddir / path.name)
    for role in ROLES:
        copy_if_changed(work.linked(role), moddir / work.collection(role).name)
    if orig is not None:
        install_symvers_into(orig, kdir)
    if not (kdir / "Module.symvers").is_file():
        raise UserError(f"{kdir} has no Module.symvers: build the kernel with "
                        "'make modules' first")
    exported = exported_symbols(kdir)
    for role in ROLES:
        check_loader_symbols(work.linked(role), exported, role)
    run(kbuild_argv(kdir, moddir.resolve(), update_id, jobs, make_vars), verbose=verbose,
        what="building the update modules")
    kos = [moddir / module_file(update_id, role) for role in (PRIMARY, HELPER)]
    for ko in kos:
        if not ko.is_file():
            raise UserError(f"Kbuild did not produce {ko}")
    record = artifacts.ModulesRecord(update_id, kos[0].name, kos[1].name,
                                     file_sha256(kos[0]), file_sha256(kos[1]))
    write_if_changed(work.modules, artifacts.MODULES.dumps(record))
    return record


def built_modules(work: CreateLayout) -> tuple[str, Path, Path]:
    """(update id, primary .ko, helper .ko) of the last :func:`build` in ``work``."""
    rec = artifacts.MODULES.read(work.modules)
    return rec.update_id, work.kmod / rec.primary, work.kmod / rec.helper


def exported_symbols(tree: Path) -> set[str]:
    """Names in the pre tree's Module.symvers: what the module loader resolves by itself."""
    out = set()
    for line in (tree / "Module.symvers").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            out.add(parts[1])
    return out


# struct modversion_info (include/linux/module.h): unsigned long crc, then the
# name in MODULE_NAME_LEN = 64 - sizeof(unsigned long) bytes.
MODVERSION_ENTRY = 64


def module_versions(ko: Path) -> dict[str, int]:
    """A .ko's ``__versions`` section: imported name -> CRC; empty without MODVERSIONS."""
    elf = read_object(ko)
    out = {}
    for sec in elf.sections_named("__versions"):
        data = sec.data
        for off in range(0, len(data) - MODVERSION_ENTRY + 1, MODVERSION_ENTRY):
            crc = int.from_bytes(data[off:off + 8], "little")
            name = data[off + 8:off + MODVERSION_ENTRY].split(b"\0", 1)[0].decode()
            if name:
                out[name] = crc
    return out


def module_vermagic(ko: Path) -> str | None:
    """The ``vermagic=`` string of a .ko's ``.modinfo``; None when it has none."""
    for sec in read_object(ko).sections_named(".modinfo"):
        for field in sec.data.split(b"\0"):
            if field.startswith(b"vermagic="):
                return field[len(b"vermagic="):].decode(errors="replace")
    return None


def check_module_against_target(ko: Path, needed: set[str],
                                 exports: dict[str, symbolmap.Export] | None,
                                 symvers_name: str, release: str | None) -> None:
    """The module loader's own checks, at create time: UserError naming the symbol.

    With ``exports`` (the target's Module.symvers): every symbol ``ko``
    imports from the kernel (``needed``) is exported, and each CRC in its
    ``__versions`` equals Module.symvers'. With ``release``: the vermagic's
    first word is the target's ``uname -r`` (include/linux/vermagic.h).
    """
    if release is not None:
        magic = module_vermagic(ko) or ""
        if magic.split(" ", 1)[0] != release:
            raise UserError(f"{ko.name}: vermagic {magic!r} is not for the target's "
                            f"kernel.release {release}")
    if exports is None:
        return
    missing = sorted(needed - exports.keys())
    if missing:
        raise UserError(f"{ko.name} imports {missing[0]}, which {symvers_name} does not "
                        f"export ({len(missing)} missing)")
    for name, crc in sorted(module_versions(ko).items()):
        want = exports.get(name)
        if want is None:
            raise UserError(f"{ko.name} has a CRC for {name}, which {symvers_name} does not "
                            "export")
        if want.crc != crc:
            raise UserError(f"{ko.name}: CRC of {name} is {crc:#010x} but {symvers_name} "
                            f"says {want.crc:#010x}: the modules were not built against the "
                            "target's Module.symvers")


def rmsyms_check(work: CreateLayout, kdir: Path, orig: Path | None = None) -> dict:
    """The seed's rmsyms: no module may need an unexported symbol from the module loader.

    kmodsrc reaches unexported symbols through its imports table, resolved at
    load time like any other, so nothing is left to strip; this proves it.
    With ``orig`` (ORIG_CONFIG) holding Module.symvers and/or kernel.release,
    also :func:`check_module_against_target` for both modules.
    Writes ``work.rmsyms`` (module file name -> its undefined symbols).
    """
    exported = exported_symbols(kdir)
    release, exports, symvers_name = None, None, ""
    if orig is not None:
        release = read_release(orig)
        target = orig / symbolmap.MODULE_SYMVERS
        if target.is_file():
            symvers_name = str(target)
            exports = symbolmap.parse_symvers(target.read_text(), symvers_name)
    out = {}
    _uid, *kos = built_modules(work)
    for ko in kos:
        needed = undefined_symbols(ko)
        unexported = sorted(needed - exported)
        if unexported:
            raise UserError(f"{ko.name} needs unexported kernel symbols: "
                            f"{', '.join(unexported[:8])}")
        check_module_against_target(ko, needed, exports, symvers_name, release)
        out[ko.name] = sorted(needed)
    write_json(work.rmsyms, out)
    return {"checked": len(out)}
