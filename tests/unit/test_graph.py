# SPDX-License-Identifier: GPL-2.0-only
"""The doit front end: task list, docs, persisted variables."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain
from doit.exceptions import TaskFailed
from helpers import make_fake_kernel_tree, make_orig, run_doit

from ksplice_tasks import artifacts, graph, names
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import write_atomic
from ksplice_tasks.stages import patching, prebuild
from ksplice_tasks.stages.inputs import Settings, resolve
from ksplice_tasks.tree import snapshot


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


# -- the graph declares; building it runs nothing ---------------------------------------


def fake_prebuilt(root: Path, *, system_map: str | None = None, **opts: object) -> Settings:
    """A fake KERNEL_SOURCE with a post tree and a pre build stamp: enough to plan a create."""
    ksrc = make_fake_kernel_tree(root / "linux")
    (ksrc / "fs").mkdir()
    (ksrc / "fs" / "a.c").write_text("int a(void) { return 1; }\n")
    orig = make_orig(root / "orig")
    patch = root / "fix.patch"
    patch.write_text("--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1 +1 @@\n"
                     "-int a(void) { return 1; }\n+int a(void) { return 2; }\n")
    s = resolve(ksrc, orig=orig, patch=None if "diffext" in opts else patch, **opts)
    if system_map is not None:  # after validation: a map it would refuse reaches a task
        (orig / "System.map").write_text(system_map)
    snapshot.make_post_tree(ksrc, s.postdir)
    stamp = artifacts.PreBuildStamp(str(ksrc), 0, "", 0, 0, 0, 0.0, 0.0)
    write_atomic(s.layout.pre_stamp, artifacts.PRE_BUILD.dumps(stamp))
    return s


def test_doit_list_with_diffext_runs_no_diff(tmp_path: Path) -> None:
    s = fake_prebuilt(tmp_path / "t", diffext=".fixed")
    (s.ksrc / "fs" / "a.c.fixed").write_text("int a(void) { return 3; }\n")
    bindir, log = tmp_path / "bin", tmp_path / "diff-calls"
    bindir.mkdir()
    fake = bindir / "diff"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {shutil.which("diff")} "$@"\n')
    fake.chmod(0o755)
    args = (f"KSRC={s.ksrc}", f"ORIG={s.orig}", "DIFFEXT=.fixed")
    res = run_doit(tmp_path / "work", "list", *args, path_prefix=bindir)
    assert res.returncode == 0, res.stderr
    assert "diffext" in res.stdout and "tarball" in res.stdout
    assert not log.exists(), log.read_text()
    # the fake diff is the one the diffext task runs
    made = run_doit(tmp_path / "work", "diffext", path_prefix=bindir)
    assert made.returncode == 0, made.stderr
    assert "fs/a.c.fixed" in log.read_text()
    assert s.layout.create.diffext_patch.read_text().startswith("--- fs/a.c\n+++ fs/a.c\n")


def test_tool_stamp_covers_only_the_code_that_makes_updates() -> None:
    pkg = Path(graph.__file__).resolve().parent
    rooms = {p.relative_to(pkg).parts[0] if len(p.relative_to(pkg).parts) > 1 else p.name
             for p in graph.tool_files()}
    assert {"obj", "tree", "encode", "stages", "names.py", "files.py", "artifacts.py"} <= rooms
    assert not rooms & {"testing", "target", "graph.py", "cli.py", "reporter.py"}
    assert graph.tool_stamp() == graph.tool_stamp()


# -- any failure of a create task: one line, the post tree reset -------------------------


def run_action(task: dict, **doit_values: object) -> object:
    """Run a task's action as doit does (doit_values: what getargs hands it)."""
    fn, args, kwargs = task["actions"][0]
    return fn(*args, **kwargs, **doit_values)


def find(tasks: list[dict], basename: str) -> dict:
    return next(t for t in tasks if t["basename"] == basename)


def patched(s: Settings) -> None:
    """Put the fake patch into the post tree, as post_patch does."""
    patching.apply_patch(s, s.patch)
    assert not os.path.samefile(s.ksrc / "fs/a.c", s.postdir / "fs/a.c")


def assert_reset(s: Settings) -> None:
    assert os.path.samefile(s.ksrc / "fs/a.c", s.postdir / "fs/a.c")
    assert patching.load_record(s) is None


def one_line_failure(result: object, start: str) -> str:
    assert isinstance(result, TaskFailed), result
    assert "\n" not in result.message and result.message.startswith(start), result.message
    return result.message


