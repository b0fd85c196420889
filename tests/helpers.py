# SPDX-License-Identifier: GPL-2.0-only
"""Small helpers shared by the test tiers."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ksplice_tasks import names
from ksplice_tasks.testing import testkernel
from ksplice_tasks.tree import snapshot

REPO = Path(__file__).resolve().parent.parent


def run_create(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """ksplice-create exactly as a user runs it, in a child process.

    The child imports this checkout's ksplice_tasks (PYTHONPATH), not whichever
    one the virtualenv has installed.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ksplice_tasks.cli", *args], cwd=cwd,
                          capture_output=True, text=True, check=False, env=env)


def run_doit(workdir: Path, *args: str, path_prefix: Path | None = None
             ) -> subprocess.CompletedProcess:
    """`doit` on a private copy of dodo.py, so persisted variables stay in workdir.

    ``path_prefix`` goes first on PATH (a directory of fake commands).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dodo.py", workdir / "dodo.py")
    doit = Path(sys.executable).with_name("doit")
    cmd = [str(doit)] if doit.exists() else [sys.executable, "-m", "doit"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([*cmd, *args], cwd=workdir, capture_output=True, text=True,
                          check=False, env=env)


def make_fake_kernel_tree(root: Path) -> Path:
    """Just enough of a kernel tree for input validation: Makefile, Kbuild, Kconfig."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 0\n")
    (root / "Kbuild").write_text("# fake\n")
    (root / "Kconfig").write_text("# fake\n")
    (root / "kernel").mkdir(exist_ok=True)
    (root / "kernel" / "fork.c").write_text("int x;\n")
    return root


# The least System.map input validation takes as whole: the image bounds and the anchor.
FAKE_SYSTEM_MAP = ("ffffffff81000000 T _stext\nffffffff81000000 T _text\n"
                   "ffffffff81000180 T _printk\nffffffff81e00000 T _etext\n"
                   "ffffffff82000000 B _end\n")


