# SPDX-License-Identifier: GPL-2.0-only
"""The refusal catalogue: one hostile input per row, against a real prebuilt tree.

Each row is an input a user (or an attacker) could give ``ksplice-create`` or
``doit``. Every row is checked the same way:

- the exit status is nonzero (``rc``: 2 for usage errors, 1 otherwise);
- exactly one error line, naming the problem (``message`` is part of it),
  and no ``Traceback`` anywhere in the output;
- the pre tree is as it was (inode, size and mtime of every file; a targeted
  create may only add its pre objects), ORIG_CONFIG's
  input files are byte-identical; the post tree is as it was for a row
  refused at validation, and equals its snapshot
  (:func:`helpers.post_tree_diff`) for a row refused after the reset;
- rows marked ``early`` are refused at validation: no task ran.

The rows that reach a build use the real lp test kernel's targeted tree of
this suite (``hostile_lp``); the others are refused before any task runs.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import PATCHES, Prebuilt, post_tree_diff, run_create, run_doit

import ksplice_tasks
from ksplice_tasks.tree import snapshot

pytestmark = pytest.mark.kernel

REPO = Path(ksplice_tasks.__file__).resolve().parent.parent
EXAMPLE = REPO / "ksplice_tasks" / "data" / "example-loadavg.patch"
ORIG_FILES = (".config", "System.map", "Module.symvers", "kernel.release", "kallsyms")


@dataclass
class World:
    """What a row may use: the prebuilt tree and a private scratch directory."""

    pb: Prebuilt
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    def file(self, name: str, data: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
        return path

    def orig_copy(self, **files: str | bytes | None) -> Path:
        """A copy of ORIG_CONFIG's input files, with some replaced (None: removed)."""
        orig = self.tmp / "orig"
        orig.mkdir(exist_ok=True)
        for name in ORIG_FILES:
            if (self.pb.orig / name).is_file():
                shutil.copy(self.pb.orig / name, orig / name)
        for key, data in files.items():
            name = {"config": ".config", "system_map": "System.map",
                    "symvers": "Module.symvers", "release": "kernel.release"}[key]
            if data is None:
                (orig / name).unlink(missing_ok=True)
            elif isinstance(data, bytes):
                (orig / name).write_bytes(data)
            else:
                (orig / name).write_text(data)
        return orig

    def create(self, *args: str, patch: Path | str | None = EXAMPLE) -> list[str]:
        """ksplice-create argv on the prebuilt tree (the last word is KERNEL_SOURCE)."""
        return [*([f"--patch={patch}"] if patch is not None else []),
                f"--config={self.pb.orig}", *args, str(self.pb.ksrc)]

    def sysmap(self) -> str:
        return (self.pb.orig / "System.map").read_text()


def _patch(w: World, text: str, name: str = "hostile.patch") -> Path:
    return w.file(name, text)


LOADAVG_HUNK = EXAMPLE.read_text()


@dataclass(frozen=True)
class Row:
    name: str
    argv: Callable[[World], list[str]]
    message: str
    rc: int = 1
    early: bool = True  # refused at validation, before any task
    doit: bool = False  # argv are doit words, run by the doit front end


def _cfg(w: World, **files: str | bytes | None) -> list[str]:
    return [f"--patch={EXAMPLE}", f"--config={w.orig_copy(**files)}", str(w.pb.ksrc)]


