# SPDX-License-Identifier: GPL-2.0-only
"""A pre build counts as done only when Kbuild has nothing left to build but the links."""

from __future__ import annotations

import signal
from pathlib import Path

from ksplice_tasks import graph
from ksplice_tasks.stages import prebuild
from ksplice_tasks.stages.inputs import Settings
from ksplice_tasks.tree import kbuild

# make -n of a tree whose pre build was stopped (shapes as Kbuild 6.1 prints them).
DRY_RUN = """\
make -f ./scripts/Makefile.build obj=kernel need-builtin=1 need-modorder=1
set -e;  echo '  CC      kernel/fork.o'; gcc -c -o kernel/fork.o kernel/fork.c
set -e;  echo '  CC [M]  fs/binfmt_misc.o'; gcc -c -o fs/binfmt_misc.o fs/binfmt_misc.c
set -e;  echo '  CC [M]  fs/binfmt_misc.o'; gcc -c -o fs/binfmt_misc.o fs/binfmt_misc.c
echo '  HOSTCC  scripts/basic/fixdep'; gcc -o scripts/basic/fixdep scripts/basic/fixdep.c
set -e;  echo '  CC      init/version-timestamp.o'; gcc -c -o init/version-timestamp.o x.c
echo '  LD      .tmp_vmlinux.kallsyms1'; ld -o .tmp_vmlinux.kallsyms1
set -e;  echo '  AS      arch/x86/boot/header.o'; gcc -c -o arch/x86/boot/header.o h.S
set -e;  echo '  CC [M]  fs/binfmt_misc.mod.o'; gcc -c -o fs/binfmt_misc.mod.o m.c
"""
LINK_ONLY = """\
set -e;  echo '  CC      init/version-timestamp.o'; gcc -c -o init/version-timestamp.o x.c
echo '  LD      vmlinux.o'; ld -r -o vmlinux.o
echo '  LD      .tmp_vmlinux.kallsyms1'; ld -o .tmp_vmlinux.kallsyms1
"""


def test_parse_outstanding() -> None:
    got = kbuild.parse_outstanding(DRY_RUN)
    assert got[:3] == [("CC", "kernel/fork.o"), ("CC [M]", "fs/binfmt_misc.o"),
                       ("HOSTCC", "scripts/basic/fixdep")]
    assert len(got) == 7  # each step once
    assert kbuild.parse_outstanding("make: Nothing to be done for 'all'.\n") == []


def test_unbuilt_objects_leave_out_the_link_stage() -> None:
    assert prebuild.unbuilt_objects(kbuild.parse_outstanding(DRY_RUN)) == [
        "kernel/fork.o", "fs/binfmt_misc.o"]
    assert prebuild.unbuilt_objects(kbuild.parse_outstanding(LINK_ONLY)) == []


def test_when_a_pre_build_counts_as_done() -> None:
    full, targeted = prebuild.FULL, prebuild.TARGETED
    stopped = kbuild.parse_outstanding(DRY_RUN)
    link_only = kbuild.parse_outstanding(LINK_ONLY)
    assert prebuild.unfinished(full, 0, stopped) is None  # make's word is final
    # the seed's tolerated failure: only the vmlinux link is left
    assert prebuild.unfinished(full, 2, link_only) is None
    # failed before its objects were compiled (the rc 2, 166/503 objects)
    assert prebuild.unfinished(full, 2, stopped) == ["kernel/fork.o", "fs/binfmt_misc.o"]
    # killed: never done, even at the link
    assert prebuild.unfinished(full, -signal.SIGTERM, link_only) == [
        "init/version-timestamp.o", "vmlinux.o", ".tmp_vmlinux.kallsyms1"]
    assert prebuild.unfinished(full, -signal.SIGKILL, []) == []
    # make prepare must succeed
    assert prebuild.unfinished(targeted, 2, []) == []
    assert prebuild.make_failure(-15) == "make was killed by SIGTERM"
    assert prebuild.make_failure(2) == "make exited 2"


def _settings(tmp_path: Path) -> Settings:
    ksrc, orig = tmp_path / "linux", tmp_path / "orig"
    ksrc.mkdir()
    orig.mkdir()
    return Settings(ksrc=ksrc, orig=orig, postdir=orig / "post", jobs=1)


def test_unfinished_record_refuses_create(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert prebuild.unfinished_message(s) is None
    prebuild.record_unfinished(s, prebuild.FULL, "make was killed by SIGTERM",
                               [f"kernel/f{i}.o" for i in range(12)])
    msg = prebuild.unfinished_message(s)
    assert msg == (f"the pre build of {s.ksrc} did not finish (make was killed by SIGTERM); "
                   "not built: kernel/f0.o, kernel/f1.o, kernel/f2.o, kernel/f3.o, "
                   f"kernel/f4.o and 7 more; run `ksplice-create --prebuild --config={s.orig} "
                   f"{s.ksrc}` to finish it")
    plan = graph.plan_create(s)
    assert isinstance(plan, Exception) and str(plan) == msg
    assert not prebuild.pre_tree_unchanged(s)
    prebuild.record_unfinished(s, prebuild.TARGETED, prebuild.INTERRUPTED, None)
    assert prebuild.unfinished_message(s).startswith(
        f"the pre build of {s.ksrc} did not finish (it was interrupted); run ")
    s.layout.pre_unfinished.write_text("{broken")
    assert "(it was interrupted)" in prebuild.unfinished_message(s)
