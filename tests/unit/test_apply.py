# SPDX-License-Identifier: GPL-2.0-only
"""ksplice-apply/-view/-undo against a fake kernel: tarball checks, unloading on abort, messages.

The fake keeps sysfs files in a temporary directory and plays the primary's
``stage`` command the way kmodsrc/sysfs.c does; the real thing runs in
tests/system/test_apply_updates.py.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from ksplice_tasks.target import apply

ID = "abcd1234"


class FakeKernel(apply.Kernel):
    """Modules are directories under <tmp>/module; the primary aborts with ``cause``."""

    def __init__(self, root: Path, cause: str = "none", reverse_cause: str = "none") -> None:
        self.sys_root = root
        (root / "module").mkdir(parents=True, exist_ok=True)
        self.cause, self.reverse_cause = cause, reverse_cause
        self.log: list[str] = []
        self.tsc_khz = 2600000

    def load(self, ko: Path) -> None:
        name = ko.name[:-3].replace("-", "_")
        if self.loaded(name):
            raise OSError(17, "File exists")
        self.log.append(f"load {name}")
        d = self.attr_dir(name)
        d.mkdir(parents=True)
        for f, v in (("stage", "prepared"), ("abort_cause", "none"), ("pause_us", "0.000"),
                     ("functions", "loadavg_proc_show ffffffff81000000 ok")):
            (d / f).write_text(v + "\n")
        if name.endswith("_helper"):
            (d / "runpre").write_text("not run\n")

    def unload(self, name: str) -> None:
        if not self.loaded(name):
            raise OSError(2, "No such file or directory")
        if self.read(name, "stage") == "applied":
            raise OSError(11, "Resource temporarily unavailable")
        self.log.append(f"unload {name}")
        d = self.attr_dir(name)
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
        d.parent.rmdir()

    def write(self, module: str, attr: str, value: str) -> None:
        self.log.append(f"write {module} {attr} {value}")
        cause = self.cause if value == "apply" else self.reverse_cause
        (self.attr_dir(module) / "abort_cause").write_text(cause + "\n")
        status = "failed 0" if cause == "no_match" else "found ffffffff81234560"
        helper = self.attr_dir(module + "_helper")
        if helper.is_dir():
            (helper / "runpre").write_text(f"loadavg_proc_show {status}\n")
        if cause != "none":
            raise OSError(16, "Device or resource busy")
        stage = "applied" if value == "apply" else "reversed"
        (self.attr_dir(module) / "stage").write_text(stage + "\n")
        (self.attr_dir(module) / "pause_us").write_text("612.345\n")
        (self.attr_dir(module) / "timing").write_text(f"pause_ns 612345\ntsc_khz {self.tsc_khz}\n")


def make_tarball(path: Path, update_id: str = ID, *, extra: dict[str, bytes] | None = None,
                 skip: tuple[str, ...] = (), top: str | None = None) -> Path:
    top = top or f"ksplice-{update_id}"
    files = {f"{top}/patch": b"--- a\n+++ b\n",
             f"{top}/ksplice-{update_id}.ko": b"\x7fELF primary",
             f"{top}/ksplice-{update_id}-helper.ko": b"\x7fELF helper"}
    files.update(extra or {})
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            if any(name.endswith(s) for s in skip):
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def root_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def run(fn, argv: list[str], kernel: FakeKernel, capsys) -> tuple[int, str, str]:
    try:
        code = fn(argv, kernel)
    except apply.UserError as e:
        print(f"ksplice: {e}", file=__import__("sys").stderr)
        code = 1
    out = capsys.readouterr()
    return code, out.out, out.err


def test_extract_finds_both_modules(tmp_path: Path) -> None:
    pkg = apply.extract_package(make_tarball(tmp_path / "u.tar.gz"), tmp_path / "x")
    assert pkg.id == ID
    assert pkg.primary.read_bytes() == b"\x7fELF primary"
    assert pkg.helper.name == f"ksplice-{ID}-helper.ko"


@pytest.mark.parametrize("kwargs, message", [
    ({"skip": ("-helper.ko",)}, "missing"),
    ({"top": "ksplice-ABC"}, "not a ksplice-<id> directory"),
    ({"extra": {"other/file": b"x"}}, "one ksplice-<id> directory"),
    ({"extra": {f"ksplice-{ID}/../../evil": b"x"}}, "not a usable"),
])
def test_extract_refuses_bad_tarballs(tmp_path: Path, kwargs, message: str) -> None:
    with pytest.raises(apply.ApplyError, match=message):
        apply.extract_package(make_tarball(tmp_path / "u.tar.gz", **kwargs), tmp_path / "x")
    assert not (tmp_path / "evil").exists()


def test_extract_refuses_links_and_junk(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "l.tar", "w") as tf:
        info = tarfile.TarInfo(f"ksplice-{ID}/ksplice-{ID}.ko")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(apply.ApplyError):
        apply.extract_package(tmp_path / "l.tar", tmp_path / "x")
    (tmp_path / "junk.tar.gz").write_text("junk")
    with pytest.raises(apply.ApplyError, match="not a usable") as exc:
        apply.extract_package(tmp_path / "junk.tar.gz", tmp_path / "y")
    assert "\n" not in str(exc.value)
    with pytest.raises(apply.ApplyError, match="no such file"):
        apply.extract_package(tmp_path / "nope.tar.gz", tmp_path / "z")


def test_apply_loads_applies_and_unloads_helper(tmp_path: Path, capsys, root_user) -> None:
    k = FakeKernel(tmp_path / "sys")
    code, out, _ = run(apply._apply, [str(make_tarball(tmp_path / "u.tar.gz"))], k, capsys)
    assert code == 0 and out == "Done!\n"  # run-pre's results: ksplice-view
    assert k.log == [f"load ksplice_{ID}", f"load ksplice_{ID}_helper",
                     f"write ksplice_{ID} stage apply", f"unload ksplice_{ID}_helper"]
    assert k.update_ids() == [ID]


def test_apply_reports_unneeded_mismatches_after_done(tmp_path: Path, capsys,
                                                      root_user) -> None:
    """A pre function that failed but that the update does not need: applied, and said."""
    k = FakeKernel(tmp_path / "sys")
    real_write = k.write

    def write(module: str, attr: str, value: str) -> None:
        real_write(module, attr, value)
        (k.attr_dir(module + "_helper") / "runpre").write_text(
            "loadavg_proc_show found ffffffff81234560\nproc_loadavg_other failed 0\n")

    k.write = write  # type: ignore[method-assign]
    code, out, _ = run(apply._apply, [str(make_tarball(tmp_path / "u.tar.gz"))], k, capsys)
    assert code == 0 and out == ("Done!\n"
                                 "run-pre: proc_loadavg_other: failed, not needed by the update\n")
    assert k.update_ids() == [ID] and k.log[-1] == f"unload ksplice_{ID}_helper"


@pytest.mark.parametrize("cause, text", [
    ("no_match", "(no match)"), ("code_busy", "(code busy)"),
    ("map_mismatch", "(System.map mismatch)"), ("traced", "ftrace"),
])
def test_apply_abort_explains_and_unloads_everything(tmp_path: Path, capsys, root_user,
                                                     cause: str, text: str) -> None:
    k = FakeKernel(tmp_path / "sys", cause=cause)
    code, out, err = run(apply._apply, [str(make_tarball(tmp_path / "u.tar.gz"))], k, capsys)
    # no_match also says, on stdout, which functions run-pre matching failed on
    assert code == 1 and out == ("run-pre: loadavg_proc_show: failed\n"
                                 if cause == "no_match" else "")
    assert len(err.splitlines()) == 1 and "Aborted:" in err and text in err
    assert k.update_ids() == [] and k.log[-2:] == [f"unload ksplice_{ID}_helper",
                                                   f"unload ksplice_{ID}"]


def test_apply_twice_is_already_applied(tmp_path: Path, capsys, root_user) -> None:
    k = FakeKernel(tmp_path / "sys")
    t = str(make_tarball(tmp_path / "u.tar.gz"))
    assert run(apply._apply, [t], k, capsys)[0] == 0
    code, _out, err = run(apply._apply, [t], k, capsys)
    assert code == 1 and "already applied" in err
    assert k.update_ids() == [ID]


def test_view_and_undo(tmp_path: Path, capsys, root_user) -> None:
    k = FakeKernel(tmp_path / "sys")
    code, out, _ = run(apply._view, [], k, capsys)
    assert code == 0 and out == "No ksplice updates are loaded.\n"
    run(apply._apply, [str(make_tarball(tmp_path / "u.tar.gz"))], k, capsys)
    code, out, _ = run(apply._view, ["--id", ID], k, capsys)
    assert code == 0
    assert out.splitlines() == [f"ksplice-{ID}: applied", "  functions: loadavg_proc_show",
                                "  stop_machine pause: 612.345 us",
                                "  run-pre: loadavg_proc_show: found at 0xffffffff81000000"]
    assert run(apply._view, ["--id", "zzzzzzzz"], k, capsys)[0] == 1
    k.tsc_khz = 0
    k.write(f"ksplice_{ID}", "stage", "apply")
    out = run(apply._view, ["--id", ID], k, capsys)[1]
    assert "  stop_machine pause: 612.345 us (kernel clock: this kernel has no TSC rate)" in out
    code, out, _ = run(apply._undo, [ID], k, capsys)
    assert code == 0 and out == "Done!\n" and k.update_ids() == []
    assert f"write ksplice_{ID} stage reverse" in k.log


def test_undo_abort_keeps_the_update(tmp_path: Path, capsys, root_user) -> None:
    k = FakeKernel(tmp_path / "sys", reverse_cause="code_busy")
    run(apply._apply, [str(make_tarball(tmp_path / "u.tar.gz"))], k, capsys)
    code, _out, err = run(apply._undo, [ID], k, capsys)
    assert code == 1 and "(code busy)" in err and "stays applied" in err
    assert k.update_ids() == [ID]


@pytest.mark.parametrize("argv", [["NOT-AN-ID"], ["zzzzzzzz"]])
def test_undo_bad_input(tmp_path: Path, capsys, root_user, argv: list[str]) -> None:
    k = FakeKernel(tmp_path / "sys")
    code, out, err = run(apply._undo, argv, k, capsys)
    assert code == 1 and out == "" and len(err.splitlines()) == 1


def test_not_root_is_refused(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    k = FakeKernel(tmp_path / "sys")
    code, _out, err = run(apply._apply, [str(make_tarball(tmp_path / "u.tar.gz"))], k, capsys)
    assert code == 1 and "root" in err and k.log == []


def test_main_entry_points_print_one_line(capsys, tmp_path: Path, root_user) -> None:
    assert apply.apply_main([str(tmp_path / "missing.tar.gz")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("ksplice-apply: ")
    assert "no such file" in err
    assert apply.main([]) == 2


def test_runpre_results_are_parsed_and_shown() -> None:
    got = apply.parse_runpre("loadavg_proc_show found ffffffff81234560\n"
                             "do_umask failed 0\nbad line\n")
    assert got == (apply.RunPre("loadavg_proc_show", "found", 0xffffffff81234560),
                   apply.RunPre("do_umask", "failed", 0))
    assert apply.parse_runpre("not run\n") == ()
    assert apply.format_runpre(got) == ["run-pre: loadavg_proc_show: found at 0xffffffff81234560",
                                        "run-pre: do_umask: failed"]


def test_a_no_match_abort_prints_each_functions_run_pre_result(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = FakeKernel(tmp_path / "sys", cause="no_match")
    pkg = apply.extract_package(make_tarball(tmp_path / f"ksplice-{ID}.tar.gz"), tmp_path / "x")
    with pytest.raises(apply.ApplyError, match="Aborted"):
        apply.apply_package(kernel, pkg)
    assert "run-pre: loadavg_proc_show: failed" in capsys.readouterr().out


def test_view_shows_where_run_pre_found_each_function(tmp_path: Path) -> None:
    kernel = FakeKernel(tmp_path / "sys")
    pkg = apply.extract_package(make_tarball(tmp_path / f"ksplice-{ID}.tar.gz"), tmp_path / "x")
    apply.apply_package(kernel, pkg)
    text = apply.format_view(apply.view_update(kernel, ID))
    # the helper is gone: the primary's functions file gives the address run-pre settled
    assert "run-pre: loadavg_proc_show: found at 0xffffffff81000000" in text


def test_parse_timing_skips_lines_that_are_not_a_name_and_a_count() -> None:
    text = "pause_ns 8000500\ntries 1\ntsc_khz 0\nclock jiffies\n\nodd 1 2\n"
    assert apply.parse_timing(text) == {"pause_ns": 8000500, "tries": 1, "tsc_khz": 0}
    assert apply.parse_timing("") == {}
