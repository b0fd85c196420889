# SPDX-License-Identifier: GPL-2.0-only
from __future__ import annotations

import io
import sys
from pathlib import Path

from ksplice_tasks.tree import kbuild


def test_compiled_object_lines() -> None:
    assert kbuild.compiled_object("  CC      kernel/fork.o") == "kernel/fork.o"
    assert kbuild.compiled_object("  CC [M]  fs/ext4/inode.o") == "fs/ext4/inode.o"
    assert kbuild.compiled_object("  AS      arch/x86/entry/entry_64.o") == (
        "arch/x86/entry/entry_64.o")
    assert kbuild.compiled_object("  LD      vmlinux.o") is None
    assert kbuild.compiled_object("  CC      kernel/bounds.s") is None
    assert kbuild.compiled_object("kernel/fork.c:12: error: x") is None


def test_make_argv_pre_build_in_tree() -> None:
    argv = kbuild.make_argv(Path("/k"), 2, ["vmlinux"])
    assert argv == ["make", "-C", "/k", "-j2",
                    "CFLAGS_KERNEL=-ffunction-sections -fdata-sections",
                    "CFLAGS_MODULE=-ffunction-sections -fdata-sections", "vmlinux"]


def test_make_argv_ordinary_out_of_tree() -> None:
    argv = kbuild.make_argv(Path("/k"), 4, build_dir=Path("/b"), section_flags=False)
    assert argv == ["make", "-C", "/k", "-j4", "O=/b"]


def test_progress_counts_and_reports_totals() -> None:
    out = io.StringIO()
    p = kbuild.Progress("pre build", total=3, out=out, interval=0.0)
    p.start()
    for line in ["  CC      a.o", "  LD      x", "  CC [M]  b.o", "  AS      c.o"]:
        p.feed(line)
    p.report(final=True)
    text = out.getvalue().splitlines()
    assert text[0] == "pre build: started"
    assert text[1:4] == ["pre build: 1/3 objects compiled", "pre build: 2/3 objects compiled",
                         "pre build: 3/3 objects compiled"]
    assert text[-1] == "pre build: 3/3 objects compiled (done)"


def test_run_make_logs_and_counts(tmp_path: Path) -> None:
    script = "print('  CC      a.o'); print('  CC      b.o'); raise SystemExit(3)"
    out = io.StringIO()
    res = kbuild.run_make([sys.executable, "-c", script], tmp_path / "logs" / "b.log",
                          kbuild.Progress("x", out=out))
    assert (res.returncode, res.objects) == (3, 2)
    assert (tmp_path / "logs" / "b.log").read_text() == "  CC      a.o\n  CC      b.o\n"


def test_error_excerpt_prefers_error_lines(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    log.write_text("  CC a.o\nfs/x.c:3:1: error: expected ';'\nwarning: meh\n"
                   "make[2]: *** [x] Error 1\n  CC b.o\n")
    assert kbuild.error_excerpt(log) == "fs/x.c:3:1: error: expected ';' (+1 more error lines)"
    log.write_text("  CC a.o\nmake[2]: *** [x] Error 1\nmake: *** [all] Error 2\n")
    assert kbuild.error_excerpt(log) == "make[2]: *** [x] Error 1 (+1 more error lines)"
    log.write_text("  LD vmlinux\nKilled\n")
    assert kbuild.error_excerpt(log) == "Killed"
    assert kbuild.error_excerpt(tmp_path / "none.log") == ""
