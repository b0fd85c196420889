# SPDX-License-Identifier: GPL-2.0-only
"""Updates built for Debian's shipped kernel load in Debian's booted kernel.

The create issue's five test updates are rebuilt against Debian's own
source, config, Module.symvers and kallsyms (a targeted prebuild), then
loaded into Debian's vmlinuz under qemu: the loader accepts their vermagic
and CRCs, every relocation resolves, and each is applied with ksplice-apply
so that run-pre matching reports on every function. The bundled example
must apply, change /proc/loadavg, and undo.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import updates
from helpers import EXPECTED, Prebuilt, create, parse_marked, tarball_from
from test_update_load import COUNTS, unpack

from ksplice_tasks import names
from ksplice_tasks.testing import debian_guest, demo
from ksplice_tasks.testing.testkernel import cache_root

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

REPO = Path(__file__).resolve().parents[2]
KS = f"chroot /host {sys.executable} -m ksplice_tasks.target.apply"


def vermagic(ko: Path) -> str:
    data = ko.read_bytes()
    m = re.search(rb"vermagic=([^\0]*)", data)
    assert m, ko
    return m.group(1).decode()


def test_the_modules_carry_debians_vermagic(update_tarballs_debian: dict,
                                            kernel_debian: debian_guest.DebianKernel,
                                            tmp_path: Path) -> None:
    for name, tarball in update_tarballs_debian.items():
        _uid, primary, helper = unpack(tarball, tmp_path / name)
        for ko in (primary, helper):
            assert vermagic(ko) == (f"{kernel_debian.release} SMP preempt mod_unload "
                                    "modversions "), (name, ko.name)


def test_five_updates_load_resolve_and_report_run_pre(update_tarballs_debian: dict,
                                                      kernel_debian: debian_guest.DebianKernel,
                                                      tmp_path: Path) -> None:
    files, uids, lines = [], {}, ["dmesg -n 1"]  # keep printk off the console we parse
    for name in EXPECTED:
        uid, primary, helper = unpack(update_tarballs_debian[name], tmp_path)
        uids[name] = uid
        files += [(f"/lib/ksplice/{uid}.ko", primary), (f"/lib/ksplice/{uid}-helper.ko", helper)]
        # binfmt_misc is a module in Debian's config: load it so its update has a target
        if name == "binfmt-misc-module":
            files.append(("/lib/ksplice/binfmt_misc.ko",
                          kernel_debian.modules_dir / "kernel/fs/binfmt_misc.ko"))
            lines.append("insmod /lib/ksplice/binfmt_misc.ko")
        lines += [f"insmod /lib/ksplice/{uid}.ko", f"insmod /lib/ksplice/{uid}-helper.ko"]
        for mod in (names.sysfs_module(uid, names.PRIMARY),
                    names.sysfs_module(uid, names.HELPER)):
            d = f"/sys/module/{mod}/ksplice"
            lines += [f'echo "COUNT {mod} {c} $(cat {d}/{c})"' for c in COUNTS]
        primary_mod = names.sysfs_module(uid, names.PRIMARY)
        lines += [f"echo apply > /sys/module/{primary_mod}/ksplice/stage 2>/dev/null",
                  f'echo "STAGE {name} $(cat /sys/module/{primary_mod}/ksplice/stage) '
                  f'$(cat /sys/module/{primary_mod}/ksplice/abort_cause)"',
                  f"sed 's/^/RUNPRE {name} /' "
                  f"/sys/module/{names.sysfs_module(uid, names.HELPER)}/ksplice/runpre",
                  f"rmmod {names.sysfs_module(uid, names.HELPER)}",
                  f"echo reverse > /sys/module/{primary_mod}/ksplice/stage 2>/dev/null",
                  f"rmmod {primary_mod}"]
    lines += ["dmesg | grep -i 'ksplice' | sed 's/^/DMESG /'"]
    res = kernel_debian.boot("\n".join(lines) + "\n", hostfs=True, files=files, timeout=300)
    assert res.ok, res.output[-4000:]
    out = res.guest_output
    (cache_root() / "debian-updates-guest.log").write_text(res.output)
    counts: dict[str, dict[str, int]] = {}
    for mod, what, n in re.findall(r"^COUNT (\S+) (\w+) (\d+)$", out, re.M):
        counts.setdefault(mod, {})[what] = int(n)
    assert len(counts) == 2 * len(uids), out[-3000:]
    for mod, c in counts.items():
        assert sorted(c) == sorted(COUNTS), (mod, c, out[:1500])
        assert c["relocs"] == c["resolved"] + c["ambiguous"] + c["missing"], (mod, c)
    report: dict[str, dict] = {}
    for name in EXPECTED:
        stage = re.search(rf"^STAGE {name} (\w+) (\w+)$", out, re.M)
        assert stage, f"{name}: no stage\n{out[-3000:]}"
        funcs = re.findall(rf"^RUNPRE {name} (\S+) (\w+) ([0-9a-f]+)$", out, re.M)
        assert funcs, f"{name}: no run-pre results\n{out[-3000:]}"
        report[name] = {"stage": stage.group(1), "abort_cause": stage.group(2),
                        "runpre": {f: s for f, s, _a in funcs}}
    out_file = cache_root() / "debian-runpre-report.json"
    out_file.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    for name, r in report.items():
        print(f"{name}: {r['stage']} ({r['abort_cause']}): "
              + ", ".join(f"{f} {s}" for f, s in r["runpre"].items()))
    # The bundled example's function must match on Debian's kernel (issue 9's bar).
    assert report["loadavg-string"]["runpre"] == {"loadavg_proc_show": "found"}, report
    assert "lsmod" not in out


def test_the_example_applies_and_undoes_on_debians_kernel(
        prebuilt_debian: Prebuilt, kernel_debian: debian_guest.DebianKernel,
        tmp_path: Path) -> None:
    res = create(prebuilt_debian, REPO / "ksplice_tasks" / "data" / "example-loadavg.patch",
                 tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    tarball = tarball_from(res.stdout, tmp_path)
    uid = names.tarball_id(tarball.name)
    script = demo.GUEST_SCRIPT.format(python=sys.executable, tarball=tarball, uid=uid)
    boot = kernel_debian.boot(script, hostfs=True, timeout=300)
    demo.check_story(boot, kernel_debian)
    assert "run-pre: loadavg_proc_show: found at 0x" in boot.guest_output, boot.guest_output


def test_a_new_function_in_one_file_called_from_another(
        prebuilt_debian: Prebuilt, kernel_debian: debian_guest.DebianKernel,
        tmp_path: Path) -> None:
    """tests/patches/two-files-new-function.patch on Debian's kernel: the primary's
    call from loadavg.c's new code reaches version.c's new function, which neither
    kallsyms nor run-pre matching knows."""
    res = create(prebuilt_debian, REPO / "tests/patches/two-files-new-function.patch", tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    tb = tarball_from(res.stdout, tmp_path)
    uid = names.tarball_id(tb.name)
    assert uid is not None
    boot = kernel_debian.boot(updates.two_files_script(KS, tb, uid),
                              hostfs=True, timeout=300)
    g = parse_marked(boot.guest_output)
    assert boot.ok and "end" in g, boot.output[-4000:]
    updates.check_two_files(g)
