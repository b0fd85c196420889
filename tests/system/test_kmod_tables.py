# SPDX-License-Identifier: GPL-2.0-only
"""The update modules load in the SMP+KASLR test kernel, resolve their tables and report.

Both modules are built from kmodsrc/ with a small collection object and
synthetic records naming real symbols of the test kernel: a unique static
function, a static name System.map lists several times, a made-up name, a
data symbol and a per-cpu variable.  The sysfs counts must be what the
records imply against that kernel's System.map.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from helpers import parse_marked

from ksplice_tasks.encode import ksplice_tables as md
from ksplice_tasks.files import copy_atomic, write_atomic
from ksplice_tasks.stages import kmod
from ksplice_tasks.stages.collect import TABLES
from ksplice_tasks.stages.layout import CreateLayout
from ksplice_tasks.testing import testkernel

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

ID = "t3st0001"
PRIMARY_MOD = f"ksplice_{ID}"
HELPER_MOD = f"ksplice_{ID}_helper"

COLLECTION_C = r"""
extern int _printk(const char *fmt, ...);
int ksplice_test_fn____post(int x) { return _printk("ksplice test %d\n", x); }
int ksplice_test_fn2____post(int x) { return x * 3; }
int ksplice_test_fn____pre(int x) { return x + 1; }
int ksplice_test_fn2____pre(int x) { return x + 2; }
"""
CFLAGS = ["-O2", "-mcmodel=kernel", "-fno-PIE", "-fno-pic", "-mno-red-zone",
          "-fno-stack-protector", "-ffunction-sections", "-fdata-sections",
          "-fno-asynchronous-unwind-tables", "-fcf-protection=none", "-mno-sse", "-mno-mmx",
          "-nostdinc"]
MADE_UP = "ksplice_no_such_symbol"


def ambiguous_static(smap: dict[str, list[int]]) -> str:
    """A static function name System.map lists at several addresses."""
    if len(smap.get("signal_pending", ())) >= 2:
        return "signal_pending"
    return next(n for n, a in sorted(smap.items()) if 2 <= len(a) <= 4 and not n[0].isdigit())


def reloc(symbol: str, off: int, pre: bool = False) -> md.RelocInput:
    fn = "ksplice_test_fn____pre" if pre else "ksplice_test_fn____post"
    return md.RelocInput(symbol, f".text.{fn}", off, True, -4, 4, fn, type=4, signed=True)


def records(smap: dict[str, list[int]]) -> tuple[md.ModuleTables, md.ModuleTables]:
    amb = ambiguous_static(smap)
    primary = md.ModuleTables(
        relocs=(reloc("loadavg_proc_show", 1), reloc(".text.loadavg_proc_show", 6),
                reloc(amb, 11), reloc(MADE_UP, 16), reloc("text_mutex", 21),
                md.RelocInput("current_task", ".text.ksplice_test_fn____post", 26, False, 0,
                              4, "ksplice_test_fn____post", type=11, signed=True)),
        sizes=(md.SizeInput("ksplice_test_fn____post", 32, "ksplice_test_fn____post"),
               md.SizeInput("ksplice_test_fn2____post", 8, "ksplice_test_fn2____post")),
        patches=(md.PatchInput("loadavg_proc_show", "ksplice_test_fn____post"),
                 md.PatchInput(amb, "ksplice_test_fn2____post")),
        imports=(md.ImportInput("text_poke"), md.ImportInput("text_poke_sync"),
                 md.ImportInput("text_mutex")),
    )
    # what the module build adds for the kernel side's own needs
    primary = kmod.with_primary_imports(primary)
    helper = md.ModuleTables(
        relocs=(reloc("loadavg_proc_show", 1, True), reloc(amb, 6, True),
                reloc(MADE_UP, 11, True)),
        sizes=(md.SizeInput("loadavg_proc_show", 0x40, "ksplice_test_fn____pre"),
               md.SizeInput(amb, 0x10, "ksplice_test_fn2____pre")),
    )
    return primary, helper


def in_image(smap: dict[str, list[int]], addr: int) -> bool:
    return smap["_text"][0] <= addr <= smap["_end"][0]


def expected(t: md.ModuleTables, smap: dict[str, list[int]]) -> dict[str, int]:
    """What the module must count: per relocation, and the addresses it sanity-checks."""
    n = [len(md.candidates(smap, r.symbol)) for r in t.relocs]
    cands = [md.candidates(smap, r.symbol) for r in t.relocs]
    cands += [md.candidates(smap, s.name) for s in t.sizes]
    cands += [md.candidates(smap, i.name) for i in t.imports]
    cands += [[a] for p in t.patches if (a := md.unique_address(smap, p.oldname))]
    return {"relocs": len(n), "resolved": n.count(1), "missing": n.count(0),
            "ambiguous": sum(1 for k in n if k > 1), "mismatched": 0,
            "checked": sum(1 for c in cands for a in c if in_image(smap, a))}


@pytest.fixture(scope="module")
def modules(kernel_smp: testkernel.TestKernel, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, Path, md.ModuleTables, md.ModuleTables, dict[str, list[int]]]:
    d = tmp_path_factory.mktemp("kmod")
    (d / "coll.c").write_text(COLLECTION_C)
    subprocess.run(["gcc", *CFLAGS, "-c", "-o", str(d / "coll.o"), str(d / "coll.c")],
                   check=True)
    smap_path = kernel_smp.orig_config / "System.map"
    smap = kmod.read_system_map(smap_path)
    pt, ht = records(smap)
    # What collect would leave behind, then the pipeline's own module stages.
    work = CreateLayout(d / "work")
    for role, tables in (("primary", pt), ("helper", ht)):
        copy_atomic(d / "coll.o", work.collection(role))
        write_atomic(work.tables_json(role), TABLES.dumps(tables))
    kmod.write_tables(work, smap_path)
    kmod.assemble_tables(work)
    kmod.write_modcommon(work, smap_path, ID)
    kmod.build(work, kernel_smp.build, ID, jobs=2)
    _uid, primary, helper = kmod.built_modules(work)
    return primary, helper, pt, ht, smap


FILES = ("id", "role", "stage", "kaslr_offset", "relocs", "resolved", "ambiguous", "missing",
         "checked", "mismatched", "functions", "imports", "helper")


def dump(mod: str, tag: str) -> str:
    """Guest shell that prints every sysfs file as '@@tag/file' then its contents."""
    return "".join(f'echo "@@{tag}/{f}"; cat /sys/module/{mod}/ksplice/{f} 2>/dev/null\n'
                   for f in FILES)


GUEST = f"""
echo "@@kallsyms"; grep -E \
' ({"|".join(("_printk", "loadavg_proc_show", "text_poke_sync", *kmod.PRIMARY_IMPORTS))})$' \
/proc/kallsyms
insmod /lib/modules/helper.ko; rc=$?; echo "@@helper_alone_rc"; echo $rc
{dump(HELPER_MOD, "helper_alone")}
rmmod {HELPER_MOD}; rc=$?; echo "@@helper_alone_rmmod"; echo $rc
insmod /lib/modules/primary.ko; rc=$?; echo "@@primary_rc"; echo $rc
{dump(PRIMARY_MOD, "primary")}
insmod /lib/modules/helper.ko; rc=$?; echo "@@helper_rc"; echo $rc
{dump(HELPER_MOD, "helper")}
echo "@@attached"; cat /sys/module/{PRIMARY_MOD}/ksplice/helper
rmmod {PRIMARY_MOD} 2>/dev/null; rc=$?; echo "@@primary_busy_rc"; echo $rc
rmmod {HELPER_MOD}; rc=$?; echo "@@helper_rmmod"; echo $rc
echo "@@detached"; cat /sys/module/{PRIMARY_MOD}/ksplice/helper
rmmod {PRIMARY_MOD}; rc=$?; echo "@@primary_rmmod"; echo $rc
echo "@@left"; ls /sys/module | grep ksplice; echo end
echo "@@dmesg"; dmesg | grep -E 'ksplice|WARNING|BUG|Oops|Unknown symbol'
"""


@pytest.fixture(scope="module")
def guest(modules, kernel_smp: testkernel.TestKernel) -> dict[str, str]:
    primary, helper, *_ = modules
    res = kernel_smp.boot(GUEST, files=[("/lib/modules/primary.ko", primary),
                                        ("/lib/modules/helper.ko", helper)], timeout=180)
    assert res.ok, res.output[-4000:]
    return parse_marked(res.guest_output)


def kallsyms(out: str) -> dict[str, int]:
    return {m.group(2): int(m.group(1), 16)
            for m in re.finditer(r"^([0-9a-f]{16}) \w (\S+)$", out, re.M)}


def test_both_modules_build(modules) -> None:
    primary, helper, *_ = modules
    assert primary.name == f"ksplice-{ID}.ko" and helper.name == f"ksplice-{ID}-helper.ko"
    info = subprocess.run(["modinfo", "-F", "license", str(primary)], capture_output=True,
                          text=True)
    if info.returncode == 0:
        assert info.stdout.strip() == "GPL"


@pytest.mark.parametrize("tag", ["primary", "helper", "helper_alone"])
def test_counts_match_system_map(guest: dict[str, str], modules, tag: str) -> None:
    _p, _h, pt, ht, smap = modules
    t = pt if tag == "primary" else ht
    for k, v in expected(t, smap).items():
        assert guest[f"{tag}/{k}"] == str(v), (k, guest)
    assert guest[f"{tag}/stage"] == "prepared"
    assert guest[f"{tag}/id"] == ID
    assert guest[f"{tag}/role"] == ("primary" if tag == "primary" else "helper")


def test_kaslr_offset_and_resolved_addresses(guest: dict[str, str], modules) -> None:
    _p, _h, pt, _ht, smap = modules
    ks = kallsyms(guest["kallsyms"])
    offset = ks["_printk"] - smap["_printk"][0]
    assert offset != 0, "KASLR should move the kernel"
    for tag in ("primary", "helper", "helper_alone"):
        assert int(guest[f"{tag}/kaslr_offset"], 16) == offset
    amb = ambiguous_static(smap)
    funcs = [line.split() for line in guest["primary/functions"].splitlines()]
    assert funcs == [["loadavg_proc_show", f"{ks['loadavg_proc_show']:x}", "ok"],
                     [amb, "ambiguous", "-"]]
    imports = [line.split() for line in guest["primary/imports"].splitlines()]
    assert imports == [[i.name, f"{ks[i.name]:x}", "ok"] for i in pt.imports]
    hfuncs = [line.split() for line in guest["helper/functions"].splitlines()]
    assert hfuncs == [["loadavg_proc_show", f"{ks['loadavg_proc_show']:x}", "ok"],
                      [amb, "ambiguous", "ok"]]


def test_helper_attaches_and_modules_unload(guest: dict[str, str]) -> None:
    assert guest["helper_alone_rc"] == "0" and guest["helper_alone_rmmod"] == "0"
    assert guest["primary_rc"] == "0" and guest["helper_rc"] == "0"
    assert guest["primary/helper"] == "absent"
    assert guest["helper/helper"] == "", "only the primary reports a helper"
    assert guest["attached"] == "attached 3 relocs 2 functions"
    assert guest["primary_busy_rc"] != "0", "the attached helper pins the primary"
    assert guest["helper_rmmod"] == "0" and guest["detached"] == "absent"
    assert guest["primary_rmmod"] == "0"
    assert guest["left"] == "end"


def test_dmesg_summary_and_clean(guest: dict[str, str], modules) -> None:
    _p, _h, pt, _ht, smap = modules
    e = expected(pt, smap)
    log = guest["dmesg"]
    assert re.search(
        rf"ksplice: {ID} primary: kaslr offset 0x[0-9a-f]+, 2 functions, {e['relocs']} relocs: "
        rf"{e['resolved']} resolved, {e['ambiguous']} ambiguous, {e['missing']} missing; "
        rf"{e['checked']} checked, 0 mismatched", log), log
    assert f"ksplice: {ID} primary: helper attached" in log
    assert log.count(f"ksplice: {ID} helper: unloaded") == 2
    for bad in ("WARNING", "BUG", "Oops", "Unknown symbol", " is "):
        assert bad not in log, log
