# SPDX-License-Identifier: GPL-2.0-only
from __future__ import annotations

import pytest

from ksplice_tasks.errors import UserError
from ksplice_tasks.testing import testkernel


def test_later_fragments_override_earlier_ones() -> None:
    merged = testkernel.parse_fragment(testkernel.fragment_text("smp"))
    assert merged["SMP"] == "y" and merged["RANDOMIZE_BASE"] == "y"
    assert testkernel.parse_fragment(testkernel.fragment_text("up"))["SMP"] is None


def test_fragments_carry_what_the_guest_and_modules_need() -> None:
    up = testkernel.parse_fragment(testkernel.fragment_text("up"))
    for sym in ("MODULES", "MODULE_UNLOAD", "KALLSYMS_ALL", "9P_FS", "NET_9P_VIRTIO",
                "VIRTIO_PCI", "TMPFS", "DEVTMPFS", "BLK_DEV_INITRD"):
        assert up[sym] == "y", sym
    assert up["MODULE_SIG"] is None
    lp = testkernel.parse_fragment(testkernel.fragment_text("lp"))
    assert lp["DYNAMIC_FTRACE"] == "y" and lp["LIVEPATCH"] == "y" and lp["SMP"] == "y"


def test_lp_has_what_distribution_kernels_have() -> None:
    """BUG()/WARN() with file:line, static keys and tracepoints (issue 10); not in smp."""
    lp = testkernel.parse_fragment(testkernel.fragment_text("lp"))
    smp = testkernel.parse_fragment(testkernel.fragment_text("smp"))
    for sym in ("BUG", "DEBUG_BUGVERBOSE", "JUMP_LABEL", "TRACEPOINTS"):
        assert lp[sym] == "y" and sym not in smp, sym


def test_fragment_ops() -> None:
    ops = testkernel.fragment_ops('CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n'
                                  'CONFIG_D=4\nCONFIG_E="x y"\n')
    assert ops == ["--enable", "A", "--module", "B", "--disable", "C",
                   "--set-val", "D", "4", "--set-val", "E", '"x y"']


def test_fragment_violations() -> None:
    frag = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n"
    config = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n"
    assert testkernel.fragment_violations(frag, config) == [
        "# CONFIG_B is not set", "CONFIG_C=y"]
    assert testkernel.fragment_violations(frag, "CONFIG_A=y\nCONFIG_C=y\n") == []


def test_unknown_variant() -> None:
    with pytest.raises(UserError, match="unknown test kernel variant"):
        testkernel.fragment_text("huge")
