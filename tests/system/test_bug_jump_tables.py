# SPDX-License-Identifier: GPL-2.0-only
"""``__bug_table`` and ``__jump_table`` in the primary, on the lp test kernel (issue 10).

lp has ``CONFIG_BUG`` with ``DEBUG_BUGVERBOSE``, ``JUMP_LABEL`` and tracepoints,
as distribution kernels do.  Two updates are made by ``ksplice-create --patch``
on the lp targeted tree:

* ``umask-warn-on``: ``umask(2)`` gains ``WARN_ON(mask == 0123)``.  Its
  ``ud2`` needs the primary's ``__bug_table`` entry: without it the trap is
  an "invalid opcode" oops (arch/x86/kernel/traps.c handle_bug() ->
  lib/bug.c report_bug() -> module_find_bug()).  With it, ``umask 123``
  logs ``WARNING: ... at kernel/sys.c:<line of the WARN_ON>`` (kernel/panic.c
  __warn()) in the update's module; not before the apply, not after the undo.
* ``loadavg-static-branch``: /proc/loadavg ends in `` ksplice``, and in
  `` ksplice rps`` while the exported static key ``rps_needed``
  (net/core/dev.c) is on.  The key is switched through
  ``/sys/class/net/lo/queues/rx-0/rps_cpus`` (net/core/net-sysfs.c
  store_rps_map(): a non-empty map increments it, an empty one decrements
  it).  The primary's ``__jump_table`` entry is what lets the kernel patch
  the replacement code: when the key flips while the update is applied
  (kernel/jump_label.c __jump_label_mod_update()), and when the update is
  loaded while the key is already on (jump_label_add_module()).

The guest prints each step after an ``@@name`` marker; the tests read them.
"""

from __future__ import annotations

import re
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import PATCHES, Prebuilt, create, exit_code, parse_marked, tarball_from

import ksplice_tasks
from ksplice_tasks import names
from ksplice_tasks.obj import elfread, kernel_sections
from ksplice_tasks.obj.kernel_sections import Role
from ksplice_tasks.obj.objmanip import KSPLICE_JUMP_TABLE
from ksplice_tasks.stages import kmod

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

ROOT = Path(ksplice_tasks.__file__).resolve().parent.parent
KS = (f"chroot /host env PYTHONPATH={ROOT} TMPDIR=/run {sys.executable}"
      " -m ksplice_tasks.target.apply")
WARN_PATCH = PATCHES / "umask-warn-on.patch"
JUMP_PATCH = PATCHES / "loadavg-static-branch.patch"
RPS = "/sys/class/net/lo/queues/rx-0/rps_cpus"
BAD = "WARNING|BUG|Oops|invalid opcode"


def added_line(patch: Path, text: str) -> tuple[str, int]:
    """(file, line in the patched file) of the one added line of ``patch`` containing ``text``."""
    found = []
    path, line = "", 0
    for row in patch.read_text().splitlines():
        if row.startswith("+++ "):
            path = row[4:].split("\t")[0].removeprefix("b/")
        elif m := re.match(r"@@ -\d+(?:,\d+)? \+(\d+)", row):
            line = int(m.group(1))
        elif row.startswith("+"):
            if text in row:
                found.append((path, line))
            line += 1
        elif row.startswith(" "):
            line += 1
    assert len(found) == 1, (patch, text, found)
    return found[0]


@pytest.fixture(scope="module")
def tarballs(targeted_lp: Prebuilt, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Path]:
    out = {}
    for name, patch in (("warn", WARN_PATCH), ("jump", JUMP_PATCH)):
        outdir = tmp_path_factory.mktemp(f"tables-{name}")
        res = create(targeted_lp, patch, outdir)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        out[name] = tarball_from(res.stdout, outdir)
    return out


def uid_of(tarball: Path) -> str:
    uid = names.tarball_id(tarball.name)
    assert uid is not None, tarball
    return uid


