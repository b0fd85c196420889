# SPDX-License-Identifier: GPL-2.0-only
"""Updates built by the real pipeline (``ksplice-create``), applied and undone in the guest.

Two parts:

* the create issue's five patches (tests/patches), on the SMP+KASLR kernel
  and on the lp (ftrace, livepatch, ORC) kernel, one boot each: for each
  patch the guest shows the behaviour before, after ``ksplice-apply``, after
  a reverse (the primary's ``patches`` file then shows the old functions'
  bytes hash as before the apply), after a second apply, and after
  ``ksplice-undo``.  binfmt_misc is a module in the test configs: the update
  is refused while the module is not loaded, patches the loaded module, and
  pins it while the update is loaded;
* a patch to ``m_show`` in kernel/module/procfs.c (/proc/modules), a static
  function whose name fs/namespace.c has too (/proc/mounts): the update
  patches the procfs one (its address in /proc/kallsyms, found from the
  running kernel's own procfs.o), and /proc/mounts still prints as before.

The guest prints each step after an ``@@name`` marker; the tests read them.
"""

from __future__ import annotations

import re
import sys
import tarfile
from pathlib import Path

import pytest
import updates
from elftools.elf.elffile import ELFFile
from helpers import (
    EXPECTED,
    PATCHES,
    Prebuilt,
    create,
    exit_code,
    parse_marked,
    tarball_from,
)

from ksplice_tasks.stages import kmod
from ksplice_tasks.testing import testkernel

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

KS = updates.GUEST_KS
PY = f"chroot /host {sys.executable}"
BM = "/bm"

# getpgrp()/getpgid(0) as an ordinary task, then after renaming itself "~k".
GETPGID = (PY + " -c 'import ctypes, os; a = (os.getpgrp(), os.getpgid(0)); "
           "ctypes.CDLL(None).prctl(15, b\"~k\", 0, 0, 0); "
           "print(*a, os.getpgrp(), os.getpgid(0))'")

# How the guest observes each patch's behaviour.
OBSERVE = {
    "loadavg-string": "cat /proc/loadavg",
    "umask-syscall": "(umask 0; umask)",
    "getpgid-inlined-helper": GETPGID,
    "version-new-function": "cat /proc/version",
    "binfmt-misc-module": f"cat {BM}/status",
}
STEPS = ("before", "after", "reversed", "after2", "restored")

def uid_of(tarball: Path) -> str:
    return tarball.name[len("ksplice-"):-len(".tar.gz")]


def mark(key: str) -> str:
    return f'echo "@@{key}"'


def five_script(tarballs: dict[str, Path]) -> str:
    lines = [
        f'KS="{KS}"',
        "left() { ls /sys/module | grep ksplice; echo end; }",
        f"mkdir -p {BM}",
        # binfmt_misc is not loaded yet: the update must refuse, touching nothing.
        mark("bm_notloaded"), f"$KS apply {tarballs['binfmt-misc-module']} 2>&1; echo rc=$?",
        mark("bm_notloaded_left"), "left",
        mark("bm_insmod"),
        f"insmod /m/binfmt_misc.ko && mount -t binfmt_misc none {BM}; echo rc=$?",
    ]
    for name, observe in OBSERVE.items():
        tb = tarballs[name]
        uid = uid_of(tb)
        m = f"/sys/module/ksplice_{uid}/ksplice"
        lines += [
            mark(f"{name}:before"), observe,
            mark(f"{name}:apply"), f"$KS apply {tb} 2>&1; echo rc=$?",
            mark(f"{name}:after"), observe,
            mark(f"{name}:left"), "left",
            mark(f"{name}:patches_applied"), f"cat {m}/patches",
        ]
        if name == "binfmt-misc-module":
            # the update pins the module it patches (the mount pins it too)
            lines += [mark("bm_rmmod_applied"),
                      f"umount {BM}; rmmod binfmt_misc 2>&1; echo rc=$?",
                      f"mount -t binfmt_misc none {BM}"]
        lines += [
            mark(f"{name}:reverse"), f"echo reverse > {m}/stage; echo rc=$?",
            mark(f"{name}:patches_reversed"), f"cat {m}/patches",
            mark(f"{name}:reversed"), observe,
            mark(f"{name}:reapply"), f"echo apply > {m}/stage; echo rc=$?",
            mark(f"{name}:after2"), observe,
            mark(f"{name}:undo"), f"$KS undo {uid} 2>&1; echo rc=$?",
            mark(f"{name}:restored"), observe,
        ]
    lines += [
        mark("bm_rmmod_undone"), f"umount {BM}; rmmod binfmt_misc 2>&1; echo rc=$?",
        mark("left_final"), "left",
        mark("dmesg"), "dmesg | grep -E 'WARNING|BUG|Oops|ksplice'",
        mark("end"),
    ]
    return "\n".join(lines) + "\n"


