# SPDX-License-Identifier: GPL-2.0-only
"""The targeted prebuild on a real 6.1 tree (lp test config): make prepare, then per patch.

Its answers are checked against the full prebuild of the same config
(``prebuilt_lp``), whose Kbuild ``.cmd`` files say exactly which objects
read which headers, and whose objects were built by one whole-tree make.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import REPO, Prebuilt, create, tarball_from

from ksplice_tasks import artifacts
from ksplice_tasks.stages import postbuild, prebuild
from ksplice_tasks.stages.inputs import resolve
from ksplice_tasks.tree import cmdfile, deps, snapshot

CASES = Path(os.environ.get("KSPLICE_CASES", REPO.parent / "shared" / "cases"))
EXAMPLE = REPO / "ksplice_tasks" / "data" / "example-loadavg.patch"

# Headers of every reach: one directory's private header, a header two
# subsystems include, a scheduler-private header, and widely used ones.
HEADERS = ("fs/proc/internal.h", "include/linux/sched/loadavg.h", "kernel/sched/sched.h",
           "include/linux/proc_fs.h", "include/linux/seq_file.h",
           "arch/x86/include/asm/special_insns.h")


def settings(pb: Prebuilt):
    return resolve(pb.ksrc, orig=pb.orig)


def test_the_targeted_prebuild_builds_no_object(targeted_lp: Prebuilt) -> None:
    s = settings(targeted_lp)
    stamp = prebuild.load_stamp(s)
    assert stamp is not None and stamp.mode == prebuild.TARGETED
    assert (targeted_lp.ksrc / "scripts/mod/modpost").is_file()
    assert (targeted_lp.ksrc / "Module.symvers").read_bytes() == (
        targeted_lp.orig / "Module.symvers").read_bytes()
    assert not (targeted_lp.ksrc / "vmlinux.o").exists()
    assert stamp.objects_total > 500


def test_the_inventory_is_what_the_full_build_compiled(targeted_lp: Prebuilt,
                                                       prebuilt_lp: Prebuilt) -> None:
    """Every kernel object the whole-tree make compiled is in make -n's inventory, and back."""
    units, _ = prebuild.load_inventory(settings(targeted_lp).layout)
    # Not code of the running kernel: the bzImage's setup and decompressor
    # (arch/x86/boot), modpost's .mod.o, and objects made at the vmlinux link.
    link_time = re.compile(r"^(arch/x86/boot/|\.vmlinux\.export\.o$|init/version-timestamp\.o$)"
                           r"|\.mod\.o$")
    full = {o: src for o, src in kernel_objects(prebuilt_lp.ksrc, prebuilt_lp.orig).items()
            if not link_time.search(o)}
    assert len(full) > 500
    assert set(full) - set(units) == set()
    assert set(units) - set(full) == set()
    assert all(units[o].source == full[o] for o in full)


def kernel_objects(tree: Path, orig: Path) -> dict[str, str]:
    """object -> source for every object a full build compiled from C or assembler."""
    out = {}
    for _rel, entry in snapshot.walk(tree, [orig]):
        if cmdfile.is_object_cmd(entry.name):
            cmd = cmdfile.parse(Path(entry.path).read_bytes())
            if (cmd.object and cmd.source and cmd.command and "-D__KERNEL__" in cmd.command
                    and not cmd.object.startswith("/") and cmd.source.endswith((".c", ".S"))):
                out[cmd.object] = cmd.source
    return out


@pytest.mark.parametrize("header", HEADERS)
def test_a_header_patch_finds_every_object_that_reads_it(header: str, targeted_lp: Prebuilt,
                                                         prebuilt_lp: Prebuilt) -> None:
    """The include scan's objects include every object whose .cmd deps name the header."""
    units, scan = prebuild.load_inventory(settings(targeted_lp).layout)
    found, why = deps.affected_objects(units, scan, [header])
    assert found is not None, why
    truth = postbuild.affected_objects(prebuilt_lp.ksrc, [header]) or []
    truth = [o for o in truth if o in units]
    assert truth, f"no object of the lp config reads {header}?"
    missed = sorted(set(truth) - set(found))
    assert missed == [], f"{header}: the scan missed {missed}"
    # It over-approximates, but not wildly: at most 3x the truth plus the
    # objects built from generated sources (counted for any global header).
    generated = deps.object_source_missing(units, targeted_lp.ksrc)
    assert len(found) <= 3 * len(truth) + len(generated) + 5, (len(found), len(truth))