def primary(tarball: Path, dest: Path) -> elfread.ElfObject:
    """The update's primary module, read from its tarball."""
    uid = uid_of(tarball)
    member = f"{names.package_dir(uid)}/{names.module_file(uid)}"
    with tarfile.open(tarball) as tar:
        tar.extract(member, dest, filter="data")
    return elfread.read_object(dest / member)


def entries(obj: elfread.ElfObject, name: str) -> list[kernel_sections.TableEntry]:
    secs = obj.sections_named(name)
    assert len(secs) == 1, f"{name}: {len(secs)} sections in the primary"
    return kernel_sections.table_entries(obj, secs[0])


def cstring(obj: elfread.ElfObject, site: kernel_sections.Site) -> str:
    data = obj.sections[site.shndx].data
    return data[site.offset:data.index(b"\0", site.offset)].decode()


def test_primary_carries_the_warn_on_bug_entry(tarballs, tmp_path: Path) -> None:
    """One verbose bug_entry: the ud2 in the primary's code, file and line of the WARN_ON."""
    obj = primary(tarballs["warn"], tmp_path)
    want_file, want_line = added_line(WARN_PATCH, "WARN_ON(")
    data = obj.sections_named("__bug_table")[0].data
    rows = []
    for e in entries(obj, "__bug_table"):
        code, file = e.site(obj, Role.CODE), e.site(obj, Role.FILE)
        assert code is not None and file is not None, e
        text = obj.sections[code.shndx]
        assert text.is_exec and text.data[code.offset:code.offset + 2] == b"\x0f\x0b", e
        rows.append((cstring(obj, file), e.value(data, "line")))
    assert rows == [(want_file, want_line)]


def test_primary_carries_the_static_branch_jump_entry(tarballs, tmp_path: Path) -> None:
    """One jump_entry, out of the loader's sight: not in ``__jump_table`` (the loader
    would register it at load, before ksplice resolved its key) but in the writable
    ``__ksplice_jump_table`` between ``ksplice_jump_start`` and ``ksplice_jump_stop``
    (kmod.JUMP_LINK_SCRIPT), which kmodsrc/patch.c registers after resolution.  Its
    code and target are loader relocations into the primary's code; its key, the
    exported ``rps_needed``, is a ksplice relocation record written by the core."""
    obj = primary(tarballs["jump"], tmp_path)
    assert obj.sections_named("__jump_table") == []
    [jt] = [k for k, sec in obj.sections.items() if sec.name == KSPLICE_JUMP_TABLE]
    value = {sym.name: sym.value for sym in obj.symbols if sym.shndx == jt}
    assert value[kmod.JUMP_STOP] - value[kmod.JUMP_START] == 16  # one struct jump_entry
    fields = [r for r in obj.relocs.get(jt, []) if r.offset < value[kmod.JUMP_STOP]]
    assert [r.offset for r in fields] == [0, 4]  # code and target; the key is not the loader's
    assert all(obj.sections[obj.symbols[r.sym].shndx].is_exec for r in fields)
    strings = b"\0" + b"".join(sec.data for sec in obj.sections.values()
                               if sec.name == ".ksplice.ksplice_relocs_str")
    assert b"\0rps_needed\0" in strings and KSPLICE_JUMP_TABLE.encode() in strings


