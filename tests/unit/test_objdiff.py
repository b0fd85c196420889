# SPDX-License-Identifier: GPL-2.0-only
"""objdiff against the fixture pairs, each with its exact expected result."""

from __future__ import annotations

import json

import pytest
from conftest import CASES, expectation

from ksplice_tasks.obj import objdiff
from ksplice_tasks.obj.elfread import read_object
from ksplice_tasks.obj.objdiff import ObjdiffRefusal, diff_objects, line_map_from_patch
from ksplice_tasks.obj.view import ObjectView


@pytest.mark.parametrize("case", CASES)
def test_fixture(case, fixture_pair):
    pre, post = fixture_pair(case)
    exp = expectation(case)
    if "refused" in exp:
        with pytest.raises(ObjdiffRefusal, match=exp["refused"]):
            diff_objects(pre, post)
        return
    d = diff_objects(pre, post)
    got = d.summary()
    assert got == {k: exp[k] for k in got}


def test_fixture_suite_is_large_enough():
    assert len(CASES) >= 15


@pytest.mark.parametrize("case", ["changed_body", "switch_table", "cold_part", "line_only"])
def test_object_against_itself_is_empty(case, fixture_pair):
    pre, _post = fixture_pair(case)
    d = diff_objects(pre, pre)
    assert d.summary() == {"changed": [], "new": [], "removed": [], "line_only": [],
                           "sections": []}