ROWS = [
    # -- the command line -----------------------------------------------------------------
    Row("no arguments", lambda w: [], "the following arguments are required", rc=2),
    Row("two actions", lambda w: w.create("--prebuild"), "give exactly one of", rc=2),
    Row("no action", lambda w: w.create(patch=None), "give exactly one of", rc=2),
    Row("--full without --prebuild", lambda w: w.create("--full"),
        "--full goes with --prebuild", rc=2),
    Row("unknown option", lambda w: w.create("--frobnicate"), "unrecognized arguments", rc=2),
    Row("-j 0", lambda w: w.create("-j", "0"), "-j needs a positive number of jobs"),
    Row("-j -3", lambda w: w.create("-j", "-3"), "-j needs a positive number of jobs"),
    Row("-j abc", lambda w: w.create("-j", "abc"), "invalid int value", rc=2),
    # -- KERNEL_SOURCE --------------------------------------------------------------------
    Row("KERNEL_SOURCE missing", lambda w: [f"--patch={EXAMPLE}", str(w.tmp / "nope")],
        "nope"),
    Row("KERNEL_SOURCE is a file", lambda w: [f"--patch={EXAMPLE}", str(EXAMPLE)],
        "example-loadavg.patch"),
    Row("KERNEL_SOURCE not a kernel tree", lambda w: [
        f"--patch={EXAMPLE}", f"--config={w.pb.orig}", str(w.tmp)], "kernel"),
    # -- ORIG_CONFIG ----------------------------------------------------------------------
    Row("ORIG_CONFIG missing", lambda w: [f"--patch={EXAMPLE}", f"--config={w.tmp / 'x'}",
                                          str(w.pb.ksrc)],
        "Failed to find ORIG_CONFIG directory"),
    Row("ORIG_CONFIG inside KERNEL_SOURCE", lambda w: [
        f"--patch={EXAMPLE}", f"--config={w.pb.ksrc / 'kernel'}", str(w.pb.ksrc)],
        "ORIG_CONFIG cannot be KERNEL_SOURCE or a subdirectory"),
    Row("no .config", lambda w: _cfg(w, config=None), "Failed to find .config file"),
    Row("no System.map", lambda w: _cfg(w, system_map=None),
        "Failed to find System.map or kallsyms file"),
    Row("Debian's stub System.map", lambda w: _cfg(
        w, system_map="ffffffffffffffff B The real System.map is in the "
        "linux-image-6.1.0-57-amd64-dbg package\n"), "is the distribution's stub"),
    Row("empty System.map", lambda w: _cfg(w, system_map=""), "lists no symbols"),
    Row("System.map cut to 1,000 lines", lambda w: _cfg(
        w, system_map="".join(w.sysmap().splitlines(keepends=True)[:1000])),
        "it is cut short"),
    Row("System.map without _printk", lambda w: _cfg(w, system_map="".join(
        ln for ln in w.sysmap().splitlines(keepends=True) if not ln.endswith(" _printk\n"))),
        "lists _printk 0 times"),
    Row("System.map of binary junk", lambda w: _cfg(w, system_map=bytes(range(256)) * 64),
        "lists no symbols"),
    Row(".config of another version", lambda w: _cfg(w, config=(
        w.pb.orig / ".config").read_text().replace(" 6.1.", " 5.10.", 1)),
        "was made for 5.10."),
    Row("malformed Module.symvers", lambda w: _cfg(w, symvers="not\ta symvers line\n"),
        "not a Module.symvers line"),
    Row("Module.symvers of another kernel", lambda w: _cfg(
        w, symvers=(w.pb.orig / "Module.symvers").read_text()
        + "0x12345678\tksplice_no_such_export\tvmlinux\tEXPORT_SYMBOL\t\n"),
        "does not belong to"),
    Row("kernel.release with a slash", lambda w: _cfg(w, release="6.1.0/../../x\n"),
        "kernel.release"),
    Row("kallsyms read without root", lambda w: _kallsyms_zero(w),
        "only zero addresses: read /proc/kallsyms as root"),
    # -- the post tree --------------------------------------------------------------------
    Row("postdir inside KERNEL_SOURCE", lambda w: w.create(f"--postdir={w.pb.ksrc / 'p'}"),
        "postdir cannot be KERNEL_SOURCE or a subdirectory"),
    Row("postdir is KERNEL_SOURCE", lambda w: w.create(f"--postdir={w.pb.ksrc}"),
        "postdir cannot be KERNEL_SOURCE or a subdirectory"),
    Row("postdir contains ORIG_CONFIG", lambda w: w.create(f"--postdir={w.pb.orig.parent}"),
        "would contain"),
    Row("postdir is someone's directory", lambda w: w.create(
        f"--postdir={w.file('mine/keep.txt', 'precious').parent}"),
        "is not empty and was not made by ksplice"),
    # -- the patch file -------------------------------------------------------------------
    Row("patch missing", lambda w: w.create(patch=w.tmp / "none.patch"),
        "Failed to find patch file"),
    Row("patch is a directory", lambda w: w.create(patch=w.tmp),
        "Failed to find patch file"),
    Row("empty patch", lambda w: w.create(patch=_patch(w, "")), "the patch names no files",
        early=False),
    Row("binary junk as a patch", lambda w: w.create(patch=w.file("j.patch", os.urandom(4096))),
        "the patch names no files", early=False),
    Row("absolute path", lambda w: w.create(patch=_patch(w, LOADAVG_HUNK.replace(
        "a/fs/proc/loadavg.c", "/etc/passwd"))), "absolute path", early=False),
    Row("'..' path", lambda w: w.create(patch=_patch(w, LOADAVG_HUNK.replace(
        "b/fs/proc/loadavg.c", "b/../../../../etc/passwd"))), "'..'", early=False),
    Row("shell metacharacters in the path", lambda w: w.create(patch=_patch(
        w, LOADAVG_HUNK.replace("fs/proc/loadavg.c",
                                f"fs/$(touch {w.tmp}/pwned);`touch {w.tmp}/pwned2`.c"))),
        "does not apply", early=False),
    Row("context that does not match", lambda w: w.create(patch=_patch(
        w, LOADAVG_HUNK.replace("-\tseq_printf(m, \"%lu.", "-\tseq_printf(m, \"%lx."))),
        "does not apply", early=False),
    Row("a file the tree lacks", lambda w: w.create(patch=_patch(w, LOADAVG_HUNK.replace(
        "fs/proc/loadavg.c", "fs/proc/no-such-file.c"))), "does not apply", early=False),
    Row("a patch already in the tree (reversed)", lambda w: w.create(patch=_reversed(w)),
        "does not apply", early=False),
    Row("unsupported --patch-opt", lambda w: w.create("--patch-opt=-d /tmp"),
        "unsupported --patch-opt", early=False),
    Row("--patch-opt without a strip level", lambda w: w.create("--patch-opt=-l"),
        "must include a strip level", early=False),
    Row("--patch-opt -p9", lambda w: w.create("--patch-opt=-p9"),
        "has no components left after -p9", early=False),
    Row("--diffext with no such files", lambda w: [
        "--diffext=.ksplice-none", f"--config={w.pb.orig}", str(w.pb.ksrc)],
        "no file in KERNEL_SOURCE ends with '.ksplice-none'", early=False),
    Row("patch that changes nothing", lambda w: w.create(patch=PATCHES / "bad-no-change.patch"),
        "No changes detected", early=False),
    Row("patch that breaks the build", lambda w: w.create(
        patch=PATCHES / "bad-build-break.patch"), "appears to break the kernel build: "
        "fs/proc/loadavg.c:18:44: error: expected", early=False),
    Row("data change", lambda w: w.create(patch=PATCHES / "bad-data-change.patch"),
        "data", early=False),
    Row("Kconfig change on a targeted tree", lambda w: w.create(patch=_patch(
        w, "--- a/init/Kconfig\n+++ b/init/Kconfig\n@@ -1,2 +1,3 @@\n+# ksplice\n"
        + "".join(" " + ln for ln in (w.pb.ksrc / "init/Kconfig").read_text()
                  .splitlines(keepends=True)[:2]))), "--prebuild --full", early=False),
    # -- the output directory -------------------------------------------------------------
    Row("output directory is missing (doit)", lambda w: [
        "create_update", f"KSRC={w.pb.ksrc}", f"ORIG={w.pb.orig}", f"PATCH={EXAMPLE}",
        f"OUTDIR={w.tmp / 'nope'}"], "the output directory", doit=True),
    Row("output directory is a file (doit)", lambda w: [
        "create_update", f"KSRC={w.pb.ksrc}", f"ORIG={w.pb.orig}", f"PATCH={EXAMPLE}",
        f"OUTDIR={w.file('afile', 'x')}"], "is not a directory", doit=True),
    Row("doit create_update without PATCH", lambda w: [
        "create_update", f"KSRC={w.pb.ksrc}", f"ORIG={w.pb.orig}"], "PATCH", doit=True),
    Row("doit with KSRC missing", lambda w: [
        "create_update", f"KSRC={w.tmp / 'nope'}", f"ORIG={w.pb.orig}", f"PATCH={EXAMPLE}"],
        "nope", doit=True),
]


