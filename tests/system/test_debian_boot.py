# SPDX-License-Identifier: GPL-2.0-only
"""Debian's own vmlinuz boots in the harness: 9p from its modules, the project's Python."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ksplice_tasks.testing import debian_guest

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]


def test_debian_kernel_boots_and_runs_the_projects_python(
        kernel_debian: debian_guest.DebianKernel, tmp_path: Path) -> None:
    # A module without Debian's signature: Debian does not force signatures, so it
    # loads and taints the kernel (TAINT_UNSIGNED_MODULE, 8192).
    unsigned = tmp_path / "crc7.ko"
    subprocess.run(["objcopy", str(kernel_debian.modules_dir / "kernel/lib/crc7.ko"),
                    str(unsigned)], check=True)
    script = (
        "cat /proc/version\n"
        f"chroot /host {sys.executable} -c 'import os, ksplice_tasks.testing.qemu, elftools;"
        " print(\"GUEST-UNAME\", os.uname().release)'\n"
        "echo GUEST-TAINT $(cat /proc/sys/kernel/tainted)\n"
        "insmod /extra/crc7.ko && echo GUEST-TAINT $(cat /proc/sys/kernel/tainted)\n"
        "cat /sys/devices/system/cpu/online\n"
    )
    res = kernel_debian.boot(script, hostfs=True, timeout=240,
                             files=[("/extra/crc7.ko", unsigned)])
    assert res.ok, res.output[-3000:]
    lines = res.guest_output.strip().splitlines()
    assert kernel_debian.is_running(lines[0]), (lines[0], kernel_debian.banner())
    assert f"GUEST-UNAME {kernel_debian.release}" in lines
    assert lines[-3:] == ["GUEST-TAINT 0", "GUEST-TAINT 8192", "0-1"]
    print(f"Debian {kernel_debian.release}: boot with 9p and Python {res.seconds:.1f} s")


def test_capture_kallsyms(kernel_debian: debian_guest.DebianKernel) -> None:
    path = debian_guest.capture_kallsyms(kernel_debian)
    assert path == kernel_debian.orig_config / "kallsyms"
    text = path.read_text()
    text_syms = re.findall(r"^([0-9a-f]{16}) T (\S+)$", text, re.M)
    assert len(text_syms) > 5000
    assert all(int(addr, 16) != 0 for addr, _ in text_syms)
    names = {name for _, name in text_syms}
    assert {"_text", "_printk"} <= names
    assert re.search(r"^[0-9a-f]{16} t loadavg_proc_show$", text, re.M)
    # KASLR: _text moved from its link address, in 2 MiB steps.
    text_addr = int(dict((n, a) for a, n in text_syms)["_text"], 16)
    assert text_addr % 0x200000 == 0