def guest_script(warn: Path, jump: Path) -> str:
    wid, jid = uid_of(warn), uid_of(jump)
    return f"""
KS="{KS}"
cp /m/*.tar.gz /host/run/
mark() {{ echo "@@$1"; }}
left() {{ ls /sys/module | grep ksplice; echo end; }}
warn() {{ umask 123; umask 022; dmesg | grep -E '{BAD}'; }}
mark warn_before; warn
mark warn_apply; $KS apply /run/warn.tar.gz 2>&1; echo "rc=$?"
mark warn_after; warn
mark warn_undo; $KS undo {wid} 2>&1; echo "rc=$?"
mark warn_restored; warn
mark warn_left; left
dmesg -c > /dev/null
mark jump_before; cat /proc/loadavg
mark jump_apply; $KS apply /run/jump.tar.gz 2>&1; echo "rc=$?"
mark jump_off; cat /proc/loadavg
mark jump_on; echo 1 > {RPS} && cat /proc/loadavg
mark jump_off2; echo 0 > {RPS} && cat /proc/loadavg
echo 1 > {RPS}
mark jump_undo; $KS undo {jid} 2>&1; echo "rc=$?"
mark jump_undone_on; cat /proc/loadavg
mark jump_apply_on; $KS apply /run/jump.tar.gz 2>&1; echo "rc=$?"
mark jump_loaded_on; cat /proc/loadavg
mark jump_off3; echo 0 > {RPS} && cat /proc/loadavg
mark jump_undo2; $KS undo {jid} 2>&1; echo "rc=$?"
mark jump_restored; cat /proc/loadavg
mark jump_left; left
mark jump_bad; dmesg | grep -E '{BAD}'
mark end
"""


@pytest.fixture(scope="module")
def guest(targeted_lp: Prebuilt, tarballs: dict[str, Path]) -> tuple[dict[str, str], str]:
    """One boot of the lp kernel: the marked blocks, and the console's tail."""
    res = targeted_lp.kernel.boot(guest_script(tarballs["warn"], tarballs["jump"]),
                                  hostfs=True, timeout=900,
                                  files=[(f"/m/{k}.tar.gz", v) for k, v in tarballs.items()])
    out = parse_marked(res.guest_output)
    assert res.ok and "end" in out, res.output[-6000:]
    return out, res.output[-6000:]


def test_warn_on_in_the_replacement_reports_its_file_and_line(tarballs, guest) -> None:
    g, console = guest
    assert g["warn_before"] == "", g["warn_before"]
    assert exit_code(g["warn_apply"]) == 0 and g["warn_apply"].startswith("Done!"), console
    file, line = added_line(WARN_PATCH, "WARN_ON(")
    module = names.sysfs_module(uid_of(tarballs["warn"]))
    func = names.tagged_name("__x64_sys_umask", names.object_tag("kernel/sys.o"), "post")
    # busybox's umask builtin reads the old mask as umask(0) then sets it back
    # (strace: 'umask 022' after 'umask 123' calls umask(0123) again): 2 traps.
    lines = g["warn_after"].splitlines()
    assert lines and len(set(lines)) == 1, g["warn_after"]
    assert re.fullmatch(rf"WARNING: CPU: \d+ PID: \d+ at {re.escape(file)}:{line} "
                        rf"{func}\+0x[0-9a-f]+/0x[0-9a-f]+ \[{module}\]", lines[0]), lines
    assert exit_code(g["warn_undo"]) == 0, g["warn_undo"]
    assert g["warn_restored"] == g["warn_after"], "the undone code must not warn again"
    assert g["warn_left"] == "end"


def test_static_branch_in_the_replacement_follows_its_key(guest) -> None:
    g, console = guest
    plain = r"\d+\.\d\d \d+\.\d\d \d+\.\d\d \d+/\d+ \d+"
    assert re.fullmatch(plain, g["jump_before"]), g["jump_before"]
    assert exit_code(g["jump_apply"]) == 0 and g["jump_apply"].startswith("Done!"), console
    seen = {k: g[k] for k in ("jump_off", "jump_on", "jump_off2", "jump_undone_on",
                              "jump_loaded_on", "jump_off3", "jump_restored")}
    suffix = {k: re.sub(plain, "", v, count=1) for k, v in seen.items()}
    assert suffix == {"jump_off": " ksplice", "jump_on": " ksplice rps",
                      "jump_off2": " ksplice", "jump_undone_on": "",
                      "jump_loaded_on": " ksplice rps", "jump_off3": " ksplice",
                      "jump_restored": ""}, seen
    for k in ("jump_undo", "jump_apply_on", "jump_undo2"):
        assert exit_code(g[k]) == 0, (k, g[k])
    assert g["jump_left"] == "end"
    assert g["jump_bad"] == "", g["jump_bad"]