def make_orig(root: Path, config: bool = True, sysmap: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if config:
        (root / ".config").write_text("CONFIG_64BIT=y\n")
    if sysmap:
        (root / "System.map").write_text(FAKE_SYSTEM_MAP)
    return root


@dataclass(frozen=True)
class Prebuilt:
    """A KERNEL_SOURCE prebuilt by ksplice-create, with its ORIG_CONFIG."""

    kernel: testkernel.TestKernel
    ksrc: Path
    orig: Path

    @property
    def postdir(self) -> Path:
        return self.orig / "post"


PATCHES = REPO / "tests" / "patches"


def _kind(st: os.stat_result) -> str:
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


def _entries(root: Path, exclude: list[Path]) -> dict[str, os.stat_result]:
    return {rel: e.stat(follow_symlinks=False) for rel, e in snapshot.walk(root, exclude)}


def make_built_tree(root: Path, sources: dict[str, str]) -> Prebuilt:
    """A small built tree and a fresh snapshot of it: ``sources`` (path -> text) a year
    old, then newer build outputs (kernel/fork.o, its .cmd naming the tree's path,
    vmlinux) and a symlink ``link-to-fork``. The tree is ``root/linux``, ORIG_CONFIG
    ``root/orig`` (no kernel: for the post-tree tests)."""
    old = time.time() - 86400 * 365
    t = root / "linux"
    for rel, text in sources.items():
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        (t / rel).write_text(text)
        os.utime(t / rel, (old, old))
    time.sleep(0.01)
    (t / "kernel").mkdir(parents=True, exist_ok=True)
    (t / "kernel" / ".fork.o.cmd").write_text(f"savedcmd_kernel/fork.o := gcc {t}/x.c\n")
    (t / "kernel" / "fork.o").write_bytes(b"\x7fELF object")
    (t / "vmlinux").write_bytes(b"\x7fELF vmlinux")
    os.symlink("kernel/fork.c", t / "link-to-fork")
    orig = root / "orig"
    orig.mkdir()
    snapshot.make_post_tree(t, orig / "post")
    return Prebuilt(None, t, orig)  # type: ignore[arg-type]


def post_tree_diff(pb: Prebuilt) -> list[str]:
    """Paths where the post tree is not the snapshot make_post_tree would make of KERNEL_SOURCE now.

    Independent of reset_post's own bookkeeping: the snapshot rule is applied
    to the trees as they are. Each row is ``"<what>: <path>"``:

    - ``extra``: in the post tree only (the post marker excepted);
    - ``missing``: in KERNEL_SOURCE only;
    - ``kind``: a file in one, a directory or symlink in the other;
    - ``symlink``: a different link target;
    - ``not linked``: an object, or a file older than the first build, that is
      not the pre tree's own inode (a write through it, or a replacement);
    - ``content``/``mode``: a build product (copied, dependency files with the
      tree path relocated) whose bytes or mode differ from KERNEL_SOURCE's.

    Sorted by path; ``[]`` means the post tree is exactly the snapshot.
    """
    post, ksrc = pb.postdir, pb.ksrc
    exclude = [p for p in (pb.orig, post) if p == ksrc or ksrc in p.parents]
    since = json.loads((post / snapshot.POST_MARKER).read_text())["build_start"]
    old_root, new_root = os.fsencode(ksrc) + b"/", os.fsencode(post) + b"/"
    pre_entries, post_entries = _entries(ksrc, exclude), _entries(post, [])
    post_entries.pop(snapshot.POST_MARKER, None)
    out = []
    for rel in sorted(pre_entries.keys() | post_entries.keys()):
        a, b = pre_entries.get(rel), post_entries.get(rel)
        if a is None:
            out.append(f"extra: {rel}")
            continue
        if b is None:
            if _kind(a) != "other":
                out.append(f"missing: {rel}")
            continue
        kind = _kind(a)
        if kind != _kind(b):
            out.append(f"kind: {rel}")
        elif kind == "symlink":
            if os.readlink(ksrc / rel) != os.readlink(post / rel):
                out.append(f"symlink: {rel}")
        elif kind == "file":
            if snapshot.may_link(os.path.basename(rel), a.st_mtime, since):
                if (a.st_ino, a.st_dev) != (b.st_ino, b.st_dev):
                    out.append(f"not linked: {rel}")
                continue
            want = (ksrc / rel).read_bytes()
            if snapshot.is_dependency_file(rel):
                want = want.replace(old_root, new_root)
            if (post / rel).read_bytes() != want:
                out.append(f"content: {rel}")
            elif a.st_mode != b.st_mode:
                out.append(f"mode: {rel}")
    return out


def create(pb: Prebuilt, patch: Path, outdir: Path, *args: str) -> subprocess.CompletedProcess:
    """ksplice-create --patch on a prebuilt tree, writing the tarball into outdir."""
    outdir.mkdir(parents=True, exist_ok=True)
    return run_create(f"--patch={patch}", f"--config={pb.orig}", *args, str(pb.ksrc),
                      cwd=outdir)


def executed_tasks(stdout: str) -> list[str]:
    """The doit tasks a run executed, from the reporter's '==> name: doc' lines."""
    return [line[4:].split(": ", 1)[0] for line in stdout.splitlines()
            if line.startswith("==> ")]


# The five patches of the create issue, and what objdiff must find in each.
EXPECTED = {
    "loadavg-string": {"fs/proc/loadavg.o": (["loadavg_proc_show"], [])},
    "umask-syscall": {"kernel/sys.o": (["__x64_sys_umask"], [])},
    "getpgid-inlined-helper": {"kernel/sys.o": (
        ["__do_sys_getpgrp", "__x64_sys_getpgid", "__x64_sys_getpgrp"], ["do_getpgid"])},
    "version-new-function": {"fs/proc/version.o": (["version_proc_show"],
                                                   ["ksplice_version_note"])},
    "binfmt-misc-module": {"fs/binfmt_misc.o": (["bm_status_read"], [])},
}


def tarball_from(stdout: str, outdir: Path) -> Path:
    """The tarball ksplice-create's closing message names."""
    m = re.search(rf"Ksplice update tarball written to ({names.TARBALL_RE.pattern})", stdout)
    assert m, stdout[-2000:]
    return outdir / m.group(1)


def parse_marked(out: str) -> dict[str, str]:
    """Guest output cut into blocks: a line '@@key' starts the block of that key."""
    res: dict[str, str] = {}
    key = None
    for line in out.splitlines():
        if line.startswith("@@"):
            key = line[2:].strip()
            res[key] = ""
        elif key is not None:
            res[key] += line + "\n"
    return {k: v.strip() for k, v in res.items()}


def exit_code(block: str) -> int:
    """The last 'rc=N' line a guest block printed."""
    m = re.findall(r"^rc=(\d+)$", block, re.M)
    assert m, block
    return int(m[-1])
