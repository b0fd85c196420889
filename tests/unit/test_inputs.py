# SPDX-License-Identifier: GPL-2.0-only
"""Bad input: one line naming the problem, a nonzero exit, and nothing changed on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_fake_kernel_tree, make_orig, run_create, run_doit

from ksplice_tasks.errors import UserError
from ksplice_tasks.stages.inputs import POST_MARKER, resolve
from ksplice_tasks.tree.snapshot import tree_digest


@pytest.fixture
def world(tmp_path: Path) -> Path:
    make_fake_kernel_tree(tmp_path / "linux")
    make_orig(tmp_path / "orig")
    (tmp_path / "notakernel").mkdir()
    (tmp_path / "notakernel" / "Makefile").write_text("all:\n\ttrue\n")
    return tmp_path


def refused(world: Path, args: list[str], message: str, rc: int = 1) -> None:
    before = tree_digest(world)
    res = run_create(*args, cwd=world)
    lines = res.stderr.splitlines()
    assert res.returncode == rc, res.stdout + res.stderr
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("ksplice-create: error: ")
    assert message in lines[0]
    assert res.stdout == ""
    assert tree_digest(world) == before


def test_missing_default_orig_config(world: Path) -> None:
    refused(world, ["--prebuild", str(world / "linux")],
            f"Failed to find ORIG_CONFIG directory ({world / 'linux' / 'ksplice'})")


def test_missing_given_orig_config(world: Path) -> None:
    refused(world, ["--prebuild", f"--config={world / 'nope'}", str(world / "linux")],
            f"Failed to find ORIG_CONFIG directory ({world / 'nope'})")


def test_missing_dot_config(world: Path) -> None:
    (world / "orig" / ".config").unlink()
    refused(world, ["--prebuild", f"--config={world / 'orig'}", str(world / "linux")],
            "Failed to find .config file in ORIG_CONFIG directory")


def test_missing_system_map(world: Path) -> None:
    (world / "orig" / "System.map").unlink()
    refused(world, ["--prebuild", f"--config={world / 'orig'}", str(world / "linux")],
            "Failed to find System.map file in ORIG_CONFIG directory")


def test_postdir_inside_tree(world: Path) -> None:
    refused(world, ["--prebuild", f"--config={world / 'orig'}",
                    f"--postdir={world / 'linux' / 'kernel' / 'post'}", str(world / "linux")],
            "Aborting: User-specified postdir cannot be KERNEL_SOURCE or a subdirectory")


def test_postdir_is_the_tree(world: Path) -> None:
    refused(world, ["--prebuild", f"--config={world / 'orig'}",
                    f"--postdir={world / 'linux'}", str(world / "linux")],
            "postdir cannot be KERNEL_SOURCE")


def test_postdir_containing_the_tree(world: Path) -> None:
    refused(world, ["--prebuild", f"--config={world / 'orig'}", f"--postdir={world}",
                    str(world / "linux")], "would contain KERNEL_SOURCE")


def test_foreign_postdir_is_not_emptied(world: Path) -> None:
    (world / "mine").mkdir()
    (world / "mine" / "thesis.tex").write_text("precious\n")
    refused(world, ["--prebuild", f"--config={world / 'orig'}", f"--postdir={world / 'mine'}",
                    str(world / "linux")], "was not made by ksplice")


def test_orig_config_inside_tree(world: Path) -> None:
    make_orig(world / "linux" / "myconfig")
    refused(world, ["--prebuild", f"--config={world / 'linux' / 'myconfig'}",
                    str(world / "linux")],
            "Aborting: User-specified ORIG_CONFIG cannot be KERNEL_SOURCE or a subdirectory")


def test_not_a_kernel_tree(world: Path) -> None:
    refused(world, ["--prebuild", f"--config={world / 'orig'}", str(world / "notakernel")],
            "Not a kernel source tree")


def test_missing_kernel_dir(world: Path) -> None:
    refused(world, ["--prebuild", f"--config={world / 'orig'}", str(world / "gone")],
            "KERNEL_SOURCE is not a directory")


def test_two_actions(world: Path) -> None:
    (world / "fix.patch").write_text("")
    refused(world, ["--prebuild", f"--patch={world / 'fix.patch'}", str(world / "linux")],
            "give exactly one of --patch, --diffext or --prebuild (got 2)", rc=2)


def test_no_action(world: Path) -> None:
    refused(world, [f"--config={world / 'orig'}", str(world / "linux")],
            "give exactly one of --patch, --diffext or --prebuild (got 0)", rc=2)


def test_unknown_option_is_one_line(world: Path) -> None:
    refused(world, ["--frobnicate", str(world / "linux")], "unrecognized arguments", rc=2)


def test_doit_front_end_gives_the_same_one_line_error(
    world: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    before = tree_digest(world)
    res = run_doit(tmp_path_factory.mktemp("work"), "prebuild", f"KSRC={world / 'linux'}",
                   f"ORIG={world / 'nope'}")
    assert res.returncode != 0
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert errors == [f"ksplice: error: Failed to find ORIG_CONFIG directory ({world / 'nope'})"]
    assert tree_digest(world) == before


def test_resolve_defaults(world: Path) -> None:
    make_orig(world / "linux" / "ksplice")
    s = resolve(world / "linux", jobs=3)
    assert s.orig == world / "linux" / "ksplice"
    assert s.postdir == world / "linux" / "ksplice" / "post"
    assert s.excluded == (s.orig, s.postdir)
    assert s.jobs == 3 and s.patch_opts == ("-p1",)


def test_resolve_accepts_our_own_postdir(world: Path) -> None:
    post = world / "post"
    post.mkdir()
    (post / POST_MARKER).write_text("{}\n")
    (post / "Makefile").write_text("x\n")
    s = resolve(world / "linux", orig=world / "orig", postdir=post)
    assert s.postdir == post and s.excluded == ()


def test_resolve_rejects_bad_jobs(world: Path) -> None:
    with pytest.raises(UserError, match="positive number of jobs"):
        resolve(world / "linux", orig=world / "orig", jobs=0)