def test_an_elf_format_error_is_one_line_and_resets(tmp_path: Path) -> None:
    s = fake_prebuilt(tmp_path)
    subprocess.run(["gcc", "-c", "-o", str(s.ksrc / "fs/a.o"), str(s.ksrc / "fs/a.c")],
                   check=True)
    patched(s)
    (s.postdir / "fs/a.o").write_bytes((s.ksrc / "fs/a.o").read_bytes()[:100])  # truncated
    write_atomic(s.layout.create.post_build, artifacts.POST_BUILD.dumps(
        artifacts.PostBuild("objects", ["fs/a.o"], ["fs/a.o"], 0.1, 0)))
    plan = graph.plan_create(s)
    assert isinstance(plan, graph.CreatePlan)
    objdiff = find(graph.create_objects(plan), "objdiff")
    message = one_line_failure(run_action(objdiff), "objdiff:fs/a.o failed: ")
    # pyelftools' parse errors reach the task as the object layer's own ElfFormatError
    assert re.match(r"objdiff:fs/a.o failed: ElfFormatError: .*EOF", message)
    assert message.endswith("(-v or VERBOSE=1 shows the traceback)")
    assert_reset(s)
    assert os.path.samefile(s.ksrc / "fs/a.o", s.postdir / "fs/a.o")


def test_an_encoder_value_error_is_one_line_and_resets(tmp_path: Path, capsys) -> None:
    s = fake_prebuilt(tmp_path, system_map="ffffffff81000000 T _printk\n"
                                           "ffffffff81001000 t _printk\n", verbose=True)
    plan = graph.plan_create(s)
    assert isinstance(plan, graph.CreatePlan)
    modcommon = find(graph.create_static(plan), "modcommon")
    assert modcommon["getargs"] == {"update_id": ("post_patch", "update_id")}
    patched(s)
    capsys.readouterr()
    message = one_line_failure(run_action(modcommon, update_id=plan.uid),
                               "modcommon failed: ValueError: System.map has 2 addresses "
                               "for anchor '_printk'")
    assert "traceback" not in message
    assert "Traceback (most recent call last)" in capsys.readouterr().err  # -v shows it
    assert_reset(s)


def test_an_os_error_fails_the_task_through_doit(tmp_path: Path, capsys) -> None:
    """`doit tarball` with OUTDIR made a file after validation: the reporter's one line,
    rc 1, post tree reset."""
    (tmp_path / "out").mkdir()
    s = fake_prebuilt(tmp_path, outdir=tmp_path / "out")
    (tmp_path / "out").rmdir()
    (tmp_path / "out").write_text("not a directory\n")
    patched(s)
    work = s.layout.create
    uid = patching.load_record(s).update_id
    for n in names.module_files(uid):
        write_atomic(work.kmod / n, b"\x7fELF module")
    write_atomic(work.modules, artifacts.MODULES.dumps(artifacts.ModulesRecord(
        uid, *names.module_files(uid), "0" * 64, "1" * 64)))
    write_atomic(work.rmsyms, "{}\n")
    write_atomic(work.post_build, artifacts.POST_BUILD.dumps(
        artifacts.PostBuild("objects", ["fs/a.o"], ["fs/a.o"], 0.1, 0)))
    capsys.readouterr()
    rc = DoitMain(ModuleTaskLoader(graph.namespace(s))).run(["-s", "tarball"])
    out = capsys.readouterr()
    assert rc != 0
    errors = [ln for ln in out.err.splitlines() if ln.strip()]
    assert errors == [f"ksplice: error: the output directory {tmp_path}/out is not a "
                      "directory"], out.err
    assert_reset(s)


def test_failures_outside_stage_actions_are_one_line_too() -> None:
    assert graph.describe(UserError("No changes detected"), "x") == "No changes detected"
    assert graph.describe(PermissionError(13, "Permission denied", "/o/k.tar.gz"),
                          "tarball") == "tarball failed: Permission denied: /o/k.tar.gz"
    assert graph.describe(ValueError("bad\n  thing"), "t") == "t failed: ValueError: bad thing"


def test_every_action_names_a_stage_function(tmp_path: Path) -> None:
    """Actions are named, and imported only when they run: each name must resolve."""
    tasks: list[dict] = []
    for i, opts in enumerate(({}, {"diffext": ".fixed"})):
        s = fake_prebuilt(tmp_path / str(i), **opts)
        write_atomic(s.layout.create.post_build, artifacts.POST_BUILD.dumps(
            artifacts.PostBuild("objects", ["fs/a.o"], ["fs/a.o"], 0.1, 0)))
        if s.diffext:
            write_atomic(s.layout.create.diffext_patch, s.ksrc.parent.joinpath(
                "fix.patch").read_text())
        plan = graph.plan_create(s)
        assert isinstance(plan, graph.CreatePlan)
        tasks += [graph.pre_config(s), graph.pre_build(s), graph.post_snapshot(s),
                  *graph.create_static(plan), *graph.create_objects(plan)]
    named = [t["actions"][0][1][0] for t in tasks if t.get("actions")]
    assert {t["basename"] for t in tasks if t.get("actions")} == set(graph.DOCS) - {
        "prebuild", "create_update"}
    for ref in named:
        assert isinstance(ref, str), ref
        fn = graph.stage_function(ref)
        assert callable(fn) and fn.__module__ == f"ksplice_tasks.stages.{ref.split(':')[0]}"
    with pytest.raises(AttributeError):
        graph.stage_function("extract:no_such_function")
    failed = graph.guarded("extract:no_such_function", label="objdiff")
    assert failed.message.startswith("objdiff failed: AttributeError: ")
