# SPDX-License-Identifier: GPL-2.0-only
"""The one reader of Kbuild's .cmd files: object, source, deps and the command line."""

from __future__ import annotations

from pathlib import Path

from ksplice_tasks.tree import cmdfile

# What Linux 6.1 writes (6.3 and later say savedcmd_), trimmed.
CMD_61 = b"""cmd_fs/proc/loadavg.o := gcc -Wp,-MMD,fs/proc/.loadavg.o.d -nostdinc \
-DKBUILD_MODFILE='"fs/proc/loadavg"' -DKBUILD_BASENAME='"loadavg"' -DX='a;b' \
-c -o fs/proc/loadavg.o /src/linux/fs/proc/loadavg.c ; \
./tools/objtool/objtool --hacks=jump_label --uaccess   fs/proc/loadavg.o

source_fs/proc/loadavg.o := /src/linux/fs/proc/loadavg.c

deps_fs/proc/loadavg.o := \\
  include/linux/kconfig.h \\
    $(wildcard include/config/CPU_BIG_ENDIAN) \\
  /src/linux/fs/proc/internal.h \\

fs/proc/loadavg.o: $(deps_fs/proc/loadavg.o)

$(deps_fs/proc/loadavg.o):
"""


def test_parse_a_61_cmd_file() -> None:
    cmd = cmdfile.parse(CMD_61)
    assert (cmd.object, cmd.source) == ("fs/proc/loadavg.o", "/src/linux/fs/proc/loadavg.c")
    assert cmd.deps == {"include/linux/kconfig.h", "/src/linux/fs/proc/internal.h"}
    assert cmd.command is not None and cmd.command.startswith("gcc -Wp,-MMD")
    compile_, objtool = cmd.commands()
    assert compile_[:2] == ["gcc", "-Wp,-MMD,fs/proc/.loadavg.o.d"]
    assert '-DKBUILD_MODFILE="fs/proc/loadavg"' in compile_ and "-DX=a;b" in compile_
    assert compile_[-3:] == ["-o", "fs/proc/loadavg.o", "/src/linux/fs/proc/loadavg.c"]
    assert objtool == ["./tools/objtool/objtool", "--hacks=jump_label", "--uaccess",
                       "fs/proc/loadavg.o"]


def test_savedcmd_and_files_without_a_source() -> None:
    link = cmdfile.parse(b"savedcmd_vmlinux.a := rm -f vmlinux.a; ar cDPrST vmlinux.a x.o\n")
    assert (link.object, link.source, link.deps) == (None, None, set())
    assert link.commands() == [["rm", "-f", "vmlinux.a"], ["ar", "cDPrST", "vmlinux.a", "x.o"]]
    assert cmdfile.parse(b"").commands() == []


def test_paths_and_reading(tmp_path: Path) -> None:
    assert cmdfile.cmd_path(tmp_path, "fs/proc/loadavg.o") == (
        tmp_path / "fs/proc/.loadavg.o.cmd")
    assert cmdfile.is_object_cmd(".loadavg.o.cmd") and not cmdfile.is_object_cmd(".vmlinux.cmd")
    assert cmdfile.read(tmp_path, "fs/proc/loadavg.o") is None
    (tmp_path / "fs/proc").mkdir(parents=True)
    cmdfile.cmd_path(tmp_path, "fs/proc/loadavg.o").write_bytes(CMD_61)
    assert cmdfile.read(tmp_path, "fs/proc/loadavg.o") == cmdfile.parse(CMD_61)
