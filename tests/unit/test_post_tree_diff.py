# SPDX-License-Identifier: GPL-2.0-only
"""tests/helpers.post_tree_diff: the tree comparison the reset tests rely on sees every kind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import Prebuilt, post_tree_diff

from ksplice_tasks.tree import snapshot

OLD = time.time() - 86400 * 365


@pytest.fixture
def pb(tmp_path: Path) -> Prebuilt:
    """A built tree (old sources, newer build outputs) and a fresh snapshot of it."""
    t = tmp_path / "linux"
    (t / "kernel").mkdir(parents=True)
    for rel, text in {"Makefile": "VERSION = 6\n", "kernel/fork.c": "int fork;\n"}.items():
        (t / rel).write_text(text)
        os.utime(t / rel, (OLD, OLD))
    time.sleep(0.01)
    (t / "kernel" / ".fork.o.cmd").write_text(f"savedcmd_kernel/fork.o := gcc {t}/x.c\n")
    (t / "kernel" / "fork.o").write_bytes(b"\x7fELF object")
    (t / "vmlinux").write_bytes(b"\x7fELF vmlinux")
    os.symlink("kernel/fork.c", t / "link-to-fork")
    orig = tmp_path / "orig"
    orig.mkdir()
    snapshot.make_post_tree(t, orig / "post")
    return Prebuilt(None, t, orig)  # type: ignore[arg-type]


def test_a_fresh_snapshot_has_no_differences(pb: Prebuilt) -> None:
    assert post_tree_diff(pb) == []


def test_every_kind_of_difference_is_seen(pb: Prebuilt) -> None:
    post = pb.postdir
    (post / "kernel" / "fork.c").unlink()
    (post / "kernel" / "fork.c").write_text("int fork;\n")  # same bytes, not the pre's inode
    (post / "vmlinux").write_bytes(b"\x7fELF relinked")
    (post / "kernel" / ".fork.o.cmd").write_text(f"savedcmd_kernel/fork.o := gcc {pb.ksrc}/x.c\n")
    (post / "Makefile").unlink()
    (post / "new").mkdir()
    (post / "new" / "x.c").write_text("int x;\n")
    (post / "link-to-fork").unlink()
    os.symlink("Makefile", post / "link-to-fork")
    assert sorted(post_tree_diff(pb)) == [
        "content: kernel/.fork.o.cmd",  # the relocated copy names the post tree, not the pre
        "content: vmlinux",
        "extra: new",
        "extra: new/x.c",
        "missing: Makefile",
        "not linked: kernel/fork.c",
        "symlink: link-to-fork",
    ]