def _kallsyms_zero(w: World) -> list[str]:
    """ORIG_CONFIG with only a kallsyms, read by a user without CAP_SYSLOG (all zeros)."""
    orig = w.orig_copy(system_map=None)
    lines = [f"0000000000000000 {ln.split(' ', 1)[1]}" for ln in w.sysmap().splitlines()[:5000]]
    (orig / "kallsyms").write_text("\n".join(lines) + "\n")
    return [f"--patch={EXAMPLE}", f"--config={orig}", str(w.pb.ksrc)]


def _reversed(w: World) -> Path:
    """The example patch as its reverse: patch(1) sees it as already applied."""
    text = LOADAVG_HUNK
    swapped = []
    for line in text.splitlines(keepends=True):
        if line.startswith("--- "):
            swapped.append("+++ " + line[4:])
        elif line.startswith("+++ "):
            swapped.append("--- " + line[4:])
        elif line.startswith("+") and not line.startswith("+++"):
            swapped.append("-" + line[1:])
        elif line.startswith("-") and not line.startswith("---"):
            swapped.append("+" + line[1:])
        else:
            swapped.append(line)
    # ---/+++ must stay in order: put the --- line first again
    for i in range(len(swapped) - 1):
        if swapped[i].startswith("+++ ") and swapped[i + 1].startswith("--- "):
            swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    return _patch(w, "".join(swapped), "reversed.patch")


