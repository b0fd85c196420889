# SPDX-License-Identifier: GPL-2.0-only
"""`--prebuild` on the real Linux 6.1 tree: builds once, then does nothing; the pre tree is safe."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from helpers import Prebuilt, run_create, run_doit

from ksplice_tasks.stages.inputs import POST_MARKER, STATE_DIRNAME
from ksplice_tasks.tree import kbuild, snapshot

pytestmark = pytest.mark.kernel


def test_pre_build_has_one_section_per_function(prebuilt_smp: Prebuilt) -> None:
    with open(prebuilt_smp.ksrc / "fs/proc/loadavg.o", "rb") as f:
        names = {s.name for s in ELFFile(f).iter_sections()}
    assert ".text.loadavg_proc_show" in names
    assert (prebuilt_smp.ksrc / ".config").read_bytes() == (
        prebuilt_smp.orig / ".config").read_bytes()
    assert (prebuilt_smp.postdir / POST_MARKER).is_file()


def test_rerun_does_nothing(prebuilt_smp: Prebuilt) -> None:
    res = run_create("--prebuild", f"--config={prebuilt_smp.orig}", str(prebuilt_smp.ksrc))
    assert res.returncode == 0, res.stderr
    assert "Nothing to do: everything is up to date." in res.stdout
    assert "==>" not in res.stdout


def test_doit_front_end_shares_the_state(prebuilt_smp: Prebuilt, tmp_path: Path) -> None:
    res = run_doit(tmp_path, "prebuild", f"KSRC={prebuilt_smp.ksrc}",
                   f"ORIG={prebuilt_smp.orig}")
    assert res.returncode == 0, res.stderr
    assert "Nothing to do" in res.stdout and "==>" not in res.stdout
    # the persisted variables keep `doit list` and a bare rerun truthful
    again = run_doit(tmp_path, "prebuild")
    assert again.returncode == 0 and "Nothing to do" in again.stdout


def test_touching_a_source_reruns_the_pre_build(prebuilt_smp: Prebuilt) -> None:
    src = prebuilt_smp.ksrc / "fs/proc/loadavg.c"
    st = src.stat()
    os.utime(src)  # now: newer than its object
    try:
        res = run_create("--prebuild", f"--config={prebuilt_smp.orig}", str(prebuilt_smp.ksrc))
        assert res.returncode == 0, res.stderr
        assert "==> pre_build" in res.stdout and "==> post_snapshot" in res.stdout
        log = (prebuilt_smp.orig / STATE_DIRNAME / "logs" / "pre-build.log").read_text()
        compiled = [ln.split()[-1] for ln in log.splitlines() if kbuild.compiled_object(ln)]
        assert "fs/proc/loadavg.o" in compiled
        assert len(compiled) < 20, compiled  # the object and the vmlinux link steps only
    finally:
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
        # loadavg.o is now newer than its (restored) source: still up to date for make
        res = run_create("--prebuild", f"--config={prebuilt_smp.orig}", str(prebuilt_smp.ksrc))
        assert res.returncode == 0, res.stderr


def test_pre_tree_unchanged_by_snapshot_and_post_build(prebuilt_smp: Prebuilt,
                                                       tmp_path: Path) -> None:
    ksrc = prebuilt_smp.ksrc
    exclude = [prebuilt_smp.orig]
    before = snapshot.tree_digest(ksrc, exclude)
    post = tmp_path / "post"
    res = run_create("--prebuild", f"--config={prebuilt_smp.orig}", f"--postdir={post}",
                     str(ksrc))
    assert res.returncode == 0, res.stderr
    assert snapshot.tree_digest(ksrc, exclude) == before

    # What create_update will do: patch(1) replaces a source, then make rebuilds.
    target = post / "fs/proc/loadavg.c"
    text = target.read_text().replace("seq_printf(m, \"%lu.%02lu",
                                      "seq_printf(m, \"KSPLICE %lu.%02lu", 1)
    assert "KSPLICE" in text
    tmp = target.with_name("loadavg.c.new")
    tmp.write_text(text)
    os.replace(tmp, target)
    shared = sum(1 for _r, e in snapshot.walk(post) if e.is_file(follow_symlinks=False)
                 and e.stat(follow_symlinks=False).st_nlink > 1)
    assert shared > 50_000
    argv = kbuild.make_argv(post, os.cpu_count() or 1)
    make = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert "CC      fs/proc/loadavg.o" in make.stdout, make.stdout[-2000:]
    compiled = [kbuild.compiled_object(ln) for ln in make.stdout.splitlines()]
    assert len([c for c in compiled if c]) < 20, "the post tree should rebuild incrementally"
    assert b"KSPLICE" in (post / "fs/proc/loadavg.o").read_bytes()
    assert snapshot.tree_digest(ksrc, exclude) == before
    assert b"KSPLICE" not in (ksrc / "fs/proc/loadavg.o").read_bytes()


def test_state_lives_in_orig_config(prebuilt_smp: Prebuilt) -> None:
    state = prebuilt_smp.orig / STATE_DIRNAME
    assert (state / "doit-db.json").is_file()
    assert (state / "pre-build.json").is_file()
    assert (state / "logs" / "pre-build.log").is_file()
