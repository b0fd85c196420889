# SPDX-License-Identifier: GPL-2.0-only
from __future__ import annotations

from pathlib import Path

from ksplice_tasks.stages import package, postbuild
from ksplice_tasks.tree import cmdfile

CMD = b"""savedcmd_fs/proc/loadavg.o := gcc -Wp,-MMD,fs/proc/.loadavg.o.d -c -o fs/proc/loadavg.o \
fs/proc/loadavg.c

source_fs/proc/loadavg.o := fs/proc/loadavg.c

deps_fs/proc/loadavg.o := \\
  include/linux/compiler-version.h \\
    $(wildcard include/config/CC_VERSION_TEXT) \\
  include/linux/kconfig.h \\
  fs/proc/internal.h \\

fs/proc/loadavg.o: $(deps_fs/proc/loadavg.o)

$(deps_fs/proc/loadavg.o):
"""


def test_parse_cmd() -> None:
    cmd = cmdfile.parse(CMD)
    obj, source, deps = cmd.object, cmd.source, cmd.deps
    assert (obj, source) == ("fs/proc/loadavg.o", "fs/proc/loadavg.c")
    assert deps == {"include/linux/compiler-version.h", "include/linux/kconfig.h",
                    "fs/proc/internal.h"}
    link = cmdfile.parse(b"savedcmd_vmlinux.a := ar ...\n")
    assert (link.object, link.source, link.deps) == (None, None, set())


def test_affected_objects(tmp_path: Path) -> None:
    (tmp_path / "fs/proc").mkdir(parents=True)
    (tmp_path / "fs/proc/.loadavg.o.cmd").write_bytes(CMD)
    (tmp_path / "fs/proc/.other.o.cmd").write_bytes(
        CMD.replace(b"loadavg", b"other").replace(b"fs/proc/internal.h", b"x.h"))
    aff = postbuild.affected_objects
    assert aff(tmp_path, ["fs/proc/loadavg.c"]) == ["fs/proc/loadavg.o"]
    assert aff(tmp_path, ["fs/proc/internal.h"]) == ["fs/proc/loadavg.o"]
    assert aff(tmp_path, ["include/linux/kconfig.h"]) == ["fs/proc/loadavg.o",
                                                          "fs/proc/other.o"]
    assert aff(tmp_path, ["fs/proc/unbuilt.c"]) == []
    assert aff(tmp_path, ["fs/proc/Makefile"]) is None


def test_update_id_is_stable_and_sensitive() -> None:
    base = package.update_id(b"patch", ["-p1"], b"config", b"map")
    assert len(base) == 8 and base.isalnum() and base == base.lower()
    assert package.update_id(b"patch", ["-p1"], b"config", b"map") == base
    others = {package.update_id(b"patch2", ["-p1"], b"config", b"map"),
              package.update_id(b"patch", ["-p0"], b"config", b"map"),
              package.update_id(b"patch", ["-p1"], b"config2", b"map"),
              package.update_id(b"patch", ["-p1"], b"config", b"map2")}
    assert base not in others and len(others) == 4


def test_pack_layout(tmp_path: Path) -> None:
    import tarfile

    for n in ("patch", "p.ko", "h.ko"):
        (tmp_path / n).write_text(n)
    (tmp_path / "dbg").mkdir()
    (tmp_path / "dbg" / "x.json").write_text("{}")
    out = package.pack(tmp_path / "out" / "ksplice-abcd1234.tar.gz", "abcd1234",
                       tmp_path / "patch", tmp_path / "p.ko", tmp_path / "h.ko",
                       [("collect", tmp_path / "dbg")])
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == [
            "ksplice-abcd1234", "ksplice-abcd1234/debug",
            "ksplice-abcd1234/debug/collect/x.json", "ksplice-abcd1234/h.ko",
            "ksplice-abcd1234/p.ko", "ksplice-abcd1234/patch"]


def test_full_build_counts_only_objects_the_image_or_modules_link(tmp_path: Path) -> None:
    """A relink rebuilds boot stubs and version stamps: never candidates (issue 11 kind 3)."""
    import os
    import subprocess

    pre, post = tmp_path / "pre", tmp_path / "post"
    objs = ["fs/proc/loadavg.o", "init/version-timestamp.o", "arch/x86/boot/main.o",
            "arch/x86/entry/vdso/vclock_gettime.o", "fs/binfmt_misc.o", "kernel/fork.o"]
    for rel in objs:
        (pre / rel).parent.mkdir(parents=True, exist_ok=True)
        (pre / rel).write_bytes(b"pre")
        (post / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(pre / rel, post / rel)
    for rel in objs[:5]:  # the relink rebuilt all but kernel/fork.o
        (post / rel).unlink()
        (post / rel).write_bytes(b"post")
    # never linked (no vmlinux.a): only link products are known, by name
    assert sorted(postbuild.full_build_candidates(pre, post)) == sorted(objs[:5])
    subprocess.run(["ar", "cDPrST", "vmlinux.a", "fs/proc/loadavg.o", "kernel/fork.o"],
                   cwd=post, check=True)
    (post / "modules.order").write_text("fs/binfmt_misc.ko\n")
    (post / "fs/binfmt_misc.mod").write_text("fs/binfmt_misc.o\n")
    assert sorted(postbuild.full_build_candidates(pre, post)) == ["fs/binfmt_misc.o",
                                                                  "fs/proc/loadavg.o"]
