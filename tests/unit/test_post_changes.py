# SPDX-License-Identifier: GPL-2.0-only
"""The change-time filter of the post-tree reset and of the post-patch comparison.

snapshot.post_changes must find exactly what the full comparison
(post_differences) finds, whatever changed on either side since the tree was
last clean; sync_post with its record must leave the post tree exactly the
snapshot (tests/helpers.post_tree_diff) without walking the trees.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Prebuilt, make_built_tree, make_fake_kernel_tree, make_orig, post_tree_diff

from ksplice_tasks.stages import patching
from ksplice_tasks.stages.inputs import resolve
from ksplice_tasks.tree import snapshot


@pytest.fixture
def pb(tmp_path: Path) -> Prebuilt:
    """A built tree (old sources, newer build outputs), a snapshot of it, and its record."""
    pb = make_built_tree(tmp_path, {"Makefile": "VERSION = 6\n", "kernel/fork.c": "int fork;\n",
                                    "kernel/exit.c": "int exit;\n"})
    snapshot.mark_clean(_record(pb.orig), pb.ksrc, pb.postdir)
    return pb


def _record(orig: Path) -> Path:
    return orig / "post-clean.json"


def _filtered(pb: Prebuilt) -> list[tuple[str, str]]:
    now = snapshot.fs_clock(pb.postdir)
    since = snapshot.clean_since(_record(pb.orig), pb.ksrc, pb.postdir, now)
    assert since is not None
    found = snapshot.post_changes(pb.ksrc, pb.postdir, since)
    assert found is not None
    return found


def _no_full_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise AssertionError("the whole tree was walked")
    monkeypatch.setattr(snapshot, "_stats", refuse)


def _removed_from_post(pb: Prebuilt) -> None:
    (pb.postdir / "kernel" / "fork.c").unlink()


def _renamed_in_post(pb: Prebuilt) -> None:
    os.rename(pb.postdir / "Makefile", pb.postdir / "kernel" / "Makefile2")
    os.rename(pb.postdir / "kernel" / "exit.c", pb.postdir / "kernel" / "fork.c")  # over one


def _chmod_in_post(pb: Prebuilt) -> None:
    os.chmod(pb.postdir / "vmlinux", 0o700)


def _dir_removed_from_post(pb: Prebuilt) -> None:
    shutil.rmtree(pb.postdir / "kernel")


def _dir_replaced_by_file(pb: Prebuilt) -> None:
    shutil.rmtree(pb.postdir / "kernel")
    (pb.postdir / "kernel").write_text("not a directory\n")


def _new_dir_in_post(pb: Prebuilt) -> None:
    (pb.postdir / "net" / "core").mkdir(parents=True)
    (pb.postdir / "net" / "core" / "sock.o").write_bytes(b"post object")


def _pre_objects_added(pb: Prebuilt) -> None:
    """A targeted create builds pre objects in KERNEL_SOURCE after the snapshot."""
    (pb.ksrc / "kernel" / "exit.o").write_bytes(b"\x7fELF exit")
    (pb.ksrc / "net").mkdir()
    (pb.ksrc / "net" / "we*ird\nname.o").write_bytes(b"\x7fELF odd")


def _pre_file_removed(pb: Prebuilt) -> None:
    (pb.ksrc / "vmlinux").unlink()


def _post_symlink_retargeted(pb: Prebuilt) -> None:
    (pb.postdir / "link-to-fork").unlink()
    os.symlink("Makefile", pb.postdir / "link-to-fork")


CASES: dict[str, tuple[Callable[[Prebuilt], None], list[tuple[str, str]]]] = {
    "removed from post": (_removed_from_post, [("kernel/fork.c", "missing")]),
    "renamed in post": (_renamed_in_post, [
        ("Makefile", "missing"), ("kernel/Makefile2", "extra"),
        ("kernel/exit.c", "missing"), ("kernel/fork.c", "changed")]),
    "chmod in post": (_chmod_in_post, [("vmlinux", "changed")]),
    "directory removed from post": (_dir_removed_from_post, [
        ("kernel", "missing"), ("kernel/.fork.o.cmd", "missing"), ("kernel/exit.c", "missing"),
        ("kernel/fork.c", "missing"), ("kernel/fork.o", "missing")]),
    "directory replaced by a file": (_dir_replaced_by_file, [
        ("kernel", "changed"), ("kernel/.fork.o.cmd", "missing"), ("kernel/exit.c", "missing"),
        ("kernel/fork.c", "missing"), ("kernel/fork.o", "missing")]),
    "new directory in post": (_new_dir_in_post, [
        ("net", "extra"), ("net/core", "extra"), ("net/core/sock.o", "extra")]),
    "pre objects added": (_pre_objects_added, [
        ("kernel/exit.o", "missing"), ("net", "missing"), ("net/we*ird\nname.o", "missing")]),
    "pre file removed": (_pre_file_removed, [("vmlinux", "extra")]),
    "symlink retargeted": (_post_symlink_retargeted, [("link-to-fork", "changed")]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_filter_finds_what_the_full_comparison_finds(
        pb: Prebuilt, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    change, expected = CASES[case]
    change(pb)
    assert snapshot.post_differences(pb.ksrc, pb.postdir) == expected
    _no_full_walk(monkeypatch)
    assert _filtered(pb) == expected
    snapshot.sync_post(pb.ksrc, pb.postdir, (), _record(pb.orig))
    monkeypatch.undo()
    assert post_tree_diff(pb) == []


def test_a_change_in_the_same_clock_tick_as_the_reference_is_seen(
        pb: Prebuilt, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reset, then at once a rewrite: its change time is (about) the record's own."""
    _no_full_walk(monkeypatch)
    snapshot.sync_post(pb.ksrc, pb.postdir, (), _record(pb.orig))
    since = json.loads(_record(pb.orig).read_text())["since_ns"]
    (pb.postdir / "vmlinux").write_bytes(b"\x7fELF relinked vmlinux")
    ctime = os.lstat(pb.postdir / "vmlinux").st_ctime_ns
    assert ctime - since < 2 * snapshot.CLOCK_MARGIN_NS  # within a second of the reference
    assert _filtered(pb) == [("vmlinux", "changed")]
    snapshot.sync_post(pb.ksrc, pb.postdir, (), _record(pb.orig))
    monkeypatch.undo()
    assert post_tree_diff(pb) == []