def _orig_inputs(orig: Path) -> dict[str, bytes]:
    return {n: (orig / n).read_bytes() for n in ORIG_FILES if (orig / n).is_file()}


def pre_tree_state(ksrc: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (inode, size, mtime ns) of every file in the pre tree."""
    out = {}
    for rel, entry in snapshot.walk(ksrc):
        if not entry.is_dir(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            out[rel] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


# A targeted tree builds a create's pre objects in the pre tree, once, and keeps them
# (README, "Targeted and full prebuilds"): new objects and their Kbuild files only.
# Every make there also rewrites Kbuild's own dependency files of its always-run
# checks (.missing-syscalls.d), with the same content.
_PRE_OBJECT = re.compile(r"(\.o|\.o\.cmd|\.o\.d)$")


def pre_tree_changes(before: dict, after: dict) -> list[str]:
    """What changed in the pre tree beyond pre objects a targeted create may add."""
    changed = [f"changed: {r}" for r in before if r in after and after[r] != before[r]
               and not (snapshot.is_dependency_file(r) and after[r][1] == before[r][1])]
    removed = [f"removed: {r}" for r in before if r not in after]
    added = [f"added: {r}" for r in after if r not in before and not _PRE_OBJECT.search(r)]
    return sorted(changed + removed + added)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_hostile_input_is_one_line_and_changes_nothing(row: Row, hostile_lp: Prebuilt,
                                                       tmp_path: Path) -> None:
    w = World(hostile_lp, tmp_path)
    argv = row.argv(w)
    pre_before = pre_tree_state(hostile_lp.ksrc)
    orig_before = _orig_inputs(hostile_lp.orig)
    post_before = snapshot.tree_fingerprint(hostile_lp.postdir)
    if row.doit:
        res = run_doit(tmp_path / "work", *argv)
        prefix = "ksplice: error: "
    else:
        res = run_create(*argv, cwd=tmp_path)
        prefix = "ksplice-create: error: "
    output = res.stdout + res.stderr
    assert res.returncode == row.rc if not row.doit else res.returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1, output[-3000:]
    assert errors[0].startswith(prefix), errors
    assert row.message in errors[0], errors[0]
    if row.early:  # no task ran (the front ends name the one they were asked for)
        assert not [ln for ln in res.stdout.splitlines() if ln.startswith("==> ")
                    and not ln.startswith(("==> create_update", "==> prebuild"))], res.stdout
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert pre_tree_changes(pre_before, pre_tree_state(hostile_lp.ksrc)) == []
    assert _orig_inputs(hostile_lp.orig) == orig_before
    if row.early:  # the post tree may hold an earlier update: it must still hold it
        assert snapshot.tree_fingerprint(hostile_lp.postdir) == post_before
    else:  # refused after the reset: back at the snapshot
        assert post_tree_diff(hostile_lp) == []
    assert not list(tmp_path.glob("*.tar.gz"))


def test_the_catalogue_has_forty_rows() -> None:
    assert len(ROWS) >= 40 and len({r.name for r in ROWS}) == len(ROWS)

