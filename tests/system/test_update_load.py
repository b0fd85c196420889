# SPDX-License-Identifier: GPL-2.0-only
"""The create issue's five updates load in the SMP+KASLR guest and account for every table entry."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest
from helpers import EXPECTED

from ksplice_tasks.testing import testkernel

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

COUNTS = ("relocs", "resolved", "ambiguous", "missing")


def unpack(tarball: Path, dest: Path) -> tuple[str, Path, Path]:
    uid = tarball.name[len("ksplice-"):-len(".tar.gz")]
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    top = dest / f"ksplice-{uid}"
    return uid, top / f"ksplice-{uid}.ko", top / f"ksplice-{uid}-helper.ko"


def load_script(uids: list[str]) -> str:
    lines = ["set -e"]
    for uid in uids:
        lines += [f"insmod /lib/ksplice/{uid}.ko", f"insmod /lib/ksplice/{uid}-helper.ko"]
        for mod in (f"ksplice_{uid}", f"ksplice_{uid}_helper"):
            d = f"/sys/module/{mod}/ksplice"
            lines += [f'echo "COUNT {mod} {c} $(cat {d}/{c})"' for c in COUNTS]
            lines.append(f'echo "STAGE {mod} $(cat {d}/stage)"')
        lines += [f"rmmod ksplice_{uid}_helper", f"rmmod ksplice_{uid}"]
    lines += ["dmesg | grep -i ksplice | sed 's/^/DMESG /'", "lsmod | sed 's/^/LSMOD /'"]
    return "\n".join(lines) + "\n"


def test_five_updates_load_resolve_and_unload(update_tarballs: dict,
                                              kernel_smp: testkernel.TestKernel,
                                              tmp_path: Path) -> None:
    files, uids = [], []
    for name in EXPECTED:
        uid, primary, helper = unpack(update_tarballs[name], tmp_path)
        uids.append(uid)
        files += [(f"/lib/ksplice/{uid}.ko", primary), (f"/lib/ksplice/{uid}-helper.ko", helper)]
    res = kernel_smp.boot(load_script(uids), files=files, timeout=240)
    assert res.ok, res.output[-4000:]
    counts: dict[str, dict[str, int]] = {}
    for mod, what, n in re.findall(r"^COUNT (\S+) (\w+) (\d+)$", res.guest_output, re.M):
        counts.setdefault(mod, {})[what] = int(n)
    assert len(counts) == 2 * len(uids)
    for mod, c in counts.items():
        # every relocation is resolved from System.map or left to run-pre matching
        assert c["relocs"] == c["resolved"] + c["ambiguous"] + c["missing"], (mod, c)
    for uid in uids:
        assert counts[f"ksplice_{uid}_helper"]["relocs"] > 0
        assert re.search(rf"^DMESG .*{uid}.*resolved", res.guest_output, re.M | re.I), uid
    stages = set(re.findall(r"^STAGE \S+ (\w+)$", res.guest_output, re.M))
    assert stages == {"prepared"}, "loading an update must not patch anything"
    assert "LSMOD ksplice" not in res.guest_output