def patch_lines(block: str) -> dict[str, dict[str, str]]:
    """The primary's ``patches`` file: function -> its key=value fields."""
    out = {}
    for line in block.splitlines():
        name, *fields = line.split()
        out[name] = dict(f.split("=", 1) for f in fields)
    return out


def test_lp_tarballs_are_built(update_tarballs_lp: dict) -> None:
    assert set(update_tarballs_lp) == set(EXPECTED)


@pytest.fixture(scope="module", params=["smp", "lp"])
def five(request: pytest.FixtureRequest) -> tuple[str, dict[str, str], dict[str, Path]]:
    variant = request.param
    tarballs = request.getfixturevalue("update_tarballs" if variant == "smp"
                                       else "update_tarballs_lp")
    kernel = testkernel.build_test_kernel(variant)
    res = kernel.boot(five_script(tarballs), hostfs=True, timeout=900,
                      files=[("/m/binfmt_misc.ko", kernel.build / "fs/binfmt_misc.ko")])
    out = parse_marked(res.guest_output)
    assert res.ok and "end" in out, res.output[-6000:]
    print(f"\n{variant}: five pipeline updates, one boot, {res.seconds:.1f} s")
    return variant, out, tarballs


def is_changed(name: str, text: str) -> bool:
    """Does the observation show the patched behaviour?  Asserts it is one or the other."""
    if name == "loadavg-string":
        assert re.fullmatch(r"(ksplice-loadavg )?\d+\.\d\d \d+\.\d\d \d+\.\d\d \d+/\d+ \d+",
                            text), text
        return text.startswith("ksplice-loadavg ")
    if name == "umask-syscall":
        assert text in ("0000", "0002"), text
        return text == "0002"
    if name == "getpgid-inlined-helper":
        pgrp, pgid, tpgrp, tpgid = (int(x) for x in text.split())
        assert pgrp == pgid and tpgrp == tpgid, text
        assert tpgrp in (pgrp, pgrp + 100000), text
        return tpgrp == pgrp + 100000
    if name == "version-new-function":
        assert text.startswith(("Linux version ", "[ksplice] Linux version ")), text
        return text.startswith("[ksplice] ")
    assert name == "binfmt-misc-module"
    assert text in ("enabled", "enabled (ksplice)"), text
    return text == "enabled (ksplice)"


@pytest.mark.parametrize("name", OBSERVE)
def test_behaviour_before_after_undo(five, name: str) -> None:
    _v, g, tarballs = five
    seen = {step: is_changed(name, g[f"{name}:{step}"]) for step in STEPS}
    assert seen == {"before": False, "after": True, "reversed": False, "after2": True,
                    "restored": False}, {s: g[f"{name}:{s}"] for s in STEPS}
    assert exit_code(g[f"{name}:apply"]) == 0 and g[f"{name}:apply"].startswith("Done!")
    assert exit_code(g[f"{name}:reverse"]) == 0 and exit_code(g[f"{name}:reapply"]) == 0
    assert exit_code(g[f"{name}:undo"]) == 0
    uid = uid_of(tarballs[name])
    assert g[f"{name}:left"].split() == [f"ksplice_{uid}", "end"], "helper must be unloaded"


@pytest.mark.parametrize("name", OBSERVE)
def test_reverse_restores_the_patched_bytes(five, name: str) -> None:
    _v, g, _t = five
    applied = patch_lines(g[f"{name}:patches_applied"])
    reversed_ = patch_lines(g[f"{name}:patches_reversed"])
    assert set(applied) == set(EXPECTED[name][next(iter(EXPECTED[name]))][0])
    for fn, f in applied.items():
        r = reversed_[fn]
        assert f["before"] != "0" * 16 and f["now"] != f["before"], (fn, f)
        assert r["before"] == f["before"] and r["now"] == r["before"], (fn, r)
        assert r["old"] == f["old"] and r["site"] == f["site"]


