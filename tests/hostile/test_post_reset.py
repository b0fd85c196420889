# SPDX-License-Identifier: GPL-2.0-only
"""Issue 11 kind 2: after any create, the post tree is the snapshot but for the current patch.

reset_post used to restore only the record's files and objects, so what an
earlier make left (vmlinux, built-in.a, .version, arch/x86/boot/*, .d and
.cmd files, generated headers) stayed and a later update saw changes not its
own. post_tree_diff (tests/helpers.py) compares the whole post tree with the
snapshot of KERNEL_SOURCE.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from helpers import PATCHES, Prebuilt, create, post_tree_diff, tarball_from

from ksplice_tasks.tree import snapshot

LOADAVG_PRODUCTS = {"fs/proc/loadavg.c", "fs/proc/loadavg.o", "fs/proc/.loadavg.o.cmd"}


def _pre_entries_unchanged(before: dict[str, str], pb: Prebuilt) -> bool:
    """Nothing of the pre tree changed or went (a targeted create may add pre objects)."""
    after = snapshot.tree_digest(pb.ksrc, [pb.orig])
    return {k: after.get(k) for k in before} == before


def refused_create(pb: Prebuilt, patch: Path, tmp_path: Path, message: str) -> None:
    before = snapshot.tree_digest(pb.ksrc, [pb.orig])
    res = create(pb, patch, tmp_path / patch.stem)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ksplice-create: error:")]
    assert len(errors) == 1 and message in errors[0], out[-3000:]
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert post_tree_diff(pb) == []
    assert _pre_entries_unchanged(before, pb)


BAD = {
    "bad-build-break": "Applying the patch appears to break the kernel build",
    "bad-data-change": "overflowuid",
    "bad-no-change": "No changes detected",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_failed_create_leaves_the_snapshot(hostile_lp: Prebuilt, tmp_path: Path,
                                             name: str) -> None:
    refused_create(hostile_lp, PATCHES / f"{name}.patch", tmp_path, BAD[name])


def test_a_good_create_leaves_only_its_patch_then_a_failed_one_nothing(
        hostile_lp: Prebuilt, tmp_path: Path) -> None:
    res = create(hostile_lp, PATCHES / "loadavg-string.patch", tmp_path / "good")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    left = {d.split(": ", 1)[1] for d in post_tree_diff(hostile_lp)}
    assert "fs/proc/loadavg.c" in left and left <= LOADAVG_PRODUCTS, left
    refused_create(hostile_lp, PATCHES / "bad-no-change.patch", tmp_path, BAD["bad-no-change"])


def test_what_an_earlier_make_left_goes(hostile_lp: Prebuilt, tmp_path: Path) -> None:
    """The leftovers of the issue: a link, archives, boot objects, dependency files."""
    post = hostile_lp.postdir
    for rel, data in {"vmlinux": b"\x7fELF linked", "built-in.a": b"!<thin>\n",
                      ".version": b"7\n", "arch/x86/boot/setup.o": b"\x7fELF boot",
                      "kernel/.sys.o.d": b"kernel/sys.o: kernel/sys.c\n",
                      "kernel/.fork.o.cmd": b"savedcmd_kernel/fork.o := gcc\n"}.items():
        path = post / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        path.write_bytes(data)
    header = post / "include" / "generated" / "utsrelease.h"
    text = header.read_text()
    header.unlink()  # as make's filechk does: a new file replaces the snapshot's
    header.write_text(text.replace('"', '"x', 1))
    (post / "scripts" / "junk-dir").mkdir()
    os.symlink("nowhere", post / "scripts" / "junk-dir" / "link")
    assert len(post_tree_diff(hostile_lp)) >= 8
    refused_create(hostile_lp, PATCHES / "bad-no-change.patch", tmp_path, BAD["bad-no-change"])


MAKEFILE_COMMENT = """--- a/fs/proc/Makefile
+++ b/fs/proc/Makefile
@@ -2,6 +2,7 @@
 #
 # Makefile for the Linux proc filesystem routines.
 #
+# ksplice: a comment only, which makes the post build a full make

 obj-y   += proc.o

"""


def test_a_full_make_counts_only_the_image_and_modules(prebuilt_lp: Prebuilt,
                                                      tmp_path: Path) -> None:
    """Issue 11 kind 3: a .c change plus a Makefile comment relinks vmlinux and remakes
    init/version-timestamp.o and arch/x86/boot/*.o; the update holds loadavg's change only.

    The shared full tree is left as the snapshot: a refused create afterwards
    resets everything the full make wrote (vmlinux, boot objects, .cmd files).
    """
    patch = tmp_path / "loadavg-and-makefile.patch"
    patch.write_text((PATCHES / "loadavg-string.patch").read_text() + MAKEFILE_COMMENT)
    before = snapshot.tree_digest(prebuilt_lp.ksrc, [prebuilt_lp.orig])
    res = create(prebuilt_lp, patch, tmp_path / "good")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    with tarfile.open(tarball_from(res.stdout, tmp_path / "good")) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/debug/post-build.json"))
        post_build = json.load(tar.extractfile(member))  # type: ignore[arg-type]
    assert post_build["mode"] == "full" and post_build["changed"] == ["fs/proc/loadavg.o"]
    left = {d.split(": ", 1)[1] for d in post_tree_diff(prebuilt_lp)}
    assert {"vmlinux", "fs/proc/Makefile", "fs/proc/loadavg.o"} <= left, sorted(left)[:50]
    stale = tmp_path / "stale.patch"
    stale.write_text((PATCHES / "loadavg-string.patch").read_text()
                     .replace('-\tseq_printf(m, "%lu.%02lu', '-\tseq_printf(m, "%lu.%03lu'))
    refused_create(prebuilt_lp, stale, tmp_path, "the patch does not apply")
    assert snapshot.tree_digest(prebuilt_lp.ksrc, [prebuilt_lp.orig]) == before
