# SPDX-License-Identifier: GPL-2.0-only
"""The test kernels really boot under qemu, and the guest can run the project's Python."""

from __future__ import annotations

import re
import sys

import pytest
from elftools.elf.elffile import ELFFile

from ksplice_tasks.testing import qemu, testkernel

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]


def test_up_kernel_boots_and_is_the_build(kernel_up: testkernel.TestKernel) -> None:
    res = kernel_up.boot("cat /proc/version\ngrep -c ^processor /proc/cpuinfo\n", timeout=120)
    assert res.ok, res.output[-3000:]
    lines = res.guest_output.strip().splitlines()
    assert lines[0] == kernel_up.banner()
    assert lines[1] == "1"
    assert "SMP" not in lines[0]


def kaslr_offset(kernel: testkernel.TestKernel, output: str) -> int:
    m = re.search(r"^([0-9a-f]{16}) T _printk$", output, re.M)
    assert m, output[-2000:]
    sysmap = (kernel.orig_config / "System.map").read_text()
    static = re.search(r"^([0-9a-f]{16}) T _printk$", sysmap, re.M)
    assert static
    return int(m.group(1), 16) - int(static.group(1), 16)


def test_smp_kernel_boots_two_cpus_with_kaslr(kernel_smp: testkernel.TestKernel) -> None:
    script = ("cat /proc/version\ncat /sys/devices/system/cpu/online\n"
              "grep ' T _printk$' /proc/kallsyms\n")
    offsets = []
    for _ in range(2):
        res = kernel_smp.boot(script, timeout=120)
        assert res.ok, res.output[-3000:]
        lines = res.guest_output.strip().splitlines()
        assert lines[0] == kernel_smp.banner()
        assert " SMP " in lines[0]
        assert lines[1] == "0-1"
        offsets.append(kaslr_offset(kernel_smp, res.guest_output))
    assert all(off % 0x200000 == 0 for off in offsets)
    assert offsets != [0, 0], "KASLR did not move the kernel on either boot"


def test_guest_runs_the_projects_python_over_9p(kernel_smp: testkernel.TestKernel) -> None:
    script = (f"chroot /host {sys.executable} -c 'import tempfile, ksplice_tasks.testing.qemu,"
              " elftools, doit; print(\"GUEST-PY-OK\", tempfile.mkdtemp())'\n")
    res = kernel_smp.boot(script, hostfs=True, timeout=240)
    assert res.ok, res.output[-3000:]
    assert "GUEST-PY-OK /run/" in res.guest_output  # and a writable TMPDIR


def test_boot_never_hangs(kernel_up: testkernel.TestKernel) -> None:
    res = kernel_up.boot("echo sleeping\nsleep 600\n", timeout=20)
    assert res.timed_out and res.status is None
    assert res.seconds < 40
    assert "sleeping" in res.guest_output


def test_a_hung_guest_reports_where_each_cpu_is(kernel_smp: testkernel.TestKernel) -> None:
    # one CPU busy in the kernel (read_zero), the other in a user-space loop
    res = kernel_smp.boot("dd if=/dev/zero of=/dev/null bs=1M &\nwhile :; do :; done\n", timeout=25)
    assert res.timed_out and res.status is None
    lines = [ln for ln in res.output.splitlines() if ln.startswith(qemu.HANG_MARK)]
    cpus = [re.match(re.escape(qemu.HANG_MARK) + r" CPU#(\d) RIP=0x[0-9a-f]+( \S+)? CPL=(\d)", ln)
            for ln in lines]
    assert [c and c[1] for c in cpus] == ["0", "1"], res.output[-2000:]
    kernel = [(c[2] or "").strip() for c in cpus if c and c[3] == "0"]
    # KASLR moved the kernel: each kernel RIP is named through the reported _text,
    # and the stack of a busy kernel CPU names its callers
    assert kernel and all(n and n != "?" for n in kernel), lines
    assert any("stack: " in ln for ln in lines), lines


def test_the_crng_is_ready_before_init_runs(kernel_smp: testkernel.TestKernel) -> None:
    # seeded from RDRAND in start_kernel(), so no getrandom() in the guest spins in
    # try_to_generate_entropy() while crng_is_ready flips (qemu.qemu_argv)
    res = kernel_smp.boot("cat /proc/cpuinfo\necho @@dmesg\ndmesg\n", timeout=60)
    assert res.ok, res.output[-3000:]
    cpuinfo, _, dmesg = res.guest_output.partition("@@dmesg")
    assert " rdrand" in cpuinfo
    lines = dmesg.splitlines()
    ready = [i for i, ln in enumerate(lines) if "random: crng init done" in ln]
    init = [i for i, ln in enumerate(lines) if "Run /init as init process" in ln]
    assert ready and init and ready[0] < init[0], dmesg[-3000:]


def test_guest_failure_is_reported(kernel_up: testkernel.TestKernel) -> None:
    res = kernel_up.boot("echo about to fail\nexit 7\n", timeout=120)
    assert res.status == 7 and not res.ok and not res.timed_out


def test_lp_kernel_has_bug_jump_and_tracepoint_tables_and_boots_clean(
        kernel_lp: testkernel.TestKernel) -> None:
    """lp is the distribution-like kernel: BUG()/WARN() sites, static branches and
    tracepoints are really in its image, and its boot logs no warning of its own."""
    with open(kernel_lp.vmlinux, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        addr = {n: (symtab.get_symbol_by_name(n) or [{"st_value": 0}])[0]["st_value"]
                for t in ("__bug_table", "__jump_table", "__tracepoints_ptrs")
                for n in (f"__start_{t}", f"__stop_{t}")}
    for t in ("__bug_table", "__jump_table", "__tracepoints_ptrs"):
        assert addr[f"__stop_{t}"] > addr[f"__start_{t}"], t  # include/asm-generic/vmlinux.lds.h
    res = kernel_lp.boot("dmesg | grep -E 'WARNING|BUG|Oops' | wc -l\n", timeout=240)
    assert res.ok, res.output[-3000:]
    assert res.guest_output.strip().splitlines()[-1] == "0", res.output[-3000:]
