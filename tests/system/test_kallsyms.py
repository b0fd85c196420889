# SPDX-License-Identifier: GPL-2.0-only
"""A real /proc/kallsyms, read as root in the booted SMP+KASLR kernel, normalised to System.map."""

from __future__ import annotations

import base64
import gzip
import re
from pathlib import Path

import pytest

from ksplice_tasks import symbolmap
from ksplice_tasks.testing import testkernel

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

CAPTURE = ("echo @@kallsyms\n"
           "gzip -c /proc/kallsyms | base64\n"
           "echo @@end\n")


def capture(kernel: testkernel.TestKernel) -> str:
    res = kernel.boot(CAPTURE, timeout=240)
    assert res.ok, res.output[-3000:]
    m = re.search(r"@@kallsyms\s*\n(.*?)@@end", res.guest_output, re.S)
    assert m, res.guest_output[-2000:]
    return gzip.decompress(base64.b64decode("".join(m.group(1).split()))).decode()


@pytest.fixture(scope="module")
def two_boots(kernel_smp: testkernel.TestKernel) -> list[str]:
    return [capture(kernel_smp), capture(kernel_smp)]


def test_normalised_kallsyms_has_system_maps_addresses(
        kernel_smp: testkernel.TestKernel, two_boots: list[str], tmp_path: Path) -> None:
    config = (kernel_smp.orig_config / ".config").read_text()
    smap = symbolmap.parse_system_map((kernel_smp.orig_config / "System.map").read_text())
    offsets = []
    for text in two_boots:
        k = symbolmap.parse_kallsyms(text, config)
        offsets.append(k.offset)
        common = smap.keys() & k.symbols.keys()
        assert len(common) > 10000, len(common)
        wrong = sorted(n for n in common if sorted(k.symbols[n]) != sorted(smap[n]))
        assert not wrong, [(n, k.symbols[n], smap[n]) for n in wrong[:5]]
        # per-CPU symbols were compared too, unshifted
        assert any(a < symbolmap.START_KERNEL_MAP for n in common for a in smap[n])
    assert offsets != [0, 0], "KASLR did not move the kernel on either boot"
    # The update id hashes the normalised map: the same on every boot.
    ids = set()
    for i, text in enumerate(two_boots):
        d = tmp_path / str(i)
        d.mkdir()
        (d / ".config").write_text(config)
        (d / "kallsyms").write_text(text)
        ids.add(symbolmap.map_bytes(d / "kallsyms"))
    assert len(ids) == 1
