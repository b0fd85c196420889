# SPDX-License-Identifier: GPL-2.0-only
"""testing.debian_guest: module load order, the bzImage version string, kallsyms transport."""

from __future__ import annotations

import base64
import gzip
import subprocess
from pathlib import Path

import pytest

from ksplice_tasks.errors import UserError
from ksplice_tasks.testing import debian_guest as dg
from ksplice_tasks.testing import qemu

# depends= of Debian 6.1.0-57-amd64's modules (modinfo -F depends, 2026-11-29).
DEBIAN_DEPS = {
    "virtio_pci": ["virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"],
    "9pnet_virtio": ["virtio", "9pnet", "virtio_ring"],
    "9p": ["9pnet", "fscache", "netfs"],
    "fscache": ["netfs"],
    "netfs": [], "9pnet": [], "virtio": ["virtio_ring"], "virtio_ring": [],
    "virtio_pci_modern_dev": [], "virtio_pci_legacy_dev": [],
}
INDEX = {name: Path(f"/m/{name}.ko") for name in DEBIAN_DEPS}


def test_every_module_comes_after_what_it_depends_on() -> None:
    order = [p.stem for p in dg.load_order(dg.NINEP_ROOTS, INDEX, DEBIAN_DEPS)]
    assert sorted(order) == sorted(DEBIAN_DEPS)
    for name, deps in DEBIAN_DEPS.items():
        for dep in deps:
            assert order.index(dep) < order.index(name), (dep, name)


def test_a_missing_module_or_a_cycle_is_named() -> None:
    with pytest.raises(UserError, match=r"module fscache \(needed by 9p\) is not in the image"):
        dg.load_order(["9p"], {k: v for k, v in INDEX.items() if k != "fscache"}, DEBIAN_DEPS)
    with pytest.raises(UserError, match="cycle: a -> b -> a"):
        dg.load_order(["a"], {"a": Path("a"), "b": Path("b")}, {"a": ["b"], "b": ["a"]})


def test_modinfo_of_a_real_object(tmp_path: Path) -> None:
    src = tmp_path / "m.c"
    src.write_text('static const char a[] __attribute__((used, section(".modinfo"))) = '
                   '"depends=virtio,9pnet";\n'
                   'static const char b[] __attribute__((used, section(".modinfo"))) = '
                   '"name=demo";\n')
    obj = tmp_path / "m.ko"
    subprocess.run(["gcc", "-c", "-o", str(obj), str(src)], check=True)
    info = dg.modinfo(obj)
    assert dg.depends(info) == ["virtio", "9pnet"] and info["name"] == ["demo"]


def test_modinfo_refuses_a_compressed_module(tmp_path: Path) -> None:
    ko = tmp_path / "m.ko"
    ko.write_bytes(gzip.compress(b"\x7fELF"))
    with pytest.raises(UserError, match="not a kernel module"):
        dg.modinfo(ko)


def test_module_index_names_dashes_as_underscores(tmp_path: Path) -> None:
    (tmp_path / "kernel/drivers").mkdir(parents=True)
    (tmp_path / "kernel/drivers/virtio-rng.ko").write_bytes(b"")
    assert list(dg.module_index(tmp_path)) == ["virtio_rng"]


def fake_bzimage(path: Path, version: bytes) -> Path:
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    data[0x20E:0x210] = (0x400).to_bytes(2, "little")
    data[0x600:0x600 + len(version)] = version
    path.write_bytes(bytes(data))
    return path


def test_setup_version_and_the_running_check(tmp_path: Path) -> None:
    text = (b"6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC "
            b"Debian 6.1.192-3 (2026-11-26)")
    bz = fake_bzimage(tmp_path / "vmlinuz", text)
    assert dg.setup_version(bz) == text.decode()
    other = tmp_path / "other"
    other.write_bytes(b"\0" * 0x300)
    with pytest.raises(UserError, match="not a bzImage"):
        dg.setup_version(other)


def test_kallsyms_round_trip_and_damage() -> None:
    text = "ffffffff9a000000 T _text\nffffffff9a001000 t foo\nffffffffc0000000 t bar\t[9p]\n"
    blob = base64.encodebytes(gzip.compress(text.encode())).decode()
    out = f"noise\n{dg.KALLSYMS_BEGIN}\n{blob}{dg.KALLSYMS_END}\nmore"
    assert dg.decode_kallsyms(out) == text
    dg.check_kallsyms(text)
    assert dg.kallsyms_types(text, "T") == 1 and dg.kallsyms_types(text) == 3
    damaged = out.replace(blob[10:14], "AAAA")
    with pytest.raises(UserError, match="damaged"):
        dg.decode_kallsyms(damaged)
    with pytest.raises(UserError, match="marks missing"):
        dg.decode_kallsyms("nothing here")
    with pytest.raises(UserError, match="only zero addresses"):
        dg.check_kallsyms("0000000000000000 T _text\n")
    with pytest.raises(UserError, match="not a /proc/kallsyms"):
        dg.check_kallsyms("hello\n")


def test_preloaded_modules_are_packed_and_loaded_in_order_before_9p() -> None:
    files = qemu.preload_files([Path("/m/virtio_ring.ko"), Path("/m/9p.ko")])
    assert files == [(f"{qemu.PRELOAD_DIR}/00-virtio_ring.ko", Path("/m/virtio_ring.ko")),
                     (f"{qemu.PRELOAD_DIR}/01-9p.ko", Path("/m/9p.ko"))]
    init = qemu.init_script(True, [Path(g).name for g, _ in files])
    first, second = (init.index(f"insmod {g}") for g, _ in files)
    assert first < second < init.index("mount -t 9p")
    assert f"{qemu.EXIT_MARK}{qemu.PRELOAD_FAILED}" in init
    assert "insmod" not in qemu.init_script(True)
