# SPDX-License-Identifier: GPL-2.0-only
"""The passes, each output through readelf, ld -r and link-and-run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import CASES, FIXTURES, expectation
from oracles import driver, ld_r, link_and_run, readelf_clean

from ksplice_tasks.obj import objmanip
from ksplice_tasks.obj.elfread import SHN_UNDEF, STB_GLOBAL, read_object
from ksplice_tasks.obj.elfwrite import write_object
from ksplice_tasks.obj.objdiff import diff_objects
from ksplice_tasks.obj.objmanip import (
    RelocRecord,
    globalize,
    keep_helper,
    keep_primary,
    restore_relocs,
    rmsyms,
    sizelist,
)

TAG = "____0_t3stk1d0"
RUNNABLE = [c for c in CASES if "refused" not in expectation(c)]


def _globalized(tmp: Path, obj: Path, name: str) -> Path:
    """The "running kernel": the object with its local symbols made global."""
    syms = {s.name for s in read_object(obj).symbols
            if s.name and s.type in (1, 2) and s.bind == 0}
    out = tmp / name
    subprocess.run(["objcopy", *[f"--globalize-symbol={s}" for s in sorted(syms)],
                    str(obj), str(out)], check=True)
    return out


@pytest.mark.parametrize("case", RUNNABLE)
def test_keep_primary_links_and_runs_like_post(case, fixture_pair, stubs_o, tmp_path):
    pre, post = fixture_pair(case)
    d = diff_objects(pre, post)
    prim, recs = keep_primary(read_object(post), d.keep, TAG, "_post", d.renames, d.new_data)
    prim, aliases = globalize(prim, TAG + "_post")
    out = tmp_path / "primary.o"
    write_object(prim, out)
    readelf_clean(out)
    ld_r(tmp_path, out)
    assert all(isinstance(r, RelocRecord) for r in recs)
    kept_funcs = {s.name for s in prim.symbols if s.type == 2 and s.bind != STB_GLOBAL
                  or (s.type == 2 and not s.name.endswith("_global"))}
    assert kept_funcs == {n + TAG + "_post" for n in d.keep} | {
        s for s in kept_funcs if ".cold" in s}
    # Nothing left points outside the kept object except undefined table users.
    assert not any(prim.symbols[r.sym].shndx == SHN_UNDEF
                   for k, rl in prim.relocs.items() if prim.sections[k].is_exec
                   and not prim.sections[k].name.startswith(".altinstr")
                   for r in rl)
    # Link-and-run: new code + records resolved against the pre object must
    # behave exactly like the post object.
    restored = tmp_path / "restored.o"
    write_object(restore_relocs(prim, recs), restored)
    readelf_clean(restored)
    # Line-only functions are deliberately not replaced: they differ in the
    # line numbers they print, nothing else.
    run = [f for f in expectation(case)["run"] if f not in d.line_only]
    # The driver calls the original names; like ksplice, each changed pre
    # function's entry is overwritten with a jmp to its replacement.
    calls_new = [(f, f if f not in d.new else f + TAG + "_post_global") for f in run]
    got = link_and_run(tmp_path, "patched", [driver(tmp_path, "dnew", calls_new), restored,
                                             _globalized(tmp_path, pre, "kernel.o"), stubs_o],
                       redirect={f: f + TAG + "_post_global" for f in d.changed})
    want = link_and_run(tmp_path, "post", [driver(tmp_path, "dref", [(f, f) for f in run]),
                                           post, stubs_o])
    assert got == want
    chg = [(f, f) for f in run if f in d.changed]
    if chg:  # and the change is visible, so the comparison above means something
        before = link_and_run(tmp_path, "pre", [driver(tmp_path, "dc", chg), pre, stubs_o])
        after = link_and_run(tmp_path, "post2", [driver(tmp_path, "dc", chg), post, stubs_o])
        assert before != after
    for n in d.keep:
        assert n + TAG + "_post_global" in aliases


def _exe_symbols(exe: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(exe)], capture_output=True, text=True, check=True).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms.setdefault(parts[2], int(parts[0], 16))
    return syms


def _exe_bytes(exe: Path, addr: int, size: int) -> bytes:
    from elftools.elf.elffile import ELFFile
    with open(exe, "rb") as f:
        elf = ELFFile(f)
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= addr < seg["p_vaddr"] + \
                    seg["p_filesz"]:
                return seg.data()[addr - seg["p_vaddr"]:addr - seg["p_vaddr"] + size]
    raise AssertionError(f"{addr:#x} not in the executable")


@pytest.mark.parametrize("case", RUNNABLE)
def test_keep_helper_matches_running_code(case, fixture_pair, stubs_o, tmp_path):
    """Run-pre matching, emulated: the helper's code equals the linked pre code
    outside the recorded fields, and each field decodes to its symbol."""
    pre, _post = fixture_pair(case)
    helper, recs = keep_helper(read_object(pre), TAG, "_pre")
    helper, _ = globalize(helper, TAG + "_pre")
    out = tmp_path / "helper.o"
    write_object(helper, out)
    readelf_clean(out)
    ld_r(tmp_path, out)
    assert not helper.relocs
    in_pre = {s.name for s in read_object(pre).symbols if s.type == 2}
    run = [f for f in expectation(case)["run"] if f in in_pre]
    exe_out = link_and_run(tmp_path, "pre", [driver(tmp_path, "d", [(f, f) for f in run]),
                                             pre, stubs_o])
    assert exe_out
    syms = _exe_symbols(tmp_path / "pre")
    by_sec = {}
    for s in helper.symbols:
        if s.type == 2 and s.in_section and not s.name.endswith("_global"):
            orig = s.name[:-len(TAG + "_pre")]
            by_sec.setdefault(s.shndx, syms[orig] - s.value)
    checked = 0
    for shndx, sec in helper.sections.items():
        if not sec.is_exec or not sec.size:
            continue
        base = by_sec[shndx]
        running = bytearray(_exe_bytes(tmp_path / "pre", base, sec.size))
        mine = bytearray(sec.data)
        for r in (r for r in recs if r.section == sec.name):
            field = int.from_bytes(running[r.offset:r.offset + r.size], "little",
                                   signed=r.signed)
            value = field - r.addend + (base + r.offset if r.pcrel else 0)
            if r.symbol in syms:
                assert value == syms[r.symbol], (r, hex(value))
                checked += 1
            running[r.offset:r.offset + r.size] = bytes(r.size)
            mine[r.offset:r.offset + r.size] = bytes(r.size)
        assert running == mine
    assert checked > 0


def test_records_are_data(fixture_pair):
    pre, post = fixture_pair("string_literal")
    _o, recs = keep_primary(read_object(post), ["f"], TAG)
    printk = [r for r in recs if r.symbol == "printk"]
    assert len(printk) == 1
    r = printk[0]
    assert (r.pcrel, r.size, r.addend, r.signed) == (True, 4, -4, True)
    assert r.section == ".text.f" + TAG + "_post" and r.function == "f" + TAG + "_post"
    assert {x.symbol for x in recs} == {"__fentry__", "printk"}  # the string is kept


def test_static_local_records_use_running_names(fixture_pair):
    pre, post = fixture_pair("static_local")
    d = diff_objects(pre, post)
    _o, recs = keep_primary(read_object(post), ["b"], TAG, "_post", d.renames)
    pre_syms = {s.name for s in read_object(pre).symbols}
    data = [r for r in recs if r.symbol.startswith("count.")]
    assert data and all(r.symbol in pre_syms for r in data)


def test_shared_static_names_stay_apart(fixture_pair, compile_c, stubs_o, tmp_path):
    pre, post = fixture_pair("shared_static_name")
    other = compile_c(FIXTURES / "shared_static_name" / "other.c", "other", "other")
    outs = []
    for i, (obj, funcs) in enumerate([(post, ["helper", "api_a"]),
                                      (other, ["helper", "api_b"])]):
        tag = f"____{i}_t3stk1d0"
        o, recs = keep_primary(read_object(obj), funcs, tag)
        o, _ = globalize(o, tag + "_post")
        path = tmp_path / f"p{i}.o"
        write_object(restore_relocs(o, recs), path)
        outs.append(path)
    linked = ld_r(tmp_path, *outs)
    names = {s.name for s in read_object(linked).symbols}
    assert {"helper____0_t3stk1d0_post_global", "helper____1_t3stk1d0_post_global"} <= names
    got = link_and_run(tmp_path, "both", [
        driver(tmp_path, "d", [("a", "api_a____0_t3stk1d0_post_global"),
                               ("b", "api_b____1_t3stk1d0_post_global")]), linked, stubs_o])
    assert "a(1)=24" in got and "b(1)=-27" in got


def test_kernel_tables_follow_kept_code(compile_c, tmp_path):
    obj_path = compile_c(FIXTURES / "tables.c", "tables", "tables")
    obj = read_object(obj_path)
    full = {s.name: s.size for s in obj.sections.values()}
    prim, recs = keep_primary(obj, ["keep_me"], TAG)
    got = {s.name: s.size for s in prim.sections.values()}
    assert got["__bug_table"] == full["__bug_table"] // 2 == 12
    assert got["__ex_table"] == full["__ex_table"] // 2 == 12
    assert got[".altinstructions"] == full[".altinstructions"] // 2 == 12
    assert ".text.drop_me" + TAG + "_post" not in got
    out = tmp_path / "t.o"
    write_object(prim, out)
    readelf_clean(out)
    ld_r(tmp_path, out)
    text = [k for k, s in prim.sections.items() if s.name == ".text.keep_me" + TAG + "_post"]
    for name in ("__bug_table", "__ex_table", ".altinstructions"):
        k = next(k for k, s in prim.sections.items() if s.name == name)
        targets = {prim.symbols[r.sym].shndx for r in prim.relocs[k]}
        assert text[0] in targets


def test_sizelist(fixture_pair):
    _pre, post = fixture_pair("cold_part")
    o, _ = keep_primary(read_object(post), ["f"], TAG)
    o, _ = globalize(o, TAG + "_post")
    _same, sizes = sizelist(o)
    names = {s.name: s for s in sizes}
    assert set(names) == {"f" + TAG + "_post", "f.cold" + TAG + "_post"}
    f = next(s for s in o.symbols if s.name == "f" + TAG + "_post")
    assert names["f" + TAG + "_post"].size == f.size > 0


def test_globalize_adds_global_aliases(fixture_pair):
    _pre, post = fixture_pair("changed_body")
    o, _ = keep_primary(read_object(post), ["f"], TAG)
    n_before = len(o.symbols)
    g, added = globalize(o, TAG + "_post")
    assert len(g.symbols) == n_before + len(added)
    assert ".text.f" + TAG + "_post_global" in added and "f" + TAG + "_post_global" in added
    for s in g.symbols[n_before:]:
        assert s.bind == STB_GLOBAL and s.in_section


def test_rmsyms(compile_c, stubs_o, tmp_path):
    src = tmp_path / "mod.c"
    src.write_text('#include "kernelish.h"\nextern int secret_fn(int);\n'
                   'int f(int x) { return secret_fn(x) + printk("x"); }\n')
    secret = tmp_path / "secret.c"
    secret.write_text("int secret_fn(int x) { return x * 11; }\n")
    mod = compile_c(src, "mod", "mod")
    sec_o = compile_c(secret, "secret", "secret")
    obj = read_object(mod)
    out_obj, recs = rmsyms(obj, ["secret_fn"])
    assert [r.symbol for r in recs] == ["secret_fn"]
    assert recs[0].section == ".text.f" and recs[0].function == "f" and recs[0].pcrel
    assert "secret_fn" not in {s.name for s in out_obj.symbols}
    out = tmp_path / "mod-rm.o"
    write_object(out_obj, out)
    readelf_clean(out)
    ld_r(tmp_path, out)
    r = subprocess.run(["gcc", "-no-pie", "-o", tmp_path / "x",
                        driver(tmp_path, "d", [("f", "f")]), out, sec_o, stubs_o],
                       capture_output=True)
    assert r.returncode == 0  # links: nothing refers to secret_fn any more
    back = tmp_path / "mod-back.o"
    write_object(restore_relocs(out_obj, recs), back)
    want = link_and_run(tmp_path, "a", [driver(tmp_path, "d", [("f", "f")]), mod, sec_o,
                                        stubs_o])
    got = link_and_run(tmp_path, "b", [driver(tmp_path, "d", [("f", "f")]), back, sec_o,
                                       stubs_o])
    assert got == want


def test_cli_keep_primary(fixture_pair, tmp_path, capsys):
    _pre, post = fixture_pair("switch_table")
    out = tmp_path / "o.o"
    assert objmanip.main([str(post), str(out), "keep-primary", TAG, "_post", "sw"]) == 0
    lines = capsys.readouterr().out.splitlines()
    import json
    recs = [json.loads(x) for x in lines]
    assert {r["symbol"] for r in recs} == {"__fentry__", "printk"}
    readelf_clean(out)
    assert objmanip.main([str(post), "-", "keep-primary", TAG, "_post", "nosuch"]) == 1
    assert capsys.readouterr().err.startswith("ksplice-objmanip: error: ")


# -- kernel tables the module loader applies to the primary (issue 10, kind 4) -----------

def _primary_tables(compile_c):
    return read_object(compile_c(FIXTURES / "primary_tables.c", "ptables", "primary_tables"))


def _relocs_of(obj, section: str) -> list[str]:
    k = next(k for k, s in obj.sections.items() if s.name == section)
    return [obj.symbols[r.sym].name or obj.sections[obj.symbols[r.sym].shndx].name
            for r in obj.relocs.get(k, [])]


def test_alternative_relocations_stay_for_the_module_loader(compile_c, tmp_path):
    """apply_alternatives() copies the replacement over the original at load, before the
    ksplice core writes anything: both calls stay loader relocations, no record names
    .altinstr_replacement, and the replacements of entries not carried are left out."""
    obj = _primary_tables(compile_c)
    prim, recs = keep_primary(obj, ["alt_exported"], TAG)
    assert _relocs_of(prim, ".altinstr_replacement") == ["fast_fn"]
    assert "slow_fn" in _relocs_of(prim, ".text.alt_exported" + TAG + "_post")
    assert not [r for r in recs if r.section == ".altinstr_replacement"], recs
    assert not [r for r in recs if r.symbol in ("slow_fn", "fast_fn", "other_fn")], recs
    out = tmp_path / "alt.o"
    write_object(prim, out)
    readelf_clean(out)
    ld_r(tmp_path, out)


def test_alternative_needing_a_local_target_is_refused(compile_c):
    """A replacement calling a local function the update does not carry cannot be
    resolved by the loader: refused naming the function, never left unresolved."""
    obj = _primary_tables(compile_c)
    with pytest.raises(objmanip.ObjmanipError, match=r"alternative at alt_local\+0x5 "
                       r"\(\.altinstr_replacement at 0xb\).*local_fn"):
        keep_primary(obj, ["alt_local"], TAG)
    keep_primary(obj, ["alt_local", "local_fn"], TAG)  # carried along: resolvable


def _jump_table(prim):
    return next(s for s in prim.sections.values()
                if s.name.startswith(objmanip.KSPLICE_JUMP_TABLE))


@pytest.mark.parametrize(("function", "key"), [("jump_extern", "ext_key"),
                                               ("jump_local", "local_key")])
def test_jump_label_entries_move_out_of_the_loaders_table(compile_c, function, key):
    """Every jump entry about kept code moves to the writable __ksplice_jump_table
    (the loader never sees it; kmodsrc/patch.c registers it), its code and target
    fields stay loader relocations into the kept code, and its key - exported or
    the running kernel's own data - becomes a ksplice relocation record, PC64 with
    the entry's flag bits in the addend.  Never refused, never dropped."""
    obj = _primary_tables(compile_c)
    prim, records = keep_primary(obj, [function], TAG)
    assert not any(s.name == "__jump_table" for s in prim.sections.values())
    jt = _jump_table(prim)
    assert jt.name == f"{objmanip.KSPLICE_JUMP_TABLE}{TAG}_post"
    assert jt.size == 16 and jt.flags & 0x3 == 0x3  # SHF_WRITE | SHF_ALLOC
    left = _relocs_of(prim, jt.name)
    assert key not in left and len(left) == 2  # code and target
    [rec] = [r for r in records if r.section == jt.name]
    assert (rec.symbol, rec.offset, rec.pcrel, rec.size, rec.addend) == (key, 8, True, 8, 0)


