# SPDX-License-Identifier: GPL-2.0-only
"""The module build's check that the module loader can resolve what the passes left it."""

from __future__ import annotations

import pytest
from conftest import FIXTURES

from ksplice_tasks.errors import UserError
from ksplice_tasks.obj.elfread import read_object
from ksplice_tasks.obj.elfwrite import write_object
from ksplice_tasks.obj.objmanip import keep_primary
from ksplice_tasks.stages.kmod import check_loader_symbols, symbol_uses

TAG = "____0_t3stk1d0"


@pytest.fixture
def alt_primary(compile_c, tmp_path):
    obj = read_object(compile_c(FIXTURES / "primary_tables.c", "ptables", "primary_tables"))
    prim, _ = keep_primary(obj, ["alt_exported", "jump_extern"], TAG)
    out = tmp_path / "collection.o.primary.linked"
    write_object(prim, out)
    return out


def test_unexported_loader_symbol_is_refused_naming_its_use(alt_primary):
    """slow_fn sits in an alternative's original call: the loader must resolve it."""
    with pytest.raises(UserError, match=r"needs slow_fn in \.text\.alt_exported\S+ "
                                        r"\(alt_exported\+0x6\).*does not export it"):
        check_loader_symbols(alt_primary, {"__fentry__", "fast_fn"}, "primary")


def test_exported_loader_symbols_pass(alt_primary):
    """A jump label's key is no loader symbol: the ksplice core writes it, so even an
    unexported key (a tracepoint's, a file's own static key) builds."""
    check_loader_symbols(alt_primary, {"__fentry__", "fast_fn", "slow_fn"}, "primary")
    assert symbol_uses(alt_primary, ["ext_key", "slow_fn"]) == {
        "slow_fn": symbol_uses(alt_primary, ["slow_fn"])["slow_fn"]}
