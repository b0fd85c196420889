# SPDX-License-Identifier: GPL-2.0-only
"""Issue 11 kind 1: a patch changes the post tree only where its ---/+++ headers say.

The parser refuses every section patch(1) would act on that is not a plain
unified hunk of a regular file; behind it, the post tree after patch(1) is
compared with the snapshot, so what the parser might miss is refused too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import Prebuilt, make_fake_kernel_tree, make_orig, post_tree_diff

from ksplice_tasks.errors import UserError
from ksplice_tasks.stages import patching
from ksplice_tasks.stages.inputs import resolve
from ksplice_tasks.tree import snapshot

HUNK = """--- a/fs/a.c
+++ b/fs/a.c
@@ -1 +1 @@
-int a;
+int a = 1;
"""
RENAME = """diff --git a/fs/a.c b/fs/a2.c
similarity index 100%
rename from fs/a.c
rename to fs/a2.c
"""
COPY = """diff --git a/fs/a.c b/fs/new/copy.c
similarity index 100%
copy from fs/a.c
copy to fs/new/copy.c
"""
MODE = """diff --git a/fs/a.c b/fs/a.c
old mode 100644
new mode 100755
"""
MODE_AND_HUNK = MODE + HUNK.replace("--- a/fs/a.c", "index 1111111..2222222\n--- a/fs/a.c")
CONTEXT = """*** a/fs/a.c
--- b/fs/a.c
***************
*** 1 ****
! int a;
--- 1 ----
! int a = 1;
"""
NORMAL = """1c1
< int a;
---
> int a = 1;
"""
BINARY = """diff --git a/fs/blob.bin b/fs/blob.bin
new file mode 100644
index 0000000..e69de29
GIT binary patch
literal 3
KcmZQzWB>pF00961

literal 0
HcmV?d00001

