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


def test_qemu_argv_gives_a_trusted_rdrand() -> None:
    argv = qemu.qemu_argv(Path("bz"), Path("rd"), append="nokaslr")
    assert argv[argv.index("-cpu") + 1] == "qemu64,+rdrand"
    cmdline = argv[argv.index("-append") + 1].split()
    assert "random.trust_cpu=on" in cmdline and cmdline[-1] == "nokaslr"


def test_parse_status_takes_the_last_report() -> None:
    assert qemu.parse_status("x\nKSPLICE-GUEST-EXIT=0\n") == 0
    assert qemu.parse_status("KSPLICE-GUEST-EXIT=3\nKSPLICE-GUEST-EXIT=7\n") == 7
    assert qemu.parse_status("Kernel panic - not syncing") is None


def test_guest_output_is_between_the_marks() -> None:
    r = qemu.BootResult("boot noise\nKSPLICE-GUEST-BEGIN\nhello\nKSPLICE-GUEST-EXIT=0\n",
                        0, False, 1.0)
    assert r.guest_output == "\nhello\n" and r.ok


# qemu 7.2's `info registers -a` for a 64-bit guest, cut to the lines parse_registers reads
_REGISTERS = (
    "(qemu) info registers -a\r\n\r\nCPU#0\r\n"
    "RAX=0000000000000000 RBX=ffffffff82a0f940 RCX=0000000000000001 RDX=0000000000000000\r\n"
    "RSI=0000000000000000 RDI=0000000000000000 RBP=0000000000000000 RSP=ffffc90000013e80\r\n"
    "RIP=ffffffff9c0531a4 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\r\n"
    "ES =0000 0000000000000000 00000000 00000000\r\n\r\nCPU#1\r\n"
    "RSI=0000000000000000 RDI=0000000000000000 RBP=0000000000000000 RSP=00007ffd1c2b3a10\r\n"
    "RIP=000000000040a1b2 RFL=00000202 [-------] CPL=3 II=0 A20=1 SMM=0 HLT=0\r\n(qemu) "
)
# and its `x/4gx` answer
_WORDS = ("(qemu) x/4gx 0xffffc90000013e80\r\n"
          "ffffc90000013e80: 0xffffffff9c053180 0x0000000000000010\r\n"
          "ffffc90000013e90: 0xffffffff9c053210 0xffff888003c1a000\r\n(qemu) ")

# and its `x/5bx`
_CODE = ("(qemu) x/5bx 0xffffffff9c0531a4\r\n"
         "ffffffff9c0531a4: 0x0f 0x1f 0x44 0x00 0x00\r\n(qemu) ")


def test_parse_registers_reads_each_vcpu() -> None:
    assert qemu.parse_registers(_REGISTERS) == [
        qemu.VcpuState(0, 0xffffffff9c0531a4, 0xffffc90000013e80, 0, True),
        qemu.VcpuState(1, 0x40a1b2, 0x7ffd1c2b3a10, 3, False),
    ]
    assert qemu.parse_registers("") == []


def test_parse_words_reads_the_memory_dump() -> None:
    assert qemu.parse_words(_WORDS) == [0xffffffff9c053180, 0x10, 0xffffffff9c053210,
                                        0xffff888003c1a000]
    assert qemu.parse_words("(qemu) ") == []
    assert qemu.parse_bytes(_CODE) == bytes.fromhex("0f1f440000")
    assert qemu.parse_words(_CODE) == [] and qemu.parse_bytes(_WORDS) == b""


def test_hang_lines_name_kernel_rips_and_stacks_through_the_kaslr_slide(tmp_path: Path) -> None:
    smap = tmp_path / "System.map"
    smap.write_text("ffffffff81000000 T _text\nffffffff81053000 T default_idle\n"
                    "ffffffff81053100 t other\nffffffff81053200 T _etext\n"
                    "ffffffff82000000 D some_data\n")
    output = "noise\nKSPLICE-GUEST-TEXT=ffffffff9c000000\nKSPLICE-GUEST-BEGIN\n"
    states = qemu.parse_registers(_REGISTERS)
    stacks = {0: qemu.parse_words(_WORDS)}
    code = {0: qemu.parse_bytes(_CODE)}
    assert qemu.hang_lines(states, stacks, output, smap, code).strip().splitlines() == [
        "KSPLICE-HANG: CPU#0 RIP=0xffffffff9c0531a4 other+0xa4 CPL=0 halted "
        "code: 0f 1f 44 00 00 stack: other+0x80",
        "KSPLICE-HANG: CPU#1 RIP=0x40a1b2 CPL=3",
    ]
    # without the guest's _text the file's addresses are taken as they are
    assert "other" not in qemu.hang_lines(states, stacks, "", smap)
    assert "RIP=0xffffffff9c0531a4 CPL=0 halted\n" in qemu.hang_lines(states, stacks, output, None)
    assert "no vCPU state" in qemu.hang_lines([], {}, output, smap)


def test_monitor_commands_are_unanswered_when_nothing_listens(tmp_path: Path) -> None:
    assert qemu.monitor_commands(tmp_path / "absent", ["cpu 0", "x/4gx 0"], 0.5) == ["", ""]


def test_text_symbols_of_a_kallsyms_are_link_time_and_stop_at_etext(tmp_path: Path) -> None:
    (tmp_path / ".config").write_text("CONFIG_PHYSICAL_START=0x1000000\n")
    ksyms = tmp_path / "kallsyms"
    ksyms.write_text("0000000000000000 A fixed_percpu_data\nffffffff9c000000 T _text\n"
                     "ffffffff9c053000 t default_idle\nffffffff9c200000 T _etext\n"
                     "ffffffff9c400000 D jiffies\nffffffffc0001000 t mod_fn\t[mod]\n")
    syms = qemu.text_symbols(ksyms)
    assert syms == [(0xffffffff81000000, "_text"), (0xffffffff81053000, "default_idle"),
                    (0xffffffff81200000, "_etext")]
    assert qemu.symbolize(0xffffffff9c053010, syms, 0x1b000000) == "default_idle+0x10"
    assert qemu.symbolize(0xffffffff9c400000, syms, 0x1b000000) == "?"  # data
    assert qemu.text_symbols(tmp_path / "absent") == []
    (tmp_path / "System.map").write_text("ffffffffffffffff B The real System.map is in the "
                                         "linux-image-6.1.0-57-amd64-dbg package\n")
    assert qemu.text_symbols(tmp_path / "System.map") == []  # Debian's stub
