# SPDX-License-Identifier: GPL-2.0-only
"""Data-layout changes are refused where the patch is applied (tree/datalayout.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import make_fake_kernel_tree, make_orig

from ksplice_tasks.errors import UserError
from ksplice_tasks.stages import patching
from ksplice_tasks.stages.inputs import resolve
from ksplice_tasks.tree import datalayout, snapshot

PRE = """/* a file */
struct foo {
\tint a;\t/* the a */
#ifdef CONFIG_X
\tint x;
#endif
\tstruct {
\t\tint in;
\t} nested;
};

typedef struct {
\tlong v;
} bar_t;

static struct {
\tint n;
} counters;

union u {
\tint i;
\tlong l;
} __packed;

enum e { E_A, E_B };

#define MK(n) struct n { int z; }

static int f(void)
{
\tstruct local {
\t\tint q;
\t} l = { 1 };
\treturn l.q + sizeof(struct foo);
}
"""


def names(pre: str, post: str) -> list[str]:
    return [c.what for c in datalayout.layout_changes(pre, post)]


def test_definitions_found_at_file_scope_only() -> None:
    got = [(d.name, d.line) for d in datalayout.type_defs(PRE)]
    assert got == [("struct foo", 2), ("struct (anonymous) bar_t", 12),
                   ("struct (anonymous) counters", 16), ("union u", 20)]


@pytest.mark.parametrize(("old", "new", "want"), [
    ("\tint a;\t/* the a */", "\tint a;\t/* the first a */", []),           # comment only
    ("\tint a;\t/* the a */", "\tint  a; ", []),                              # white space
    ("\tint a;\t/* the a */", "\tint a;\n\tint b;", ["struct foo"]),          # member added
    ("\tint a;\t/* the a */", "\tlong a;", ["struct foo"]),                   # member type
    ("\tint x;\n#endif", "\tint x;\n\tint y;\n#endif", ["struct foo"]),       # under #ifdef
    ("\t\tint in;", "\t\tint in, in2;", ["struct foo"]),                      # nested member
    ("\tlong v;", "\tint v;", ["struct (anonymous) bar_t"]),                  # typedef'd
    ("\tint n;\n} counters;", "\tint n, m;\n} counters;",
     ["struct (anonymous) counters"]),                                        # anonymous var
    ("} __packed;", "};", ["union u"]),                                       # attribute
    ("\t\tint q;", "\t\tlong q;", []),                                        # local type
    ("E_A, E_B", "E_A, E_C, E_B", []),                                        # enum values
    ("struct n { int z; }", "struct n { long z; }", []),                      # in a macro
    ("enum e {", "struct added {\n\tint k;\n};\n\nenum e {", []),              # new type
])
def test_changes(old: str, new: str, want: list[str]) -> None:
    assert old in PRE
    assert names(PRE, PRE.replace(old, new)) == want


def test_a_removed_type_is_not_a_change() -> None:
    assert names(PRE, PRE.replace("union u {\n\tint i;\n\tlong l;\n} __packed;\n", "")) == []


def test_a_size_taken_from_another_type() -> None:
    post = PRE.replace("sizeof(struct foo)", "sizeof(struct  bar)")
    got = datalayout.layout_changes(PRE, post)
    assert [(c.what, c.line) for c in got] == [
        ("sizeof(struct foo) becomes sizeof(struct bar)", 34)]
    assert datalayout.refusal("fs/x.c", got[0]) == (
        "data layout change: sizeof(struct foo) becomes sizeof(struct bar) (fs/x.c:34); "
        "a live update cannot change the layout of data the running kernel holds")
    # the size of an expression, or a type measured once more: ordinary code
    assert names(PRE, PRE.replace("sizeof(struct foo)", "sizeof(l)")) == []
    assert names(PRE, PRE.replace("sizeof(struct foo)",
                                  "sizeof(struct foo) + sizeof(struct bar)")) == []


def test_refusal_names_type_and_line() -> None:
    got = datalayout.layout_changes(PRE, PRE.replace("\tint a;", "\tint a, b;"))
    assert datalayout.refusal("net/x.c", got[0]).startswith(
        "data layout change: struct foo (net/x.c:2) changes; a live update cannot")


CACHE = Path(os.environ.get("KSPLICE_CACHE", Path.home() / ".cache" / "ksplice-py"))
CORPUS = CACHE / "corpus" / "170-176-debian" / "patches" / "net_core_net-procfs.patch"
OLD_TREE = CACHE / "debian" / "6.1.170-3" / "src" / "linux"


def test_the_debian_net_procfs_fix(tmp_path: Path) -> None:
    """Debian 6.1.170-3 -> 6.1.176-1, net/core/net-procfs.c: ptype's private size grows."""
    src = OLD_TREE / "net" / "core" / "net-procfs.c"
    if not (CORPUS.is_file() and src.is_file()):
        pytest.skip("no cached corpus patch or Debian 6.1.170-3 source")
    work = tmp_path / "net" / "core"
    work.mkdir(parents=True)
    (work / "net-procfs.c").write_bytes(src.read_bytes())
    subprocess.run(["patch", "-d", str(tmp_path), "-p1", "--batch", "-s", "-i", str(CORPUS)],
                   check=True)
    got = datalayout.layout_changes(src.read_text(), (work / "net-procfs.c").read_text())
    assert [c.what for c in got] == [
        "sizeof(struct seq_net_private) becomes sizeof(struct ptype_iter_state)"]


LAYOUT_PATCH = """--- a/fs/a.c
+++ b/fs/a.c
@@ -1,3 +1,4 @@
 struct s {
 \tint a;
+\tint b;
 };
"""
COMMENT_PATCH = LAYOUT_PATCH.replace("+\tint b;", "+\t/* b later */")


@pytest.fixture
def trees(tmp_path: Path):
    ksrc = make_fake_kernel_tree(tmp_path / "linux")
    (ksrc / "fs").mkdir()
    (ksrc / "fs" / "a.c").write_text("struct s {\n\tint a;\n};\n")
    orig = make_orig(tmp_path / "orig")
    s = resolve(ksrc, orig=orig, patch_opts=["-p1"])
    snapshot.make_post_tree(ksrc, s.postdir)
    s.state.mkdir()
    return s, tmp_path


def test_apply_refuses_and_leaves_the_snapshot(trees) -> None:
    s, tmp = trees
    patch = tmp / "layout.patch"
    patch.write_text(LAYOUT_PATCH)
    with pytest.raises(UserError, match=r"^data layout change: struct s \(fs/a.c:1\) changes"):
        patching.apply_patch(s, patch)
    assert os.path.samefile(s.ksrc / "fs/a.c", s.postdir / "fs/a.c")
    assert patching.load_record(s) is None
    patch.write_text(COMMENT_PATCH)
    assert set(patching.apply_patch(s, patch).files) == {"fs/a.c"}
