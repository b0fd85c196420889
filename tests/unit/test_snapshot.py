# SPDX-License-Identifier: GPL-2.0-only
"""The post tree shares only what a build replaces, never what it rewrites in place."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ksplice_tasks.stages.inputs import POST_MARKER
from ksplice_tasks.tree import snapshot

OLD = time.time() - 86400 * 365


@pytest.fixture
def built_tree(tmp_path: Path) -> Path:
    """Sources from a tarball (old mtimes), then what a build leaves (new mtimes)."""
    t = tmp_path / "linux"
    (t / "kernel").mkdir(parents=True)
    (t / "include" / "generated").mkdir(parents=True)
    for rel, text in {"Makefile": "VERSION = 6\n", "kernel/fork.c": "int fork;\n",
                      "kernel/Makefile": "obj-y += fork.o\n"}.items():
        (t / rel).write_text(text)
        os.utime(t / rel, (OLD, OLD))
    time.sleep(0.01)
    (t / "kernel" / ".fork.o.cmd").write_text("savedcmd_kernel/fork.o := gcc ...\n")
    (t / "kernel" / "fork.o").write_bytes(b"\x7fELF object")
    (t / "System.map").write_text("ffffffff81000000 T _stext\n")
    (t / "include" / "generated" / "autoconf.h").write_text("#define CONFIG_X 1\n")
    os.symlink("kernel/fork.c", t / "link-to-fork")
    (t / "ksplice").mkdir()
    (t / "ksplice" / ".config").write_text("CONFIG_X=y\n")
    return t


def test_links_sources_and_objects_copies_build_outputs(built_tree: Path, tmp_path: Path) -> None:
    post = tmp_path / "post"
    stats = snapshot.make_post_tree(built_tree, post, [built_tree / "ksplice"])
    same = {rel: os.stat(built_tree / rel).st_ino == os.stat(post / rel).st_ino
            for rel in ("Makefile", "kernel/fork.c", "kernel/Makefile", "kernel/fork.o",
                        "kernel/.fork.o.cmd", "System.map", "include/generated/autoconf.h")}
    assert same == {"Makefile": True, "kernel/fork.c": True, "kernel/Makefile": True,
                    "kernel/fork.o": True, "kernel/.fork.o.cmd": False,
                    "System.map": False, "include/generated/autoconf.h": False}
    assert os.readlink(post / "link-to-fork") == "kernel/fork.c"
    assert not (post / "ksplice").exists()
    assert (post / POST_MARKER).is_file()
    assert (stats.linked, stats.copied, stats.symlinks) == (4, 3, 1)
    # copies keep their mtimes, so make in the post tree sees them up to date
    assert os.stat(post / "System.map").st_mtime_ns == os.stat(
        built_tree / "System.map").st_mtime_ns


def test_a_post_build_cannot_reach_the_pre_tree(built_tree: Path, tmp_path: Path) -> None:
    post = tmp_path / "post"
    snapshot.make_post_tree(built_tree, post, [built_tree / "ksplice"])
    before = snapshot.tree_digest(built_tree)
    # what a post build does: patch(1) replaces a source, gcc writes a new object,
    # Kbuild rewrites .cmd files and System.map in place by shell redirection
    tmp = post / "kernel" / "fork.c.tmp"
    tmp.write_text("int fork = 1;\n")
    os.replace(tmp, post / "kernel" / "fork.c")
    (post / "kernel" / "fork.o").unlink()
    (post / "kernel" / "fork.o").write_bytes(b"\x7fELF new object")
    with open(post / "kernel" / ".fork.o.cmd", "w") as f:
        f.write("savedcmd_kernel/fork.o := gcc -O2 ...\n")
    with open(post / "System.map", "w") as f:
        f.write("ffffffff81000000 T _text\n")
    assert snapshot.tree_digest(built_tree) == before


def test_resnapshot_replaces_the_old_post_tree(built_tree: Path, tmp_path: Path) -> None:
    post = tmp_path / "post"
    snapshot.make_post_tree(built_tree, post)
    (post / "stale-file").write_text("left over from an old patch\n")
    snapshot.make_post_tree(built_tree, post)
    assert not (post / "stale-file").exists()
    assert (post / "kernel" / "fork.c").read_text() == "int fork;\n"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".post.")]
    assert leftovers == []


def test_unbuilt_tree_links_everything(tmp_path: Path) -> None:
    t = tmp_path / "src"
    t.mkdir()
    (t / "a.c").write_text("x\n")
    stats = snapshot.make_post_tree(t, tmp_path / "post")
    assert (stats.linked, stats.copied) == (1, 0)


def test_fingerprint_sees_changes_and_ignores_excluded(built_tree: Path) -> None:
    ex = [built_tree / "ksplice"]
    fp = snapshot.tree_fingerprint(built_tree, ex)
    assert snapshot.tree_fingerprint(built_tree, ex) == fp
    (built_tree / "ksplice" / "state").write_text("ours\n")
    assert snapshot.tree_fingerprint(built_tree, ex) == fp
    os.utime(built_tree / "kernel" / "fork.c")
    assert snapshot.tree_fingerprint(built_tree, ex) != fp


def test_build_start_is_the_oldest_cmd_file(built_tree: Path) -> None:
    cmd = built_tree / "kernel" / ".fork.o.cmd"
    assert snapshot.build_start(built_tree) == os.stat(cmd).st_mtime
    assert snapshot.build_start(built_tree / "include") is None


@pytest.mark.parametrize(("name", "mtime", "since", "expect"), [
    ("fork.o", 10.0, 5.0, True),
    ("fork.c", 1.0, 5.0, True),
    ("fork.c", 6.0, 5.0, False),
    (".fork.o.cmd", 6.0, 5.0, False),
    ("anything", 6.0, None, True),
])
def test_may_link(name: str, mtime: float, since: float | None, expect: bool) -> None:
    assert snapshot.may_link(name, mtime, since) is expect


def test_dependency_files_follow_the_tree(built_tree: Path, tmp_path: Path) -> None:
    """tools/objtool records absolute paths; the post tree's must name the post tree."""
    dep = built_tree / "kernel" / ".check.o.d"
    dep.write_text(f"{built_tree}/kernel/check.o: {built_tree}/kernel/check.c\n")
    post = tmp_path / "post"
    snapshot.make_post_tree(built_tree, post, [built_tree / "ksplice"])
    assert (post / "kernel" / ".check.o.d").read_text() == (
        f"{post}/kernel/check.o: {post}/kernel/check.c\n")
    assert os.stat(post / "kernel" / ".check.o.d").st_mtime_ns == dep.stat().st_mtime_ns
