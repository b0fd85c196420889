# SPDX-License-Identifier: GPL-2.0-only
from __future__ import annotations

from pathlib import Path

from ksplice_tasks.testing import qemu


def test_init_script_mounts_and_reports_status() -> None:
    plain = qemu.init_script(hostfs=False)
    assert plain.startswith("#!/bin/busybox sh\n")
    assert "mount -t devtmpfs" in plain and "9p" not in plain
    assert plain.rstrip().endswith("reboot -f")
    host = qemu.init_script(hostfs=True)
    assert "-t 9p -o trans=virtio,version=9p2000.L,ro" in host
    assert "mount -t tmpfs tmpfs /host/run" in host and "/host/tmp" not in host
    assert "export TMPDIR=/run" in host


def test_cpio_list_creates_parent_dirs_once() -> None:
    text = qemu.cpio_list(Path("/t/init"), Path("/t/g.sh"),
                          [("/lib/modules/a.ko", Path("/x/a.ko")),
                           ("/lib/modules/b.ko", Path("/x/b.ko"))])
    lines = text.splitlines()
    assert "nod /dev/console 0600 0 0 c 5 1" in lines
    assert lines.count("dir /lib 0755 0 0") == 1
    assert lines.count("dir /lib/modules 0755 0 0") == 1
    assert "file /lib/modules/b.ko /x/b.ko 0644 0 0" in lines


def test_qemu_argv_smp_and_hostfs() -> None:
    argv = qemu.qemu_argv(Path("bz"), Path("rd"), cpus=2, hostfs=True)
    assert argv[argv.index("-smp") + 1] == "2,sockets=2,cores=1"
    assert "-no-reboot" in argv and argv[argv.index("-accel") + 1] == "tcg"
    assert any(a.startswith("local,path=/,mount_tag=hostroot") for a in argv)
    assert "-smp" not in qemu.qemu_argv(Path("bz"), Path("rd"))


def test_parse_status_takes_the_last_report() -> None:
    assert qemu.parse_status("x\nKSPLICE-GUEST-EXIT=0\n") == 0
    assert qemu.parse_status("KSPLICE-GUEST-EXIT=3\nKSPLICE-GUEST-EXIT=7\n") == 7
    assert qemu.parse_status("Kernel panic - not syncing") is None


def test_guest_output_is_between_the_marks() -> None:
    r = qemu.BootResult("boot noise\nKSPLICE-GUEST-BEGIN\nhello\nKSPLICE-GUEST-EXIT=0\n",
                        0, False, 1.0)
    assert r.guest_output == "\nhello\n" and r.ok
