# SPDX-License-Identifier: GPL-2.0-only
"""Bad input: one line naming the problem, a nonzero exit, and nothing changed on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import FAKE_SYSTEM_MAP, make_fake_kernel_tree, make_orig, run_create, run_doit

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
            "Failed to find System.map or kallsyms file in ORIG_CONFIG directory")


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


# -- ORIG_CONFIG for a distribution kernel --------------------------------------------

DEBIAN_STUB = "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"
HEADER = "#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 6.1.0 Kernel Configuration\n"


def prebuild_args(world: Path) -> list[str]:
    return ["--prebuild", f"--config={world / 'orig'}", str(world / "linux")]


def test_stub_system_map(world: Path) -> None:
    (world / "orig" / "System.map").write_text(DEBIAN_STUB)
    refused(world, prebuild_args(world), "is the distribution's stub, not the real System.map: "
            "install linux-image-$(uname -r)-dbg")


def test_kallsyms_read_without_root(world: Path) -> None:
    (world / "orig" / "System.map").write_text(DEBIAN_STUB)
    (world / "orig" / "kallsyms").write_text("0000000000000000 T _text\n"
                                             "0000000000000000 r __ksymtab_printk\n")
    (world / "orig" / "Module.symvers").write_text("0x1\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n")
    refused(world, prebuild_args(world), "only zero addresses: read /proc/kallsyms as root")


def test_source_version_differs_from_config(world: Path) -> None:
    (world / "orig" / ".config").write_text(HEADER.replace("6.1.0", "6.1.192")
                                            + "CONFIG_64BIT=y\n")
    refused(world, prebuild_args(world),
            f"KERNEL_SOURCE is 6.1.0 but {world / 'orig'}/.config was made for 6.1.192")


def test_symvers_of_another_kernel(world: Path) -> None:
    (world / "orig" / ".config").write_text(HEADER + "CONFIG_64BIT=y\n")
    (world / "orig" / "System.map").write_text(FAKE_SYSTEM_MAP
                                               + "ffffffff81800000 r __ksymtab_printk\n")
    (world / "orig" / "Module.symvers").write_text(
        "0x1\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n0x2\tmsleep\tvmlinux\tEXPORT_SYMBOL\t\n")
    refused(world, prebuild_args(world),
            f"{world / 'orig' / 'Module.symvers'} does not belong to "
            f"{world / 'orig' / 'System.map'}: {world / 'orig' / 'Module.symvers'} exports "
            "msleep but")


def test_kallsyms_is_used_and_said_with_v(world: Path, capsys: pytest.CaptureFixture) -> None:
    (world / "orig" / "kallsyms").write_text("ffffffff83000000 T _text\n"
                                             "ffffffff83000180 T _printk\n"
                                             "ffffffff83e00000 T _etext\n")
    s = resolve(world / "linux", orig=world / "orig", verbose=True)
    assert s.map_file == world / "orig" / "System.map"  # both: System.map wins, -v says so
    assert "System.map (kallsyms is there too, unused)" in capsys.readouterr().out
    (world / "orig" / "System.map").unlink()
    s = resolve(world / "linux", orig=world / "orig")
    assert s.map_file == world / "orig" / "kallsyms"


def test_a_targeted_prebuild_without_module_symvers_is_refused_before_make(
        tmp_path: Path) -> None:
    """No Module.symvers anywhere: one line, and make prepare never touched the tree."""
    from ksplice_tasks.stages import prebuild

    ksrc = make_fake_kernel_tree(tmp_path / "linux")
    s = resolve(ksrc, orig=make_orig(tmp_path / "orig"))
    assert prebuild.pre_mode(s) == prebuild.TARGETED
    before = tree_digest(ksrc)
    with pytest.raises(UserError, match=r"needs ORIG_CONFIG/Module\.symvers") as e:
        prebuild.build_pre(s)
    assert "\n" not in str(e.value)
    assert tree_digest(ksrc) == before


def test_the_prebuild_mode(tmp_path: Path) -> None:
    """Targeted for a never-built tree; full when asked or when the tree holds a vmlinux."""
    from ksplice_tasks.stages import prebuild

    ksrc = make_fake_kernel_tree(tmp_path / "linux")
    orig = make_orig(tmp_path / "orig")
    assert prebuild.pre_mode(resolve(ksrc, orig=orig)) == prebuild.TARGETED
    assert prebuild.pre_mode(resolve(ksrc, orig=orig, full=True)) == prebuild.FULL
    (ksrc / "vmlinux.o").write_bytes(b"")
    assert prebuild.pre_mode(resolve(ksrc, orig=orig)) == prebuild.FULL


# A symbol map that is not whole is an input error, refused before any task runs
# (issue 11: an empty one, one cut to its first lines, one without the anchor
# reached the modcommon task as a ValueError).
@pytest.mark.parametrize(("text", "message"), [
    ("", "System.map lists no symbols: it is empty or not a symbol map"),
    ("garbage\n\x00\x01\n", "System.map lists no symbols"),
    (FAKE_SYSTEM_MAP.split("ffffffff81e00000")[0],
     "System.map lists _etext 0 times, need exactly once: it is cut short"),
    (FAKE_SYSTEM_MAP.replace("T _printk", "T printk"),
     "System.map lists _printk 0 times, need exactly once (the update finds the kernel's "
     "KASLR offset from it)"),
    (FAKE_SYSTEM_MAP + "ffffffff81000200 t _printk\n", "System.map lists _printk 2 times"),
    (FAKE_SYSTEM_MAP.replace("ffffffff82000000 B _end", "ffffffff80000000 B _end"),
     "System.map: _text, _etext, _end are not in address order"),
])
def test_a_map_that_is_not_whole_is_refused_before_any_task(world: Path, text: str,
                                                            message: str) -> None:
    (world / "orig" / "System.map").write_text(text)
    create = [f"--patch={world / 'linux' / 'Makefile'}", *prebuild_args(world)[1:]]
    for args in (prebuild_args(world), create):
        refused(world, args, message)
