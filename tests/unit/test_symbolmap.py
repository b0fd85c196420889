# SPDX-License-Identifier: GPL-2.0-only
"""ORIG_CONFIG's symbols: System.map or kallsyms to one link-time map; versions; Module.symvers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ksplice_tasks import symbolmap as sm
from ksplice_tasks.errors import UserError

# Debian 12's /boot/System.map-6.1.0-57-amd64, whole (linux-image-6.1.0-57-amd64-unsigned).
DEBIAN_STUB = "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"
CONFIG = ("#\n# Automatically generated file; DO NOT EDIT.\n"
          "# Linux/x86 6.1.192 Kernel Configuration\n#\n"
          "CONFIG_PHYSICAL_START=0x1000000\nCONFIG_PHYSICAL_ALIGN=0x200000\n")
SYSTEM_MAP = """\
0000000000000000 D __per_cpu_start
0000000000001000 D cpu_debug_store
000000000001f9a8 D __per_cpu_end
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81000100 t helper
ffffffff81000180 T _printk
ffffffff810001c0 t helper
ffffffff81000200 T loadavg_proc_show
ffffffff81000260 T next_fn
ffffffff81800000 r __ksymtab_printk
ffffffff8180000c r __ksymtab_msleep
ffffffff81c20000 B _end
"""
KASLR = 0x2a00000


def as_kallsyms(text: str, offset: int, zero: bool = False) -> str:
    """System.map lines as /proc/kallsyms shows them after a boot with ``offset``."""
    out = []
    for line in text.splitlines():
        addr, kind, name = line.split()
        a = int(addr, 16)
        if a >= sm.START_KERNEL_MAP:
            a += offset
        out.append(f"{0 if zero else a:016x} {kind} {name}")
    out += [f"{0 if zero else 0xffffffffc0002000:016x} t bm_status_read\t[binfmt_misc]",
            f"{0 if zero else 0xffffffffc0002100:016x} T _printk\t[evil]"]
    return "\n".join(out) + "\n"


def test_parse_system_map_keeps_order_drops_duplicates() -> None:
    m = sm.parse_system_map(SYSTEM_MAP + "ffffffff81000100 t helper\nnot a line\n")
    assert m["helper"] == [0xffffffff81000100, 0xffffffff810001c0]
    assert m["cpu_debug_store"] == [0x1000]


def test_text_link_address_from_config() -> None:
    assert sm.text_link_address(CONFIG) == 0xffffffff81000000
    odd = CONFIG.replace("START=0x1000000", "START=0x1000001")
    assert sm.text_link_address(odd) == 0xffffffff81200000
    assert sm.text_link_address("") == 0xffffffff81000000


def test_kallsyms_normalises_to_system_map() -> None:
    k = sm.parse_kallsyms(as_kallsyms(SYSTEM_MAP, KASLR), CONFIG)
    assert k.offset == KASLR
    assert k.module_lines == 2
    assert k.symbols == sm.parse_system_map(SYSTEM_MAP)  # per-cpu unshifted, modules gone
    assert "bm_status_read" not in k.symbols


def test_kallsyms_map_bytes_are_boot_independent(tmp_path: Path) -> None:
    seen = set()
    for off in (0, KASLR, 0x3e000000):
        d = tmp_path / str(off)
        d.mkdir()
        (d / ".config").write_text(CONFIG)
        (d / "kallsyms").write_text(as_kallsyms(SYSTEM_MAP, off))
        seen.add(sm.map_bytes(d / "kallsyms"))
    assert len(seen) == 1


def test_kallsyms_read_without_root() -> None:
    with pytest.raises(UserError, match=r"only zero addresses: read /proc/kallsyms as root"):
        sm.parse_kallsyms(as_kallsyms(SYSTEM_MAP, KASLR, zero=True), CONFIG)


@pytest.mark.parametrize("offset", [0x1234, -0x200000, 0x40000000])
def test_kallsyms_of_another_config_is_refused(offset: int) -> None:
    with pytest.raises(UserError, match="not the .config's link address"):
        sm.parse_kallsyms(as_kallsyms(SYSTEM_MAP, offset), CONFIG)


def test_kallsyms_without_text_is_refused() -> None:
    text = "".join(line + "\n" for line in as_kallsyms(SYSTEM_MAP, 0).splitlines()
                   if not line.endswith(" _text"))
    with pytest.raises(UserError, match="_text 0 times"):
        sm.parse_kallsyms(text, CONFIG)


def test_debian_stub_is_refused_with_both_ways(tmp_path: Path) -> None:
    (tmp_path / "System.map").write_text(DEBIAN_STUB)
    assert sm.is_stub(DEBIAN_STUB)
    for call in (lambda: sm.choose(tmp_path), lambda: sm.load(tmp_path / "System.map")):
        with pytest.raises(UserError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and "stub" in msg
        assert "-dbg" in msg and "/proc/kallsyms" in msg


def test_choose(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"System.map or kallsyms.*-dbg.*/proc/kallsyms"):
        sm.choose(tmp_path)
    (tmp_path / "kallsyms").write_text(as_kallsyms(SYSTEM_MAP, KASLR))
    assert sm.choose(tmp_path).name == "kallsyms"
    (tmp_path / "System.map").write_text(DEBIAN_STUB)
    assert sm.choose(tmp_path).name == "kallsyms"  # the stub does not count
    (tmp_path / "System.map").write_text(SYSTEM_MAP)
    assert sm.choose(tmp_path).name == "System.map"  # both: System.map


def test_source_version_check() -> None:
    makefile = "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 170\nEXTRAVERSION =\n"
    with pytest.raises(UserError) as e:
        sm.check_source_version(makefile, CONFIG)
    assert str(e.value) == ("KERNEL_SOURCE is 6.1.170 but ORIG_CONFIG/.config was made "
                            "for 6.1.192")
    sm.check_source_version(makefile.replace("170", "192"), CONFIG)
    sm.check_source_version(makefile, "CONFIG_64BIT=y\n")  # no header: not checked
    assert sm.makefile_version("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 0\n"
                               "EXTRAVERSION = -rc1\n") == "6.1.0-rc1"


SYMVERS = ("0x12345678\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n"
           "0x9abcdef0\tmsleep\tvmlinux\tEXPORT_SYMBOL_GPL\t\n"
           "0x0badcafe\tbm_thing\tfs/binfmt_misc\tEXPORT_SYMBOL\t\n")


def test_symvers_cross_check() -> None:
    exports = sm.parse_symvers(SYMVERS)
    assert exports["printk"] == sm.Export(0x12345678, "vmlinux", "EXPORT_SYMBOL")
    smap = sm.parse_system_map(SYSTEM_MAP)
    assert sm.check_symvers_matches_map(exports, smap, "S", "M") == 2
    extra = sm.parse_symvers(SYMVERS + "0x1\tablk_thing\tvmlinux\tEXPORT_SYMBOL\t\n")
    with pytest.raises(UserError, match="S does not belong to M: S exports ablk_thing but M "
                                        "does not"):
        sm.check_symvers_matches_map(extra, smap, "S", "M")
    fewer = sm.parse_symvers(SYMVERS.split("\n", 1)[1])
    with pytest.raises(UserError, match="M exports printk but S does not"):
        sm.check_symvers_matches_map(fewer, smap, "S", "M")
    # a kallsyms without CONFIG_KALLSYMS_ALL lists no __ksymtab_: nothing to compare
    assert sm.check_symvers_matches_map(extra, {"_text": [1]}, "S", "M") == 0
    with pytest.raises(UserError, match=r"S:2: not a Module.symvers line"):
        sm.parse_symvers("0x1\ta\tvmlinux\tEXPORT_SYMBOL\nbroken\n", "S")


def test_size_mismatches() -> None:
    smap = sm.parse_system_map(SYSTEM_MAP)
    # loadavg_proc_show: next symbol 0x60 bytes on; 0x51..0x60 fit (alignment padding)
    for size in (0x51, 0x58, 0x60):
        assert sm.size_mismatches([("loadavg_proc_show", size, 0)], smap) == []
    assert sm.size_mismatches([("loadavg_proc_show", 0x61, 0)], smap) == [
        ("loadavg_proc_show", 0x61, 0x60)]
    # one larger gap is unnamed code after it; most functions of the object: another kernel
    assert sm.size_mismatches([("loadavg_proc_show", 0x40, 0)], smap) == []
    assert sm.size_mismatches([("loadavg_proc_show", 0x40, 0), ("_printk", 0x10, 0)],
                              smap) == [("loadavg_proc_show", 0x40, 0x60), ("_printk", 0x10, 0x40)]
    # a short tail jump in the original: up to ``shrink`` bytes less
    assert sm.size_mismatches([("loadavg_proc_show", 0x63, 3)], smap) == []
    # listed twice, not at all, or size 0: skipped
    assert sm.size_mismatches([("helper", 1, 0), ("absent", 5, 0), ("_printk", 0, 0)],
                              smap) == []


def test_check_pre_objects_on_a_compiled_object(tmp_path: Path) -> None:
    from ksplice_tasks.stages import kmod

    src = tmp_path / "a.c"
    src.write_text("int f(int x) { return x * 3 + 1; }\n"
                   "int g(int x) { return x ? f(x) + g(x - 1) : 0; }\n")
    subprocess.run(["gcc", "-O2", "-ffunction-sections", "-c", "-o", tmp_path / "a.o", src],
                   check=True)
    funcs = {n: (size, shrink) for n, size, shrink in kmod.object_functions(tmp_path / "a.o")}
    sizes = {n: v[0] for n, v in funcs.items()}
    base = 0xffffffff81100000
    g_at = base + (sizes["f"] + 15) // 16 * 16  # f, then padding to 16, then g
    good = {"f": [base], "g": [g_at], "after": [g_at + sizes["g"]]}
    assert kmod.check_pre_objects(tmp_path, ["a.o"], good, "M") == 2
    short = sizes["g"] - funcs["g"][1] - 1  # g would not fit
    bad = dict(good, after=[g_at + short])
    with pytest.raises(UserError) as e:
        kmod.check_pre_objects(tmp_path, ["a.o"], bad, "kallsyms")
    assert str(e.value).startswith(f"kallsyms is not the map of the kernel a.o was built for: "
                                   f"g is {sizes['g']} bytes in a.o but {short} bytes")


def fake_ko(path: Path, versions: dict[str, int], vermagic: str, calls: list[str]) -> Path:
    """A relocatable object shaped like a .ko: __versions entries, .modinfo, imports."""
    asm = [".section __versions,\"a\""]
    for name, crc in versions.items():
        asm += [f".quad {crc:#x}", f".asciz \"{name}\"", f".fill {56 - len(name) - 1},1,0"]
    asm += [".section .modinfo,\"a\"", ".asciz \"license=GPL\"",
            f".asciz \"vermagic={vermagic}\"", ".text", ".globl init_module", "init_module:"]
    asm += [f"call {c}" for c in calls] + ["ret"]
    src = path.with_suffix(".s")
    src.write_text("\n".join(asm) + "\n")
    subprocess.run(["gcc", "-c", "-o", path, src], check=True)
    return path


MAGIC = "6.1.0-57-amd64 SMP preempt mod_unload modversions "


def test_ko_checks_against_target(tmp_path: Path) -> None:
    from ksplice_tasks.obj.elfread import undefined_symbols
    from ksplice_tasks.stages import kmod

    exports = sm.parse_symvers(SYMVERS)
    ok = fake_ko(tmp_path / "ok.ko", {"printk": 0x12345678, "msleep": 0x9abcdef0}, MAGIC,
                 ["printk", "msleep"])
    assert kmod.module_versions(ok) == {"printk": 0x12345678, "msleep": 0x9abcdef0}
    assert kmod.module_vermagic(ok) == MAGIC
    needed = undefined_symbols(ok)
    kmod.check_module_against_target(ok, needed, exports, "S", "6.1.0-57-amd64")

    crc = fake_ko(tmp_path / "crc.ko", {"printk": 0x12345678, "msleep": 0x1}, MAGIC,
                  ["printk", "msleep"])
    with pytest.raises(UserError, match=r"crc.ko: CRC of msleep is 0x00000001 but S says "
                                        r"0x9abcdef0"):
        kmod.check_module_against_target(crc, undefined_symbols(crc), exports, "S", None)

    missing = fake_ko(tmp_path / "missing.ko", {"printk": 0x12345678}, MAGIC,
                      ["printk", "text_poke_bp"])
    with pytest.raises(UserError, match="imports text_poke_bp, which S does not export"):
        kmod.check_module_against_target(missing, undefined_symbols(missing), exports, "S",
                                         None)

    with pytest.raises(UserError, match=r"vermagic '6.1.0-57-amd64 SMP.*' is not for the "
                                        r"target's kernel.release 6.1.0-50-amd64"):
        kmod.check_module_against_target(ok, needed, exports, "S", "6.1.0-50-amd64")
    # without Module.symvers only the vermagic is checked
    kmod.check_module_against_target(crc, set(), None, "", "6.1.0-57-amd64")


def test_install_symvers(tmp_path: Path) -> None:
    from ksplice_tasks.stages import kmod

    orig, tree = tmp_path / "orig", tmp_path / "tree"
    orig.mkdir()
    tree.mkdir()
    assert not kmod.install_symvers_into(orig, tree)  # nothing to install
    (tree / "Module.symvers").write_text("0x0\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n")
    (orig / "Module.symvers").write_text(SYMVERS)
    assert kmod.install_symvers_into(orig, tree)
    assert (tree / "Module.symvers").read_text() == SYMVERS
    mtime = (tree / "Module.symvers").stat().st_mtime_ns
    assert not kmod.install_symvers_into(orig, tree)
    assert (tree / "Module.symvers").stat().st_mtime_ns == mtime
