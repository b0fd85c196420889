# SPDX-License-Identifier: GPL-2.0-only
"""The doit front end: task list, docs, persisted variables."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import make_fake_kernel_tree, make_orig, run_doit

from ksplice_tasks import graph
from ksplice_tasks.stages import prebuild


def test_doit_list_shows_every_task_with_its_doc(tmp_path: Path) -> None:
    res = run_doit(tmp_path, "list")
    assert res.returncode == 0, res.stderr
    rows = dict(line.split(None, 1) for line in res.stdout.splitlines())
    assert set(rows) == set(graph.DOCS)
    for name, doc in rows.items():
        want = graph.PER_OBJECT_DOC if name in graph.PER_OBJECT else graph.DOCS[name]
        assert doc.strip() == want, name


def test_doit_without_ksrc_says_what_to_run(tmp_path: Path) -> None:
    res = run_doit(tmp_path, "prebuild")
    assert res.returncode != 0
    assert res.stderr.strip() == ("ksplice: error: KSRC is not set: run "
                                  "`doit prebuild KSRC=/path/to/linux [ORIG=DIR]`")


def test_path_variables_persist_for_later_calls(tmp_path: Path) -> None:
    ksrc = make_fake_kernel_tree(tmp_path / "linux")
    orig = make_orig(tmp_path / "orig")
    persist = tmp_path / "vars.json"
    v = graph.load_vars({"KSRC": str(ksrc), "ORIG": str(orig), "JOBS": "2"}, persist)
    assert json.loads(persist.read_text()) == {"KSRC": str(ksrc), "ORIG": str(orig)}
    again = graph.load_vars({"KSRC": None, "JOBS": None}, persist)
    assert again == {"KSRC": str(ksrc), "ORIG": str(orig)}
    s = graph.settings_from_vars({**again, "JOBS": v["JOBS"]})
    assert (s.ksrc, s.orig, s.jobs) == (ksrc, orig, 2)
    # a new tree forgets the old tree's ORIG
    other = make_fake_kernel_tree(tmp_path / "other")
    assert graph.load_vars({"KSRC": str(other)}, persist) == {"KSRC": str(other)}


def test_config_differences_and_toolchain_symbols() -> None:
    want = prebuild.parse_config("CONFIG_A=y\nCONFIG_GCC_VERSION=120200\n# CONFIG_B is not set\n")
    got = prebuild.parse_config("CONFIG_A=y\nCONFIG_GCC_VERSION=120300\nCONFIG_B=y\n")
    diffs = prebuild.config_differences(want, got)
    assert diffs == ["CONFIG_B: unset -> y", "CONFIG_GCC_VERSION: 120200 -> 120300"]
    assert [prebuild.is_toolchain_symbol(d) for d in diffs] == [False, True]


def test_guarded_turns_user_errors_into_one_line_failures() -> None:
    from doit.exceptions import TaskFailed

    from ksplice_tasks.errors import UserError

    calls = []

    def refuse() -> None:
        raise UserError("No changes detected")

    failed = graph.guarded(refuse, cleanup=lambda: calls.append("reset"))
    assert isinstance(failed, TaskFailed) and failed.message == "No changes detected"
    assert calls == ["reset"]
    assert graph.guarded(lambda: {"n": 1}) == {"n": 1}
    assert graph.guarded(lambda: "ignored") is None

    def broken_cleanup() -> None:
        raise OSError("disk full")

    failed = graph.guarded(refuse, cleanup=broken_cleanup)
    assert failed.message == "No changes detected (and cleaning up failed: disk full)"
