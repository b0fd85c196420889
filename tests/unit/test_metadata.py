# SPDX-License-Identifier: GPL-2.0-only
"""The .ksplice.* table emitter: System.map parsing, assembly read back, C layout cross-check."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from ksplice_tasks.encode import ksplice_tables as md
from ksplice_tasks.errors import UserError
from ksplice_tasks.stages import kmod

SYSTEM_MAP = """\
0000000000000000 D __per_cpu_start
000000000001ac00 D current_task
ffffffff81000000 T _text
ffffffff81000000 T _stext
ffffffff8110b000 t loadavg_proc_show
ffffffff8103f635 t signal_pending
ffffffff8105fdb5 t signal_pending
ffffffff8105fdb5 t signal_pending
ffffffff8126d15b T _printk
ffffffff81a34dc0 D text_mutex
ffffffff81c20000 B _end
not a symbol line
"""

COLLECTION_C = """
int ksplice_test_fn____post(int x) { return x + 1; }
int ksplice_other____post(int x) { return x * 3; }
"""

R_X86_64_64 = 1


@pytest.fixture(scope="module")
def smap() -> dict[str, list[int]]:
    return md.parse_system_map(SYSTEM_MAP)


def test_parse_system_map(smap: dict[str, list[int]]) -> None:
    assert smap["loadavg_proc_show"] == [0xFFFFFFFF8110B000]
    assert smap["signal_pending"] == [0xFFFFFFFF8103F635, 0xFFFFFFFF8105FDB5]
    assert smap["current_task"] == [0x1AC00]
    assert smap["_text"] == smap["_stext"] == [0xFFFFFFFF81000000]
    assert "not" not in smap and "a" not in smap


def test_lookup_strips_section_prefixes(smap: dict[str, list[int]]) -> None:
    assert md.map_name(".text.loadavg_proc_show") == "loadavg_proc_show"
    assert md.map_name(".data.text_mutex") == "text_mutex"
    assert md.map_name(".text") == ".text"
    assert md.candidates(smap, ".text.signal_pending") == smap["signal_pending"]
    assert md.candidates(smap, "nope") == []
    assert md.unique_address(smap, "loadavg_proc_show") == 0xFFFFFFFF8110B000
    assert md.unique_address(smap, "signal_pending") == 0
    assert md.unique_address(smap, "nope") == 0


def test_modcommon(smap: dict[str, list[int]]) -> None:
    h = md.render_modcommon("abcd1234", smap)
    assert '#define KSPLICE_ID "abcd1234"' in h
    assert "#define KSPLICE_ID_TOKEN abcd1234" in h
    assert "#define KSPLICE_ANCHOR _printk" in h
    assert "#define KSPLICE_MAP_ANCHOR 0xffffffff8126d15bUL" in h
    assert "#define KSPLICE_MAP_TEXT 0xffffffff81000000UL" in h
    assert "#define KSPLICE_MAP_END 0xffffffff81c20000UL" in h
    # core text for run-pre matching: _stext, and _end where _etext is missing
    assert "#define KSPLICE_MAP_STEXT 0xffffffff81000000UL" in h
    assert "#define KSPLICE_MAP_ETEXT 0xffffffff81c20000UL" in h
    assert "#define KSPLICE_MAP_ETEXT 0xffffffff81800000UL" in md.render_modcommon(
        "abcd1234", {**smap, "_etext": [0xFFFFFFFF81800000]})
    with pytest.raises(ValueError):
        md.render_modcommon("ABCD1234", smap)
    with pytest.raises(ValueError):
        md.render_modcommon("abcd123", smap)
    with pytest.raises(ValueError, match="anchor"):
        md.render_modcommon("abcd1234", smap, anchor="signal_pending")


def test_primary_imports_are_added_once() -> None:
    t = kmod.with_primary_imports(md.ModuleTables(imports=[md.ImportInput("text_mutex"),
                                                            md.ImportInput("jiffies")]))
    names = [i.name for i in t.imports]
    assert names[:2] == ["text_mutex", "jiffies"]
    assert sorted(names) == sorted({"jiffies", *kmod.PRIMARY_IMPORTS})
    assert kmod.with_primary_imports(t) == t
    j = kmod.with_primary_imports(t, jump_labels=True)
    assert [i.name for i in j.imports] == names + [kmod.JUMP_IMPORT]


def test_checked_in_header_is_generated() -> None:
    text = (kmod.kmodsrc_dir() / md.HEADER_NAME).read_text()
    assert text == md.render_struct_header(), \
        "regenerate: python -m ksplice_tasks.encode.headers"


def test_struct_layout_matches_c(tmp_path: Path) -> None:
    """sizeof/offsetof from a compiled C program equal the Python description."""
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "ksplice_tables.h"',
             "int main(void) {"]
    for s in md.STRUCTS:
        lines.append(f'printf("{s.name} size %zu\\n", sizeof(struct {s.name}));')
        lines.append(f'printf("{s.name} align %zu\\n", _Alignof(struct {s.name}));')
        for f in s.fields:
            lines.append(f'printf("{s.name} {f.name} %zu %zu\\n", '
                         f"offsetof(struct {s.name}, {f.name}), "
                         f"sizeof(((struct {s.name} *)0)->{f.name}));")
    lines += ["return 0;", "}"]
    (tmp_path / "layout.c").write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run(["gcc", "-Wall", "-Werror", f"-I{kmod.kmodsrc_dir()}", "-o", str(exe),
                    str(tmp_path / "layout.c")], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    expect = []
    for s in md.STRUCTS:
        expect.append(f"{s.name} size {s.size}")
        expect.append(f"{s.name} align {s.align}")
        expect += [f"{s.name} {f.name} {off} {f.size}" for f, off in s.layout()]
    assert out.splitlines() == expect


def test_layout_rules() -> None:
    assert md.RELOC.size == 64 and md.RELOC.offset("nr_candidates") == 56
    assert md.PATCH.size == 48  # 44 bytes of fields, padded to 8
    for s in md.STRUCTS:
        assert s.size % 8 == 0
        assert all(off % f.size == 0 for f, off in s.layout())


def test_asm_string_escapes() -> None:
    assert md.asm_string('a"b\\c') == '"a\\042b\\134c"'
    assert md.asm_string("é") == '"\\303\\251"'
    assert md.asm_symbol(".text.foo____1_x_post_global") == ".text.foo____1_x_post_global"
    assert md.asm_symbol("foo-bar") == '"foo-bar"'
    with pytest.raises(ValueError):
        md.asm_symbol('a"b')


# -- assembled tables, read back -------------------------------------------------

def _gcc(args: list[str]) -> None:
    r = subprocess.run(["gcc", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("coll")
    (d / "coll.c").write_text(COLLECTION_C)
    _gcc(["-O2", "-mcmodel=kernel", "-fno-PIE", "-fno-pic", "-ffunction-sections",
          "-fdata-sections", "-c", "-o", str(d / "coll.o"), str(d / "coll.c")])
    return d / "coll.o"


SEC = ".text.ksplice_test_fn____post"
RELOCS = (
    md.RelocInput("loadavg_proc_show", SEC, 0x10, True, -4, 4, "ksplice_test_fn____post",
                  type=2, signed=True),
    md.RelocInput(".text.signal_pending", SEC, 0x20, True, -4, 4, "ksplice_test_fn____post",
                  type=4, signed=True, label="signal_pending____1a2b3c4d"),
    md.RelocInput("ksplice_no_such_symbol", ".text.ksplice_other____post", 0x3, False,
                  0x123456789, 8, "ksplice_other____post", type=1),
    md.RelocInput("loadavg_proc_show", SEC, 0x30, False, 0, 8, "ksplice_test_fn____post",
                  type=1),
)
TABLES = md.ModuleTables(
    relocs=RELOCS,
    sizes=(md.SizeInput("loadavg_proc_show", 0x5c, "ksplice_other____post"),),
    patches=(md.PatchInput("loadavg_proc_show", "ksplice_test_fn____post", flags=1),
             md.PatchInput("signal_pending", "ksplice_other____post",
                           label="signal_pending____1a2b3c4d")),
    imports=(md.ImportInput("text_mutex"), md.ImportInput("missing_import")),
)


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory, collection: Path,
           smap: dict[str, list[int]]) -> Path:
    d = tmp_path_factory.mktemp("tables")
    asm = kmod.write_tables_asm(d / "tables.s", TABLES, smap)
    obj = kmod.assemble(asm, d / "tables.o")
    out = kmod.link_tables(collection, obj, d / "collection.o.primary")
    kmod.check_linked(out, TABLES)
    return out


class Table:
    """A .ksplice.* table decoded from a relocatable object: fields, strings and pointers."""

    def __init__(self, elf: ELFFile, s: md.Struct) -> None:
        self.elf, self.struct = elf, s
        self.sec = elf.get_section_by_name(f".ksplice.{s.table}")
        self.data = self.sec.data()
        self.symtab = elf.get_section_by_name(".symtab")
        rela = elf.get_section_by_name(f".rela.ksplice.{s.table}")
        self.relocs = {}
        for r in rela.iter_relocations() if rela else ():
            assert r["r_info_type"] == R_X86_64_64
            self.relocs[r["r_offset"]] = (self.symtab.get_symbol(r["r_info_sym"]),
                                          r["r_addend"])

    def _target(self, off: int) -> tuple[str, int, object]:
        """(symbol or section name, addend, symbol) of the relocation at off."""
        sym, addend = self.relocs[off]
        if sym["st_info"]["type"] == "STT_SECTION":
            return self.elf.get_section(sym["st_shndx"]).name, addend, sym
        return sym.name, addend, sym

    def _read(self, secname: str, off: int, n: int | None) -> bytes:
        data = self.elf.get_section_by_name(secname).data()
        if n is None:
            return data[off:data.index(b"\0", off)]
        return data[off:off + n]

    def entries(self) -> list[dict[str, object]]:
        """Every entry before the terminator; asserts the terminator is all zero."""
        size = self.struct.size
        out = []
        n = 0
        while True:
            base = n * size
            raw = self.data[base:base + size]
            assert len(raw) == size, "table ends without a terminator"
            if not any(raw) and not any(base <= o < base + size for o in self.relocs):
                assert base + size == len(self.data), "data after the terminator"
                return out
            out.append(self._decode(base, raw))
            n += 1

    def _decode(self, base: int, raw: bytes) -> dict[str, object]:
        e: dict[str, object] = {}
        fmt = {8: "<Q", 4: "<I", 2: "<H", 1: "<B"}
        used = set()
        for f, off in self.struct.layout():
            (val,) = struct.unpack_from("<q" if f.kind == "s64" else fmt[f.size], raw, off)
            where = base + off
            if f.kind in ("str", "ptr", "cand") and where in self.relocs:
                assert val == 0, "RELA: the field itself holds nothing"
                used.add(where)
                name, addend, _sym = self._target(where)
                if f.kind == "str":
                    assert name == f".ksplice.{self.struct.table}_str"
                    e[f.name] = self._read(name, addend, None).decode()
                elif f.kind == "ptr":
                    assert addend == 0
                    e[f.name] = name
                else:
                    assert name == f".ksplice.{self.struct.table}_cand"
                    e[f.name] = ("cand", addend)
            else:
                e[f.name] = val
        for f, _off in self.struct.layout():
            if f.kind == "cand" and isinstance(e[f.name], tuple):
                raw_c = self._read(f".ksplice.{self.struct.table}_cand", e[f.name][1],
                                   8 * int(e["nr_candidates"]))  # type: ignore[arg-type]
                e[f.name] = list(struct.unpack(f"<{len(raw_c) // 8}Q", raw_c))
            elif f.kind == "cand":
                assert e[f.name] == 0 and e["nr_candidates"] == 0
                e[f.name] = []
        assert used == {o for o in self.relocs if base <= o < base + self.struct.size}
        return e


def _tables(path: Path) -> dict[str, list[dict[str, object]]]:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return {s.table: Table(elf, s).entries() for s in md.STRUCTS}


def test_tables_read_back(linked: Path, smap: dict[str, list[int]]) -> None:
    t = _tables(linked)
    lp = 0xFFFFFFFF8110B000
    sp = [0xFFFFFFFF8103F635, 0xFFFFFFFF8105FDB5]
    assert t["ksplice_relocs"] == [
        {"symbol": "loadavg_proc_show", "label": "loadavg_proc_show", "section": SEC,
         "section_addr": "ksplice_test_fn____post", "offset": 0x10, "addend": -4,
         "candidates": [lp], "nr_candidates": 1, "type": 2, "size": 4, "flags": 3},
        {"symbol": "signal_pending", "label": "signal_pending____1a2b3c4d", "section": SEC,
         "section_addr": "ksplice_test_fn____post", "offset": 0x20, "addend": -4,
         "candidates": sp, "nr_candidates": 2, "type": 4, "size": 4, "flags": 3},
        {"symbol": "ksplice_no_such_symbol", "label": "ksplice_no_such_symbol",
         "section": ".text.ksplice_other____post",
         "section_addr": "ksplice_other____post", "offset": 3, "addend": 0x123456789,
         "candidates": [], "nr_candidates": 0, "type": 1, "size": 8, "flags": 0},
        {"symbol": "loadavg_proc_show", "label": "loadavg_proc_show", "section": SEC,
         "section_addr": "ksplice_test_fn____post", "offset": 0x30, "addend": 0,
         "candidates": [lp], "nr_candidates": 1, "type": 1, "size": 8, "flags": 0},
    ]
    assert t["ksplice_sizes"] == [
        {"name": "loadavg_proc_show", "label": "loadavg_proc_show", "size": 0x5c,
         "thismod_addr": "ksplice_other____post", "candidates": [lp], "nr_candidates": 1,
         "flags": 0}]
    assert t["ksplice_patches"] == [
        {"oldname": "loadavg_proc_show", "label": "loadavg_proc_show",
         "replname": "ksplice_test_fn____post", "oldaddr": lp,
         "repladdr": "ksplice_test_fn____post", "flags": 1},
        {"oldname": "signal_pending", "label": "signal_pending____1a2b3c4d",
         "replname": "ksplice_other____post", "oldaddr": 0,
         "repladdr": "ksplice_other____post", "flags": 0}]
    assert t["ksplice_imports"] == [
        {"name": "text_mutex", "candidates": [0xFFFFFFFF81A34DC0], "nr_candidates": 1,
         "flags": 0},
        {"name": "missing_import", "candidates": [], "nr_candidates": 0, "flags": 0}]


def test_table_symbols_and_sections(linked: Path) -> None:
    with open(linked, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        for s in md.STRUCTS:
            (sym,) = symtab.get_symbol_by_name(s.table)
            assert sym["st_info"]["bind"] == "STB_GLOBAL"
            assert sym["st_value"] == 0
            sec = elf.get_section(sym["st_shndx"])
            assert sec.name == f".ksplice.{s.table}"
            assert sec["sh_addralign"] >= 8
            assert sym["st_size"] == sec["sh_size"]
            assert sec["sh_flags"] & 0x2 and not sec["sh_flags"] & 0x1  # alloc, not write
        assert kmod.undefined_symbols(linked) == set()


def test_empty_tables_are_just_terminators(tmp_path: Path, collection: Path,
                                           smap: dict[str, list[int]]) -> None:
    asm = kmod.write_tables_asm(tmp_path / "t.s", md.ModuleTables(), smap)
    obj = kmod.assemble(asm, tmp_path / "t.o")
    out = kmod.link_tables(collection, obj, tmp_path / "c.o")
    assert all(v == [] for v in _tables(out).values())
    with open(out, "rb") as f:
        elf = ELFFile(f)
        for s in md.STRUCTS:
            assert elf.get_section_by_name(f".ksplice.{s.table}")["sh_size"] == s.size


def test_strings_are_shared(smap: dict[str, list[int]]) -> None:
    asm = md.render_table(md.RELOC, list(RELOCS), smap)
    assert asm.count('.string "loadavg_proc_show"') == 1
    assert asm.count(f'.string "{SEC}"') == 1


def test_unlinked_anchor_is_refused(tmp_path: Path, collection: Path,
                                    smap: dict[str, list[int]]) -> None:
    bad = md.ModuleTables(relocs=(md.RelocInput("x", SEC, 0, False, 0, 8, "no_such_anchor"),))
    obj = kmod.assemble(kmod.write_tables_asm(tmp_path / "b.s", bad, smap), tmp_path / "b.o")
    out = kmod.link_tables(collection, obj, tmp_path / "b.linked")
    with pytest.raises(UserError, match="no_such_anchor"):
        kmod.check_linked(out, bad)


def test_bad_records_are_refused(smap: dict[str, list[int]]) -> None:
    with pytest.raises(ValueError, match="size"):
        md.render_table(md.RELOC, [md.RelocInput("x", SEC, 0, False, 0, 3, "a")], smap)
    with pytest.raises(TypeError):
        md.render_table(md.SIZE, [md.PatchInput("a", "b")], smap)
    with pytest.raises(ValueError, match="negative"):
        md.render_table(md.RELOC, [md.RelocInput("x", SEC, -1, False, 0, 8, "a")], smap)


def test_kbuild_argv() -> None:
    assert kmod.kbuild_argv(Path("/k"), Path("/m"), "abcd1234", 2) == [
        "make", "-C", "/k", "M=/m", "KSPLICE_ID=abcd1234", "-j2", "modules"]
    assert kmod.module_names("abcd1234") == ("ksplice-abcd1234.ko",
                                             "ksplice-abcd1234-helper.ko")


def test_relocs_from_pass_records() -> None:
    from ksplice_tasks.artifacts import RelocRecord

    rec = RelocRecord("foo", ".text.bar____1_x_post", 5, True, -4, 4, 4, True, "bar")
    assert md.relocs_from_records([rec]) == [
        md.RelocInput("foo", ".text.bar____1_x_post", 5, True, -4, 4,
                      ".text.bar____1_x_post_global", 4, True, "foo")]
    # a static target is labelled with its object's tag; a global one is not
    static = RelocRecord(".text.foo", ".text.bar____1a2b3c4d_post", 5, True, -4, 4, 4, True,
                         "bar", local=True)
    got = md.relocs_from_records([rec, static], tag="1a2b3c4d")
    assert [r.label for r in got] == ["foo", "foo____1a2b3c4d"]


def _reloc(symbol: str, label: str = "") -> md.RelocInput:
    return md.RelocInput(symbol, ".text.f____1234abcd_post", 4, True, -4, 4,
                         ".text.f____1234abcd_post_global", label=label)


def test_unresolvable_relocs_mirror_the_kernel_sides_order() -> None:
    """kmodsrc/patch.c ksplice_reloc_value: own new function, run-pre label, one map address."""
    smap = {"printk": [0x1000], "dup": [0x2000, 0x3000], "collide": [0x4000]}
    helper = md.ModuleTables(relocs=(_reloc("dup", "dup____1234abcd"),),
                             sizes=(md.SizeInput("seen_fn", 16, "p"),))
    primary = md.ModuleTables(
        relocs=(_reloc("printk"), _reloc("dup", "dup____1234abcd"), _reloc("seen_fn"),
                _reloc("new_fn"), _reloc("collide"), _reloc("patched_fn"),
                _reloc("other_file_fn"), _reloc("dup")),
        sizes=(md.SizeInput("new_fn", 8, "q"), md.SizeInput("collide", 8, "r"),
               md.SizeInput("patched_fn", 8, "s")),
        patches=(md.PatchInput("patched_fn", "s"),))
    assert md.own_new_functions(primary) == {"new_fn", "collide"}
    bad = md.unresolvable_relocs(primary, helper, smap)
    # patched_fn and other_file_fn: no map address, no run-pre value, no new function of
    # the update; dup without its label: two map addresses and run-pre never reads it
    assert [(r.symbol, r.label) for r in bad] == [("patched_fn", ""), ("other_file_fn", ""),
                                                  ("dup", "")]
    assert md.unresolvable_relocs(md.ModuleTables(), helper, smap) == []


def test_check_resolvable_names_the_symbol_and_the_function(tmp_path: Path) -> None:
    primary = md.ModuleTables(relocs=(_reloc("other_file_fn"), _reloc("another")))
    with pytest.raises(UserError) as e:
        kmod.check_resolvable(primary, md.ModuleTables(), {}, tmp_path / "System.map")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("the new code of f refers to other_file_fn, which neither the "
                          "running kernel (System.map) nor the update defines")
    assert msg.endswith("(2 such symbols: another, other_file_fn)")
    kmod.check_resolvable(md.ModuleTables(relocs=(_reloc("x"),)), md.ModuleTables(),
                          {"x": [1]}, tmp_path / "System.map")
