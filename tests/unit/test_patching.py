# SPDX-License-Identifier: GPL-2.0-only
"""Patch parsing, path checks, the post-tree reset, and the patch record."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import make_fake_kernel_tree, make_orig

from ksplice_tasks.errors import UserError
from ksplice_tasks.stages import patching
from ksplice_tasks.stages.inputs import resolve
from ksplice_tasks.tree import snapshot

TWO_FILES = """diff --git a/fs/a.c b/fs/a.c
--- a/fs/a.c\t2026-01-01 00:00:00
+++ b/fs/a.c\t2026-01-01 00:00:01
@@ -1 +1 @@
-int a;
+int a = 1;
--- /dev/null
+++ b/fs/new.c
@@ -0,0 +1 @@
+int n;
"""


def test_patch_files_and_targets() -> None:
    pairs = patching.patch_files(TWO_FILES)
    assert pairs == [("a/fs/a.c", "b/fs/a.c"), ("/dev/null", "b/fs/new.c")]
    assert patching.target_files(pairs, 1) == ["fs/a.c", "fs/new.c"]
    assert patching.target_files([("fs/a.c", "fs/a.c")], 0) == ["fs/a.c"]


@pytest.mark.parametrize(("old", "new", "level", "message"), [
    ("a/../x", "b/../x", 1, "'..'"),
    ("/etc/passwd", "/etc/passwd", 0, "absolute path"),
    ("a", "b", 1, "no components left"),
])
def test_bad_paths(old: str, new: str, level: int, message: str) -> None:
    with pytest.raises(UserError, match=message):
        patching.target_files([(old, new)], level)


def test_no_unified_headers() -> None:
    with pytest.raises(UserError, match="is a context diff at line 1"):
        patching.patch_files("*** a/x\n--- b/x\n")
    with pytest.raises(UserError, match="names no files"):
        patching.patch_files("just text\n")


def test_strip_level_and_allowed_options() -> None:
    assert patching.strip_level(["-p1"]) == 1
    assert patching.strip_level(["-F3 --strip=2"]) == 2
    with pytest.raises(UserError, match="unsupported --patch-opt '-d'"):
        patching.strip_level(["-p1 -d /tmp"])
    with pytest.raises(UserError, match="unsupported --patch-opt '--output=/x'"):
        patching.strip_level(["-p1", "--output=/x"])
    with pytest.raises(UserError, match="strip level"):
        patching.strip_level(["-l"])


def test_file_chunks_split_per_file() -> None:
    chunks = patching.file_chunks(TWO_FILES, 1)
    assert set(chunks) == {"fs/a.c", "fs/new.c"}
    assert "+int a = 1;" in chunks["fs/a.c"] and "int n" not in chunks["fs/a.c"]


@pytest.fixture
def trees(tmp_path: Path):
    ksrc = make_fake_kernel_tree(tmp_path / "linux")
    (ksrc / "fs").mkdir()
    (ksrc / "fs" / "a.c").write_text("int a;\n")
    (ksrc / "fs" / "a.o").write_bytes(b"pre object")
    orig = make_orig(tmp_path / "orig")
    s = resolve(ksrc, orig=orig, patch_opts=["-p1"])
    snapshot.make_post_tree(ksrc, s.postdir)
    s.state.mkdir()
    patch = tmp_path / "fix.patch"
    patch.write_text(TWO_FILES)
    return s, patch


def test_apply_then_reset_restores_the_snapshot(trees) -> None:
    s, patch = trees
    before = snapshot.tree_digest(s.ksrc)
    res = patching.apply_patch(s, patch)
    assert set(res.files) == {"fs/a.c", "fs/new.c"}
    assert (s.postdir / "fs/a.c").read_text() == "int a = 1;\n"
    assert patching.patch_is_applied(s, patch)
    # a post build writes a new object, and one for the new file
    (s.postdir / "fs/a.o").unlink()
    (s.postdir / "fs/a.o").write_bytes(b"post object")
    (s.postdir / "fs/new.o").write_bytes(b"new object")
    assert snapshot.tree_digest(s.ksrc) == before
    restored = patching.reset_post(s)
    assert restored == 4
    assert os.path.samefile(s.ksrc / "fs/a.c", s.postdir / "fs/a.c")
    assert os.path.samefile(s.ksrc / "fs/a.o", s.postdir / "fs/a.o")
    assert not (s.postdir / "fs/new.c").exists() and not (s.postdir / "fs/new.o").exists()
    assert not patching.patch_is_applied(s, patch)
    assert snapshot.tree_digest(s.ksrc) == before


def test_a_patch_that_does_not_apply_leaves_the_snapshot(trees, tmp_path: Path) -> None:
    s, _ = trees
    bad = tmp_path / "bad.patch"
    bad.write_text(TWO_FILES.replace("-int a;", "-int b;"))
    with pytest.raises(UserError, match="does not apply"):
        patching.apply_patch(s, bad)
    assert os.path.samefile(s.ksrc / "fs/a.c", s.postdir / "fs/a.c")
    assert not (s.postdir / "fs/new.c").exists()
    assert patching.load_record(s) is None


def test_edited_post_file_means_not_applied(trees) -> None:
    s, patch = trees
    patching.apply_patch(s, patch)
    (s.postdir / "fs/a.c").write_text("int a = 2;\n")
    assert not patching.patch_is_applied(s, patch)


def test_symlink_out_of_the_tree_is_refused(trees, tmp_path: Path) -> None:
    s, _ = trees
    os.symlink(tmp_path, s.ksrc / "escape")
    with pytest.raises(UserError, match="outside KERNEL_SOURCE"):
        patching.check_targets(s.ksrc, ["escape/x.c"], s.excluded)


def test_diffext_patch(trees) -> None:
    s, _ = trees
    (s.ksrc / "fs" / "a.c.fixed").write_text("int a = 3;\n")
    text = patching.diffext_patch(s, ".fixed")
    assert text.startswith("--- fs/a.c\n+++ fs/a.c\n")
    check = subprocess.run(["patch", "--dry-run", "-p0", "-d", str(s.postdir)], input=text,
                           text=True, capture_output=True, check=False)
    assert check.returncode == 0, check.stdout
    with pytest.raises(UserError, match="No changes detected"):
        patching.diffext_patch(s, ".nothing")


def test_an_unreadable_record_remakes_the_post_tree(trees) -> None:
    """Which files an unreadable record's patch touched is unknown: nothing stale may stay."""
    s, patch = trees
    patching.apply_patch(s, patch)
    record = s.layout.create.post_patch
    record.write_text('{"files": {"fs/a.c": null}}\n')  # an older ksplice-py's record
    assert patching.load_record(s) is None
    patching.reset_post(s)
    assert os.path.samefile(s.ksrc / "fs/a.c", s.postdir / "fs/a.c")
    assert not (s.postdir / "fs/new.c").exists()
    assert not record.exists()
    assert (s.postdir / snapshot.POST_MARKER).is_file()