def test_jump_label_key_in_kept_data_stays_for_the_loader(compile_c):
    """A key the update itself carries (new data) is resolvable by the loader."""
    obj = _primary_tables(compile_c)
    prim, records = keep_primary(obj, ["jump_local"], TAG, new_data=["local_key"])
    jt = _jump_table(prim)
    assert not [r for r in records if r.section == jt.name]
    assert len(_relocs_of(prim, jt.name)) == 3


def test_return_site_in_a_carried_replacement_is_carried(compile_c):
    """apply_returns() rewrites a return thunk jump inside a replacement before
    apply_alternatives() copies it: the .return_sites entry of a carried alternative's
    replacement comes along (it used to be dropped silently); the entry in the
    replacement of an alternative not carried (relocation stripped) stays out."""
    obj = _primary_tables(compile_c)
    prim, _ = keep_primary(obj, ["alt_ret"], TAG)
    rs = next(s for s in prim.sections.values() if s.name == ".return_sites")
    assert rs.size == 4
    assert _relocs_of(prim, ".return_sites") == [".altinstr_replacement"]
    assert _relocs_of(prim, ".altinstr_replacement") == ["__x86_return_thunk"]
    repl = next(k for k, s in prim.sections.items() if s.name == ".altinstr_replacement")
    [site] = prim.relocs[next(k for k, s in prim.sections.items()
                              if s.name == ".return_sites")]
    [thunk] = prim.relocs[repl]
    assert site.addend + prim.symbols[site.sym].value == thunk.offset - 1  # the e9


