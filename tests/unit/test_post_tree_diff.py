# SPDX-License-Identifier: GPL-2.0-only
"""tests/helpers.post_tree_diff: the tree comparison the reset tests rely on sees every kind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import Prebuilt, make_built_tree, post_tree_diff


@pytest.fixture
def pb(tmp_path: Path) -> Prebuilt:
    """A built tree (old sources, newer build outputs) and a fresh snapshot of it."""
    return make_built_tree(tmp_path, {"Makefile": "VERSION = 6\n",
                                      "kernel/fork.c": "int fork;\n"})


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