def test_a_c_patch_builds_one_pre_object_identical_to_the_full_builds(
        targeted_lp: Prebuilt, prebuilt_lp: Prebuilt, tmp_path: Path) -> None:
    res = create(targeted_lp, EXAMPLE, tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert tarball_from(res.stdout, tmp_path).is_file()
    record = artifacts.POST_BUILD.read(settings(targeted_lp).layout.create.post_build)
    assert record.mode == "targeted"
    assert record.targets == ["fs/proc/loadavg.o"]
    assert record.changed == ["fs/proc/loadavg.o"]
    # Pre objects built on demand are the full build's, byte for byte.
    s = settings(targeted_lp)
    sample = ["fs/proc/loadavg.o", "kernel/sys.o", "mm/mmap.o", "fs/proc/base.o",
              "arch/x86/kernel/process_64.o"]
    postbuild.build_objects(s, s.ksrc, sample, "pre objects")
    for obj in sample:
        assert (targeted_lp.ksrc / obj).read_bytes() == (prebuilt_lp.ksrc / obj).read_bytes(), obj


def test_a_second_patch_reuses_the_cached_pre_object(targeted_lp: Prebuilt,
                                                      tmp_path: Path) -> None:
    first = create(targeted_lp, EXAMPLE, tmp_path / "a")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    pre = targeted_lp.ksrc / "fs/proc/loadavg.o"
    before = pre.stat()
    other = tmp_path / "other.patch"
    other.write_text(EXAMPLE.read_text().replace("ksplice-loadavg ", "second-patch "))
    assert other.read_text() != EXAMPLE.read_text()
    second = create(targeted_lp, other, tmp_path / "b")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr
    after = pre.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert "pre objects: 0 compiled, 1 reused" in second.stdout, second.stdout[-2000:]


def test_the_header_case_changes_the_same_objects_as_the_full_build(
        targeted_lp: Prebuilt, tmp_path: Path) -> None:
    """shared case 12 (fs/proc/internal.h): the changed objects are those .cmd deps give."""
    patch = CASES / "12-header-inline-many-objects.patch"
    if not patch.is_file():
        pytest.fail(f"case 12 not found at {patch} (set KSPLICE_CASES)")
    res = create(targeted_lp, patch, tmp_path)
    record = artifacts.POST_BUILD.read(settings(targeted_lp).layout.create.post_build)
    assert record.mode == "targeted", res.stdout[-2000:] + res.stderr
    units, scan = prebuild.load_inventory(settings(targeted_lp).layout)
    assert record.targets == deps.affected_objects(units, scan, ["fs/proc/internal.h"])[0]
    assert {"fs/proc/base.o", "fs/proc/fd.o", "fs/proc/namespaces.o",
            "fs/proc/task_mmu.o"} <= set(record.changed), record.changed


def test_a_makefile_patch_is_refused_with_the_full_command(targeted_lp: Prebuilt,
                                                          tmp_path: Path) -> None:
    patch = tmp_path / "mk.patch"
    patch.write_text("--- a/fs/proc/Makefile\n+++ b/fs/proc/Makefile\n@@ -1,2 +1,3 @@\n"
                     + "".join(" " + line + "\n" for line in
                               (targeted_lp.ksrc / "fs/proc/Makefile").read_text()
                               .splitlines()[:2])
                     + "+# a comment\n")
    before = snapshot.tree_digest(targeted_lp.ksrc, [targeted_lp.orig])
    res = create(targeted_lp, patch, tmp_path / "out")
    assert res.returncode != 0
    assert "fs/proc/Makefile" in res.stderr + res.stdout
    assert "--prebuild --full" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr
    assert snapshot.tree_digest(targeted_lp.ksrc, [targeted_lp.orig]) == before
    assert (targeted_lp.postdir / "fs/proc/Makefile").read_bytes() == (
        targeted_lp.ksrc / "fs/proc/Makefile").read_bytes()
