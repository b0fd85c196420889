# SPDX-License-Identifier: GPL-2.0-only
"""The create stages driven directly, in a private work layout, as a test or tool would.

The graph wraps these same functions with paths from Settings; here they run on
objects compiled from the unit fixtures, from objdiff up to the linked
collections and modcommon.auto.h (Kbuild needs a kernel: the integration tier).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ksplice_tasks import artifacts, names
from ksplice_tasks.errors import UserError
from ksplice_tasks.obj.elfread import read_object, undefined_symbols
from ksplice_tasks.stages import collect, extract, kmod
from ksplice_tasks.stages.layout import CreateLayout, ObjectPaths, object_key, state_layout

REL = "lib/changed_body.o"
SYSTEM_MAP = "ffffffff81000000 T _text\nffffffff81001000 T _printk\nffffffff81002000 T f\n"


def test_layout_names_no_update_id(tmp_path: Path) -> None:
    state = state_layout(tmp_path / "orig")
    assert state.root == tmp_path / "orig" / ".ksplice"
    assert state.doit_db.name == "doit-db.json" and state.pre_stamp.name == "pre-build.json"
    assert state.log("post-build") == state.root / "logs" / "post-build.log"
    work = state.create
    assert work.object(REL) == ObjectPaths(work.root / "objects" / object_key(REL))
    assert object_key(REL) == "lib__changed_body.o"
    paths = [work.diffext_patch, work.post_patch, work.post_build, work.rmsyms, work.modcommon,
             work.modules, *(f(r) for r in names.ROLES
                             for f in (work.collection, work.tables_json, work.linked))]
    assert all(p.is_relative_to(state.root) for p in paths)
    assert len(set(paths)) == len(paths)
    with pytest.raises(ValueError, match="role"):
        work.collection("other")


def test_stage_functions_on_a_private_layout(
        fixture_pair: Callable[[str], tuple[Path, Path]], tmp_path: Path) -> None:
    pre, post = fixture_pair("changed_body")
    work = CreateLayout(tmp_path / "create")
    out = work.object(REL)

    diff = extract.diff_object(pre, post, REL, out, None, "")
    assert (diff.changed, diff.keep, diff.empty) == (["f"], ["f"], False)
    assert artifacts.DIFF.read(out.diff) == diff

    rec = extract.extract_object(pre, post, REL, out)
    assert artifacts.RECORDS.read(out.records) == rec
    assert rec.tag == names.object_tag(REL)
    post_f = names.tagged_name("f", rec.tag, names.POST)
    assert post_f in {z.name for z in rec.primary_sizes}
    assert names.global_alias(post_f) in {s.name for s in read_object(out.primary).symbols}
    helper_names = {names.parse_tagged(z.name) for z in rec.helper_sizes}
    assert names.TaggedName("f", rec.tag, names.PRE) in helper_names

    assert collect.collect([out], work) == {"changed": ["f"], "new": []}
    primary = collect.TABLES.read(work.tables_json(names.PRIMARY))
    assert [(p.oldname, p.replacement) for p in primary.patches] == [
        ("f", names.global_alias(post_f))]
    assert ("f", names.global_alias(post_f)) in {(z.name, z.pointer) for z in primary.sizes}
    assert primary.imports == []  # the module build adds the kernel side's own

    smap = tmp_path / "System.map"
    smap.write_text(SYSTEM_MAP)
    kmod.write_tables(work, smap)
    assert all(f"\"{n}\"" in work.tables_asm(names.PRIMARY).read_text()
               for n in kmod.PRIMARY_IMPORTS)
    kmod.assemble_tables(work)
    for role in names.ROLES:
        assert not kmod.table_symbols(kmod.module_tables(work, role)) & undefined_symbols(
            work.linked(role))
    header = kmod.write_modcommon(work, smap, "abcd1234").read_text()
    assert '#define KSPLICE_ID "abcd1234"' in header
    with pytest.raises(ValueError, match="8 characters"):
        kmod.write_modcommon(work, smap, "BAD")


def test_collect_refuses_when_nothing_is_left(
        fixture_pair: Callable[[str], tuple[Path, Path]], tmp_path: Path) -> None:
    pre, post = fixture_pair("line_only")
    work = CreateLayout(tmp_path / "create")
    out = work.object(REL)
    extract.diff_object(pre, post, REL, out, None, "")
    assert extract.extract_object(pre, post, REL, out).empty
    with pytest.raises(UserError, match="only __LINE__ constants changed"):
        collect.collect([out], work)


def test_discarded_code_stays_out_of_the_primary(
        fixture_pair: Callable[[str], tuple[Path, Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """__init code the running kernel freed is neither carried nor patched (modpost
    would see the primary's init sections; their tables could need unresolvable code)."""
    pre, post = fixture_pair("init_and_body")
    work = CreateLayout(tmp_path / "create")
    out = work.object(REL)
    diff = extract.diff_object(pre, post, REL, out, None, "")
    assert sorted(diff.changed) == ["g", "my_setup"]
    assert extract.discarded_functions(read_object(post), diff.keep) == {"my_setup"}
    rec = extract.extract_object(pre, post, REL, out)
    assert not [s.name for s in read_object(out.primary).sections.values()
                if s.name.startswith(".init")]
    assert [names.parse_tagged(z.name).name for z in rec.primary_sizes] == ["g"]
    assert collect.collect([out], work) == {"changed": ["g"], "new": []}
    assert "ignoring changes to code that has already run and been freed" \
        " (__init/__exit): my_setup" in capsys.readouterr().out


def test_static_functions_of_two_objects_get_their_objects_labels(
        fixture_pair: Callable[[str], tuple[Path, Path]], tmp_path: Path) -> None:
    """Two objects each with a changed static helper(): shared case 12's shape.

    The kernel side tells the two running copies apart by label only
    (kmodsrc/runpre.c): each object's static symbols, and the relocations
    against them, carry that object's tag; global ones keep their name.
    """
    pre, post = fixture_pair("shared_static_name")
    work = CreateLayout(tmp_path / "create")
    rels = ["fs/proc/base.o", "fs/proc/fd.o"]
    outs = []
    for rel in rels:
        out = work.object(rel)
        extract.diff_object(pre, post, rel, out, None, "")
        extract.extract_object(pre, post, rel, out)
        outs.append(out)
    collect.collect(outs, work)
    tags = [names.object_tag(r) for r in rels]
    labels = {f"helper____{t}" for t in tags}
    primary = collect.TABLES.read(work.tables_json(names.PRIMARY))
    assert {(p.oldname, p.label) for p in primary.patches} == {("helper", x) for x in labels}
    helper = collect.TABLES.read(work.tables_json(names.HELPER))
    assert {(z.name, z.label) for z in helper.sizes} == (
        {("helper", x) for x in labels} | {("api_a", "api_a")})
    calls = {r.label for r in helper.relocs if r.symbol == "helper"}
    assert calls == labels
    assert all(r.label == r.symbol for r in helper.relocs if r.symbol == "_printk")