def test_module_update_refused_until_the_module_is_loaded(five) -> None:
    _v, g, _t = five
    assert exit_code(g["bm_notloaded"]) == 1, g["bm_notloaded"]
    assert "(not loaded)" in g["bm_notloaded"], g["bm_notloaded"]
    assert g["bm_notloaded_left"] == "end"
    assert "bm_status_read is neither in the kernel nor in a loaded module" in g["dmesg"]


def test_module_update_patches_and_pins_the_loaded_module(five) -> None:
    _v, g, _t = five
    f = patch_lines(g["binfmt-misc-module:patches_applied"])["bm_status_read"]
    assert f["module"] == "binfmt_misc"
    assert int(f["old"], 16) >= 0xffffffffc0000000, "module space"
    assert exit_code(g["bm_rmmod_applied"]) != 0, "binfmt_misc must stay while the update is loaded"
    assert exit_code(g["bm_rmmod_undone"]) == 0, "undo must release binfmt_misc"


def test_lp_jumps_go_after_the_ftrace_nop(five) -> None:
    variant, g, _t = five
    for name in OBSERVE:
        for fn, f in patch_lines(g[f"{name}:patches_applied"]).items():
            site = int(f["site"], 16) - int(f["old"], 16)
            assert site == (5 if variant == "lp" else 0), (name, fn, f)


def test_nothing_left_and_no_oops(five) -> None:
    _v, g, _t = five
    assert g["left_final"] == "end"
    for bad in ("WARNING", "BUG", "Oops"):
        assert bad not in g["dmesg"], g["dmesg"][-3000:]


# -- two static functions called m_show --------------------------------------

SAME_NAME = "m_show"
SAME_NAME_OBJ = "kernel/module/procfs.o"
SAME_NAME_PATCH = "modules-static-m_show.patch"


