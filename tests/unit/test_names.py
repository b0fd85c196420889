# SPDX-License-Identifier: GPL-2.0-only
"""Update ids, file and module names, and the per-object symbol names."""

from __future__ import annotations

import pytest

from ksplice_tasks import names


def test_ids() -> None:
    assert names.check_id("abcd1234") == "abcd1234"
    for bad in ("ABCD1234", "abcd123", "abcd12345", "abcd-123", ""):
        assert not names.is_id(bad)
        with pytest.raises(ValueError, match="8 characters"):
            names.check_id(bad)


def test_file_and_module_names() -> None:
    uid = "k3y0ab12"
    assert names.tarball_name(uid) == "ksplice-k3y0ab12.tar.gz"
    assert names.package_dir(uid) == "ksplice-k3y0ab12"
    assert names.module_files(uid) == ("ksplice-k3y0ab12.ko", "ksplice-k3y0ab12-helper.ko")
    assert names.sysfs_module(uid) == "ksplice_k3y0ab12"
    assert names.sysfs_module(uid, names.HELPER) == "ksplice_k3y0ab12_helper"
    assert names.tarball_id(names.tarball_name(uid)) == uid
    assert names.tarball_id("ksplice-k3y0ab12.tar") is None
    assert names.PACKAGE_DIR_RE.match(names.package_dir(uid)).group(1) == uid
    assert names.PACKAGE_DIR_RE.match("ksplice-k3y0ab12/x") is None
    assert names.sysfs_module_id(names.sysfs_module(uid)) == uid
    assert names.sysfs_module_id(names.sysfs_module(uid, names.HELPER)) is None
    with pytest.raises(ValueError, match="role"):
        names.module_file(uid, "other")


@pytest.mark.parametrize("name", ["loadavg_proc_show", "__x64_sys_umask", ".text.do_getpgid",
                                  "foo.cold", "a____b", "bar_post", "x_pre_global"])
@pytest.mark.parametrize("tag", [names.object_tag("fs/proc/loadavg.o"), "loadavg_t3st0001"])
@pytest.mark.parametrize("side", names.SIDES)
@pytest.mark.parametrize("is_global", [False, True])
def test_tagged_names_round_trip(name: str, tag: str, side: str, is_global: bool) -> None:
    symbol = names.tagged_name(name, tag, side, is_global=is_global)
    parsed = names.parse_tagged(symbol)
    assert parsed == names.TaggedName(name, tag, side, is_global)
    assert str(parsed) == symbol
    assert symbol.endswith(names.symbol_suffix(tag, side) + ("_global" if is_global else ""))
    assert names.kernel_name(symbol, tag, side) == (symbol if is_global else name)


def test_tagged_name_shapes() -> None:
    tag = names.object_tag("kernel/sys.o")
    assert len(tag) == 8 and int(tag, 16) >= 0
    assert tag == names.object_tag("kernel/sys.o") != names.object_tag("kernel/fork.o")
    assert names.tagged_name("f", tag, names.POST) == f"f____{tag}_post"
    assert names.tag_infix(tag) + names.side_suffix(names.PRE) == names.symbol_suffix(tag, "pre")
    assert names.global_alias(f"f____{tag}_post") == f"f____{tag}_post_global"
    assert names.parse_tagged(f"f____{tag}_post").globalized() == names.parse_tagged(
        f"f____{tag}_post_global")
    for plain in ("loadavg_proc_show", "f____", "f____abc", "____abc_post", "f____abc_mid"):
        assert names.parse_tagged(plain) is None, plain
    # another object's or side's symbol keeps its name
    assert names.kernel_name(f"f____{tag}_post", tag, names.PRE) == f"f____{tag}_post"
    assert names.kernel_name(f"f____{tag}_post", "00000000", names.POST) == f"f____{tag}_post"
    with pytest.raises(ValueError, match="side"):
        names.tagged_name("f", tag, "mid")