"""
BINARY_DIFFERS = "Binary files a/fs/blob.bin and b/fs/blob.bin differ\n"
ONLY_IN = HUNK + "Only in b/fs: extra.c\n"
EMPTY_NEW = """diff --git a/fs/empty.c b/fs/empty.c
new file mode 100644
index 0000000..e69de29
"""
SYMLINK = """diff --git a/fs/l b/fs/l
new file mode 120000
--- /dev/null
+++ b/fs/l
@@ -0,0 +1 @@
+/etc/passwd
\\ No newline at end of file
"""
INDENTED = "".join("  " + line for line in HUNK.splitlines(keepends=True))

REFUSED = {
    "rename": (HUNK + RENAME, "renames a file (git 'rename from') at line 8"),
    "copy": (COPY, "copies a file (git 'copy from') at line 3"),
    "mode change": (MODE, "changes a file's mode (git 'old mode') at line 2"),
    "mode change with a hunk": (MODE_AND_HUNK, "changes a file's mode (git 'old mode')"),
    "context diff": (CONTEXT, "is a context diff at line 1"),
    "normal diff": (NORMAL, "is a normal (ed-style) diff at line 1"),
    "git binary patch": (BINARY, "is a binary patch (git 'GIT binary patch') at line 4"),
    "binary files differ": (BINARY_DIFFERS, "has a binary file"),
    "only in": (ONLY_IN, "left a file out ('Only in ...': make it with diff -N) at line 6"),
    "empty new file": (EMPTY_NEW, "has a git section with no hunk"),
    "symlink": (SYMLINK, "makes a file that is not a regular file (mode 120000) at line 2"),
    "indented": (INDENTED, "is indented at line 1"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_the_parser_refuses(name: str) -> None:
    text, message = REFUSED[name]
    with pytest.raises(UserError, match="only unified diffs") as e:
        patching.sections(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_hunk_lines_are_never_headers() -> None:
    """A removed '-- x' line reads '--- x'; followed by an added '++ y' it looks like a header."""
    text = HUNK.replace("@@ -1 +1 @@\n-int a;\n+int a = 1;\n",
                        "@@ -1,2 +1,2 @@\n--- x\n+++ y\n int a;\n")
    assert patching.patch_files(text) == [("a/fs/a.c", "b/fs/a.c")]


@pytest.mark.parametrize(("quoted", "name"), [
    ('"a/fs/x\\tb.c"', "a/fs/x\tb.c"),
    ('"a/fs/caf\\303\\251.c"', "a/fs/café.c"),
    ('"a/fs/q\\"\\\\.c"\t2026-01-01', 'a/fs/q"\\.c'),
])
def test_quoted_names(quoted: str, name: str) -> None:
    assert patching._header_path(f"--- {quoted}") == name


@pytest.mark.parametrize("bad", ['"a/x', '"a/\\q.c"'])
def test_bad_quoted_names(bad: str) -> None:
    with pytest.raises(UserError, match="the patch names a file with"):
        patching._header_path(f"--- {bad}")


@pytest.fixture
def trees(tmp_path: Path):
    ksrc = make_fake_kernel_tree(tmp_path / "linux")
    (ksrc / "fs").mkdir()
    (ksrc / "fs" / "a.c").write_text("int a;\n")
    (ksrc / "fs" / "a\tb.c").write_text("int ab;\n")
    (ksrc / "fs" / "a.o").write_bytes(b"pre object")
    orig = make_orig(tmp_path / "orig")
    s = resolve(ksrc, orig=orig, patch_opts=["-p1"])
    snapshot.make_post_tree(ksrc, s.postdir)
    s.state.mkdir()
    return s, Prebuilt(None, ksrc, orig)  # type: ignore[arg-type]


def _apply(s, tmp_path: Path, text: str) -> patching.PatchResult:
    patch = tmp_path / "p.patch"
    patch.write_text(text)
    return patching.apply_patch(s, patch)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_patches_change_nothing(trees, tmp_path: Path, name: str) -> None:
    s, pb = trees
    before = snapshot.tree_digest(s.ksrc)
    with pytest.raises(UserError, match="only unified diffs"):
        _apply(s, tmp_path, REFUSED[name][0])
    assert post_tree_diff(pb) == []
    assert snapshot.tree_digest(s.ksrc) == before
    assert patching.load_record(s) is None


def _lenient_sections(text: str) -> list[patching.Section]:
    """The parser as it was before issue 11: any ---/+++ pair, nothing else looked at."""
    lines = text.splitlines()
    return [patching.Section(patching._header_path(a), patching._header_path(b), i)
            for i, (a, b) in enumerate(zip(lines, lines[1:], strict=False))
            if a.startswith("--- ") and b.startswith("+++ ")]


@pytest.mark.parametrize(("text", "message"), [
    (HUNK + RENAME, "patch(1) changed fs/a2.c, which no ---/+++ header"),
    (HUNK + COPY, "patch(1) changed fs/new (and 1 more), which no ---/+++ header"),
    (MODE_AND_HUNK, "the patch changes the mode of fs/a.c"),
])
def test_what_the_parser_misses_is_refused_after_patch(trees, tmp_path: Path, monkeypatch,
                                                       text: str, message: str) -> None:
    """The record lists exactly what patch(1) changed, whatever the parser saw."""
    s, pb = trees
    monkeypatch.setattr(patching, "sections", _lenient_sections)
    before = snapshot.tree_digest(s.ksrc)
    with pytest.raises(UserError, match=re.escape(message)):
        _apply(s, tmp_path, text)
    assert post_tree_diff(pb) == []
    assert snapshot.tree_digest(s.ksrc) == before
    assert patching.load_record(s) is None


def test_quoted_names_are_applied_and_recorded(trees, tmp_path: Path) -> None:
    s, pb = trees
    res = _apply(s, tmp_path, '--- "a/fs/a\\tb.c"\n+++ "b/fs/a\\tb.c"\n'
                 "@@ -1 +1 @@\n-int ab;\n+int ab = 2;\n")
    assert set(res.files) == {"fs/a\tb.c"}
    assert [d.split(": ", 1)[1] for d in post_tree_diff(pb)] == ["fs/a\tb.c"]
    patching.reset_post(s)
    assert post_tree_diff(pb) == []


def test_a_file_in_a_new_directory(trees, tmp_path: Path) -> None:
    s, pb = trees
    res = _apply(s, tmp_path, "diff --git a/fs/n/m/x.c b/fs/n/m/x.c\nnew file mode 100644\n"
                 "--- /dev/null\n+++ b/fs/n/m/x.c\n@@ -0,0 +1 @@\n+int x;\n")
    assert set(res.files) == {"fs/n/m/x.c"}
    assert post_tree_diff(pb) == ["extra: fs/n", "extra: fs/n/m", "extra: fs/n/m/x.c"]
    assert patching.reset_post(s) == 3
    assert post_tree_diff(pb) == []


def test_the_record_lists_only_what_changed(trees, tmp_path: Path) -> None:
    """Old and new names differ: patch(1) changes one file; the record names that one only."""
    s, pb = trees
    res = _apply(s, tmp_path, HUNK.replace("+++ b/fs/a.c", "+++ b/fs/other.c"))
    assert set(res.files) == {"fs/a.c"}
    assert [d.split(": ", 1)[1] for d in post_tree_diff(pb)] == ["fs/a.c"]


def test_reset_removes_every_build_product(trees) -> None:
    """What an earlier make left (vmlinux, .d, .cmd, built-in.a, directories) goes too."""
    s, pb = trees
    post = s.postdir
    (post / "vmlinux").write_bytes(b"linked")
    (post / "fs" / ".a.o.d").write_text("deps\n")
    (post / "fs" / ".a.o.cmd").write_text("cmd\n")
    (post / "fs" / "built-in.a").write_bytes(b"!<arch>\n")
    (post / "arch" / "x86" / "boot").mkdir(parents=True)
    (post / "arch" / "x86" / "boot" / "setup.o").write_bytes(b"boot")
    (post / "Makefile").unlink()
    (post / "Makefile").write_text("changed\n")
    (post / "kernel" / "fork.c").unlink()
    assert post_tree_diff(pb) == [
        "not linked: Makefile", "extra: arch", "extra: arch/x86", "extra: arch/x86/boot",
        "extra: arch/x86/boot/setup.o", "extra: fs/.a.o.cmd", "extra: fs/.a.o.d",
        "extra: fs/built-in.a", "missing: kernel/fork.c", "extra: vmlinux"]
    patching.reset_post(s)
    assert post_tree_diff(pb) == []