def map_addresses(system_map: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in system_map.read_text().splitlines():
        addr, _t, name = line.split()[:3]
        out.setdefault(name, []).append(int(addr, 16))
    return out


def static_address(kernel: testkernel.TestKernel, obj: str, name: str) -> tuple[int, list[int]]:
    """System.map address of the static function ``name`` of ``obj`` in the running kernel.

    The running kernel's own ``obj`` gives its offset from another function
    of the same section that System.map lists once.  Also returns all of System.map's
    addresses of ``name``.
    """
    smap = map_addresses(kernel.orig_config / "System.map")
    with open(kernel.build / obj, "rb") as f:
        syms = [s for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols()
                if s["st_info"]["type"] == "STT_FUNC"]
    target = next(s for s in syms if s.name == name and s["st_info"]["bind"] == "STB_LOCAL")
    for s in syms:
        if (s["st_shndx"] == target["st_shndx"] and s.name != name
                and len(smap.get(s.name, [])) == 1):
            return smap[s.name][0] - s["st_value"] + target["st_value"], smap[name]
    raise AssertionError(f"no anchor for {name} in {obj}")


def same_name_script(tarball: Path) -> str:
    uid = uid_of(tarball)
    m = f"/sys/module/ksplice_{uid}/ksplice"
    return "\n".join([
        f'KS="{KS}"',
        mark("kallsyms_before"), f"grep ' {SAME_NAME}$' /proc/kallsyms",
        mark("mounts_before"), "cat /proc/mounts",
        mark("before"), "grep -c ' ksplice$' /proc/modules",
        mark("apply"), f"$KS apply {tarball} 2>&1; echo rc=$?",
        mark("after"), "grep -c ' ksplice$' /proc/modules",
        mark("after_sample"), "cat /proc/modules",
        mark("mounts_after"), "cat /proc/mounts",
        mark("kallsyms_after"), f"grep ' {SAME_NAME}$' /proc/kallsyms",
        mark("patches"), f"cat {m}/patches",
        mark("kaslr"), f"cat {m}/kaslr_offset",
        mark("undo"), f"$KS undo {uid} 2>&1; echo rc=$?",
        mark("restored"), "grep -c ' ksplice$' /proc/modules",
        mark("dmesg"), "dmesg | grep -E 'WARNING|BUG|Oops|ksplice'",
        mark("end"),
    ]) + "\n"


@pytest.fixture(scope="module")
def same_name(prebuilt_smp: Prebuilt, tmp_path_factory: pytest.TempPathFactory):
    outdir = tmp_path_factory.mktemp("same-name")
    res = create(prebuilt_smp, PATCHES / SAME_NAME_PATCH, outdir)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    tarball = tarball_from(res.stdout, outdir)
    kernel = prebuilt_smp.kernel
    boot = kernel.boot(same_name_script(tarball), hostfs=True, timeout=600)
    out = parse_marked(boot.guest_output)
    assert boot.ok and "end" in out, boot.output[-6000:]
    print(f"\nsmp: same-name static update, one boot, {boot.seconds:.1f} s")
    return out, static_address(kernel, SAME_NAME_OBJ, SAME_NAME), tarball


def test_same_name_static_exists_twice(same_name) -> None:
    _g, (addr, all_addrs), tarball = same_name
    assert len(all_addrs) == 2 and addr in all_addrs
    with tarfile.open(tarball) as tf:
        names = tf.getnames()
    assert any(n.endswith(".ko") for n in names)


def test_same_name_static_the_right_one_is_patched(same_name) -> None:
    g, (addr, all_addrs), _t = same_name
    kaslr = int(g["kaslr"], 16)
    f = patch_lines(g["patches"])[SAME_NAME]
    old = int(f["old"], 16)
    assert old - kaslr == addr, (hex(old), hex(kaslr), hex(addr))
    other = next(a for a in all_addrs if a != addr)
    running = sorted(int(line.split()[0], 16) for line in g["kallsyms_before"].splitlines())
    assert running == sorted([addr + kaslr, other + kaslr]), g["kallsyms_before"]
    assert "module" not in f


def test_same_name_static_behaviour(same_name) -> None:
    g, _a, _t = same_name
    assert g["before"] == "0" and g["restored"] == "0"
    assert exit_code(g["apply"]) == 0 and int(g["after"]) > 0, g["after_sample"]
    assert exit_code(g["undo"]) == 0
    # fs/namespace.c's m_show is untouched: /proc/mounts prints as before
    assert g["mounts_after"] == g["mounts_before"] and "/proc" in g["mounts_after"]
    assert g["kallsyms_after"] == g["kallsyms_before"]
    for bad in ("WARNING", "BUG", "Oops"):
        assert bad not in g["dmesg"]


# A global name for the new function that System.map already lists once, for the
# static uptime_proc_show() of fs/proc/uptime.c: the call must still reach the
# update's own function, not the running kernel's static of that name.
COLLIDING = "uptime_proc_show"


@pytest.mark.parametrize("name", ["ksplice_two_file_value", COLLIDING])
@pytest.mark.parametrize("variant", ["smp", "lp"])
def test_a_new_function_in_one_file_called_from_another(
        variant: str, name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """tests/patches/two-files-new-function.patch: version.c gains a global function that
    loadavg.c's changed code calls.  No running copy exists and run-pre never sees it;
    the primary's relocation resolves to the update's own new function, also when
    System.map lists an unrelated static function of that name."""
    pb: Prebuilt = request.getfixturevalue(f"prebuilt_{variant}")
    patch = tmp_path / "two-files.patch"
    patch.write_text((PATCHES / "two-files-new-function.patch").read_text()
                     .replace("ksplice_two_file_value", name))
    if name == COLLIDING:
        smap = kmod.read_system_map(pb.orig / "System.map")
        assert len(smap.get(COLLIDING, ())) == 1, smap.get(COLLIDING)
    res = create(pb, patch, tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert "collect: 2 object(s), 1 function(s) to patch (loadavg_proc_show), 1 new" \
        in res.stdout, res.stdout[-3000:]
    tb = tarball_from(res.stdout, tmp_path)
    uid = uid_of(tb)
    boot = pb.kernel.boot(updates.two_files_script(KS, tb, uid),
                          hostfs=True, timeout=300)
    g = parse_marked(boot.guest_output)
    assert boot.ok and "end" in g, boot.output[-4000:]
    updates.check_two_files(g)