def test_exception_fixup_outside_the_update_is_refused(compile_c):
    """A user access whose fixup is not carried would oops on a fault: refused."""
    obj = _primary_tables(compile_c)
    with pytest.raises(objmanip.ObjmanipError,
                       match=r"__ex_table entry about ex_elsewhere\+0x5: its fixup points "
                             r"at .*fixup_elsewhere"):
        keep_primary(obj, ["ex_elsewhere"], TAG)
    prim, _ = keep_primary(obj, ["ex_elsewhere", "fixup_elsewhere"], TAG)
    assert next(s for s in prim.sections.values() if s.name == "__ex_table").size == 12


def test_static_calls_go_through_the_trampoline(compile_c):
    """The inline static-call site is not carried (its key is mostly unexported, and the
    loader would rewrite the call before ksplice writes it): the call to the trampoline
    becomes a record the ksplice core resolves, and modpost never sees the key."""
    obj = _primary_tables(compile_c)
    prim, recs = keep_primary(obj, ["static_call_user"], TAG)
    assert ".static_call_sites" not in {s.name for s in prim.sections.values()}
    assert "__SCK__tp_func_demo" not in {s.name for s in prim.symbols}
    assert [r.symbol for r in recs if r.symbol.startswith("__SC")] == ["__SCT__tp_func_demo"]


def test_static_cpu_has_slow_path_is_carried_block_by_block(compile_c, tmp_path):
    """_static_cpu_has() jumps from an alternative's original instruction to a block in
    .altinstr_aux: the kept function's block comes along with loader relocations (the
    capability byte, the jumps back), the other function's block loses its relocations,
    and no record names .altinstr_aux (which the ksplice core could not resolve)."""
    obj = _primary_tables(compile_c)
    prim, recs = keep_primary(obj, ["cpu_has_user"], TAG)
    kept = ".text.cpu_has_user" + TAG + "_post"
    assert sorted(_relocs_of(prim, ".altinstr_aux")) == sorted(["cpu_caps", kept, kept])
    assert ".altinstr_aux" in _relocs_of(prim, kept)
    assert not [r for r in recs if ".altinstr" in r.symbol or ".altinstr" in r.section], recs
    out = tmp_path / "aux.o"
    write_object(prim, out)
    readelf_clean(out)
    ld_r(tmp_path, out)