def test_changed_since_counts_an_entry_stamped_in_the_reference_tick(tmp_path: Path) -> None:
    now = snapshot.fs_clock(tmp_path)
    (tmp_path / "x").write_text("x\n")
    assert os.lstat(tmp_path / "x").st_ctime_ns - now < snapshot.CLOCK_MARGIN_NS
    found = snapshot.changed_since([(tmp_path, ())], now - snapshot.CLOCK_MARGIN_NS)
    assert found == [{"", "x"}]


def test_changed_since_skips_excluded_paths_with_glob_characters(tmp_path: Path) -> None:
    odd = tmp_path / "o[r]ig*?"
    (odd / "post").mkdir(parents=True)
    (tmp_path / "a").write_text("a\n")
    found = snapshot.changed_since([(tmp_path, [odd])], 0)
    assert found == [{"", "a"}]


def test_an_untrusted_record_means_a_full_comparison(pb: Prebuilt) -> None:
    record = _record(pb.orig)
    now = snapshot.fs_clock(pb.postdir)
    assert snapshot.clean_since(record, pb.ksrc, pb.postdir, now) is not None
    data = json.loads(record.read_text())
    for bad in ({**data, "since_ns": now + 10 * snapshot.CLOCK_MARGIN_NS},  # the clock went back
                {**data, "ksrc": "/elsewhere"}, {**data, "since_ns": "0"}, {}):
        record.write_text(json.dumps(bad))
        assert snapshot.clean_since(record, pb.ksrc, pb.postdir, now) is None
    record.write_text(json.dumps(data))
    os.utime(pb.postdir / snapshot.POST_MARKER)  # a touched marker: its change time moves
    assert snapshot.clean_since(record, pb.ksrc, pb.postdir, now) is None
    record.write_text("not json")
    (pb.postdir / "vmlinux").write_bytes(b"changed")
    assert snapshot.sync_post(pb.ksrc, pb.postdir, (), record) == 1
    assert post_tree_diff(pb) == []
    assert snapshot.clean_since(record, pb.ksrc, pb.postdir, snapshot.fs_clock(pb.postdir))


def test_reset_and_patch_check_do_not_walk_the_trees(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first reset, reset_post and patched_files look only at changed entries."""
    ksrc = make_fake_kernel_tree(tmp_path / "linux")
    (ksrc / "fs").mkdir()
    (ksrc / "fs" / "a.c").write_text("int a;\n")
    (ksrc / "fs" / "b.c").write_text("int b;\n")
    orig = make_orig(tmp_path / "orig")
    s = resolve(ksrc, orig=orig, patch_opts=["-p1"])
    snapshot.make_post_tree(ksrc, s.postdir)
    s.state.mkdir()
    patching.reset_post(s)  # no record yet: the full comparison, which writes one
    patch = tmp_path / "fix.patch"
    patch.write_text("--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1 +1 @@\n-int a;\n+int a = 1;\n")
    (s.postdir / "fs" / "b.c").unlink()  # replaced by someone
    (s.postdir / "fs" / "b.c").write_text("int b = 2;\n")
    _no_full_walk(monkeypatch)
    res = patching.apply_patch(s, patch)
    assert res.files == {"fs/a.c": patching.sha256_file(s.postdir / "fs/a.c")}
    assert res.restored == 1
    os.rename(s.postdir / "fs" / "b.c", s.postdir / "fs" / "c.c")  # after patch(1), as a build
    assert patching.reset_post(s) == 3
    monkeypatch.undo()
    assert post_tree_diff(Prebuilt(None, ksrc, orig)) == []  # type: ignore[arg-type]