def test_cli_json(fixture_pair, capsys):
    pre, post = fixture_pair("new_function")
    assert objdiff.main([str(pre), str(post), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"changed": ["f"], "new": ["clamp"], "removed": [], "line_only": [],
                   "sections": [".text.clamp", ".text.f"]}


def test_cli_text(fixture_pair, capsys):
    pre, post = fixture_pair("removed_function")
    assert objdiff.main([str(pre), str(post)]) == 0
    out = capsys.readouterr().out
    assert "changed: f\n" in out and "removed: old_helper\n" in out


def test_cli_refusal_is_one_line(fixture_pair, capsys):
    pre, post = fixture_pair("data_change")
    assert objdiff.main([str(pre), str(post), "--json"]) == 1
    cap = capsys.readouterr()
    assert cap.out == ""
    lines = cap.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ksplice-objdiff: error: ")
    assert "'counter'" in lines[0]


def test_cli_bad_input(tmp_path, capsys):
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an elf")
    assert objdiff.main([str(junk), str(junk)]) == 1
    assert capsys.readouterr().err.startswith("ksplice-objdiff: error: ")


PATCH = """\
--- a/dir/x.c
+++ b/dir/x.c
@@ -1,3 +1,5 @@
+/* one */
+/* two */
 #include "kernelish.h"
 int f(int x) { return x; }
-int g(int x) { return x; }
+int g(int x) { return x + 1; }
"""


def test_line_map_from_patch():
    m = line_map_from_patch(PATCH, "dir/x.c")
    assert m is not None
    assert [m(1), m(2), m(3), m(10)] == [3, 4, None, 12]
    assert line_map_from_patch(PATCH, "other.c") is None


def test_line_map_decides_printk_line(fixture_pair):
    # Line-only fixture: every line moved down by two; a map that says so agrees,
    # a map that says nothing moved turns the printk line into a change.
    pre, post = fixture_pair("line_only")
    d = diff_objects(pre, post, line_map=lambda n: n + 2)
    assert d.line_only == ["f", "g", "h"] and d.changed == []
    d = diff_objects(pre, post, line_map=lambda n: n)
    assert set(d.changed) == {"f", "g", "h"}


def test_correlate_prefers_referrers():
    pre = ["count.0", "count.1"]
    post = ["count.0", "count.1", "count.2"]
    pre_refs = {"count.0": frozenset({"a"}), "count.1": frozenset({"b"})}
    post_refs = {"count.0": frozenset({"z"}), "count.1": frozenset({"a"}),
                 "count.2": frozenset({"b"})}
    m = objdiff.correlate(pre, post, pre_refs, post_refs)
    assert m["count.1"] == "count.0" and m["count.2"] == "count.1"
    assert "count.0" not in m


def test_static_locals_pair_by_their_functions(fixture_pair):
    pre, post = fixture_pair("static_local")
    d = diff_objects(pre, post)
    pv = ObjectView(read_object(pre))
    qv = ObjectView(read_object(post))
    owner_pre = {n: set(f) for n, f in pv.referrers().items() if n.startswith("count.")}
    owner_post = {n: set(f) for n, f in qv.referrers().items() if n.startswith("count.")}
    assert [owner_post[n] for n in d.new_data] == [{"z"}]
    for q, owners in owner_post.items():
        if q in d.new_data:
            continue
        p = d.renames.get(q, q)
        assert owner_pre[p] == owners


def test_every_data_refusal_is_named_at_once(compile_c, tmp_path, capsys):
    srcs = {}
    for side, body in (("pre", "int a = 1;\nint b[2] = {1, 2};\nint c;\n"),
                       ("post", "int a = 2;\nint b[3] = {1, 2, 3};\nint c;\n")):
        d = tmp_path / side
        d.mkdir()
        src = d / "twodata.c"
        src.write_text(body + "int f(int x) { return a + b[x] + c; }\n")
        srcs[side] = compile_c(src, "twodata_" + side, "twodata")
    with pytest.raises(ObjdiffRefusal) as exc:
        diff_objects(srcs["pre"], srcs["post"])
    assert sorted(exc.value.symbols) == ["a", "b"]
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1 and "'a'" in msg and "'b'" in msg and "'c'" not in msg
    assert "initial value" in msg and "size" in msg
    assert objdiff.main([str(srcs["pre"]), str(srcs["post"])]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "'a'" in err[0] and "'b'" in err[0]


def test_line_map_tells_apart_a_files_own_line_helper(fixture_pair):
    """hpet.c's hpet_print_config(): _print_config(__func__, __LINE__) gains three lines
    above its callers, whose line immediates move by three.  With the patch's line map
    they are line-only; without one an unknown callee is never trusted."""
    pre, post = fixture_pair("line_helper")
    d = diff_objects(pre, post, line_map=lambda n: n + 4 if n > 3 else n)
    assert d.changed == ["_print_config"] and d.line_only == ["resume", "set_state"]
    d = diff_objects(pre, post, line_map=lambda n: n)
    assert d.changed == ["_print_config", "resume", "set_state"]
    d = diff_objects(pre, post)
    assert d.changed == ["_print_config", "resume", "set_state"]


def test_every_const_refusal_is_named_at_once(compile_c, tmp_path):
    """/dev/null's shape: an ops table and a const device list pointing at it (used by
    __init code) both change; both are named, in one line."""
    common = ("struct fops { int (*read)(int); int (*fsync)(int); };\n"
              "struct memdev { const char *name; const struct fops *fops; };\n"
              "extern void reg(const struct memdev *d);\n"
              "static int rd(int x) { return x; }\nstatic int fs(int x) { return -x; }\n")
    tail = ("static const struct memdev devlist[] = { { \"null\", &null_fops } };\n"
            "__attribute__((section(\".init.text\"))) void init(void) { reg(devlist); }\n")
    srcs = {}
    for side, ops in (("pre", "{ .read = rd }"), ("post", "{ .read = rd, .fsync = fs }")):
        d = tmp_path / side
        d.mkdir()
        src = d / "twoconst.c"
        src.write_text(common + f"static const struct fops null_fops = {ops};\n" + tail)
        srcs[side] = compile_c(src, "twoconst_" + side, "twoconst")
    with pytest.raises(ObjdiffRefusal) as exc:
        diff_objects(srcs["pre"], srcs["post"])
    assert sorted(exc.value.symbols) == ["devlist", "null_fops"]
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1 and "function pointers" in msg and ".init.text" in msg
