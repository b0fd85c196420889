# SPDX-License-Identifier: GPL-2.0-only
"""Issue 11 kind 1 on a real tree: patch sections the ---/+++ check never saw.

GNU patch also applies git renames, copies and mode changes, binary patches,
context and normal diffs. Each is refused in one line before the post tree
changes; what patch(1) may still do is compared with the snapshot
(tests/unit/test_patch_sections.py has the fast cases of every kind).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import PATCHES, REPO, Prebuilt, create, post_tree_diff

from ksplice_tasks.tree import snapshot

EXAMPLE = (REPO / "ksplice_tasks" / "data" / "example-loadavg.patch").read_text()
RENAME = """diff --git a/fs/proc/version.c b/fs/proc/version2.c
similarity index 100%
rename from fs/proc/version.c
rename to fs/proc/version2.c
"""
COPY = """diff --git a/fs/proc/version.c b/fs/proc/version2.c
similarity index 100%
copy from fs/proc/version.c
copy to fs/proc/version2.c
"""
MODE_ONLY = """diff --git a/fs/proc/version.c b/fs/proc/version.c
old mode 100644
new mode 100755
"""
CONTEXT = """*** a/fs/proc/version.c
--- b/fs/proc/version.c
***************
*** 1,1 ****
--- 1,2 ----
+ /* x */
"""
BINARY = """diff --git a/fs/proc/blob.bin b/fs/proc/blob.bin
new file mode 100644
index 0000000..e69de29
GIT binary patch
literal 3
KcmZQzWB>pF00961

literal 0
HcmV?d00001

"""
NORMAL = "0a1\n> /* x */\n"
QUOTED_MISSING = ('--- "a/fs/proc/no\\tsuch.c"\n+++ "b/fs/proc/no\\tsuch.c"\n'
                  "@@ -1 +1 @@\n-x\n+y\n")
ONLY_IN = "Only in b/fs/proc: extra.c\n"
STRUCT_C = """--- a/fs/proc/base.c
+++ b/fs/proc/base.c
@@ -2483,6 +2483,7 @@
 struct timers_private {
 \tstruct pid *pid;
 \tstruct task_struct *task;
+\tint ksplice_extra;
 \tstruct sighand_struct *sighand;
 \tstruct pid_namespace *ns;
 \tunsigned long flags;
"""
STRUCT_H = """--- a/include/linux/seq_file.h
+++ b/include/linux/seq_file.h
@@ -16,6 +16,7 @@
\x20
 struct seq_file {
 \tchar *buf;
+\tchar *ksplice_buf2;
 \tsize_t size;
 \tsize_t from;
 \tsize_t count;
"""

CASES = {
    "issue example: a rename after the example": (EXAMPLE + RENAME, "renames a file"),
    "copy": (EXAMPLE + COPY, "copies a file"),
    "mode change only": (EXAMPLE + MODE_ONLY, "changes a file's mode"),
    "mode only, alone": (MODE_ONLY, "changes a file's mode"),
    "context diff": (CONTEXT, "is a context diff"),
    "normal diff": (EXAMPLE + NORMAL, "is a normal (ed-style) diff"),
    "binary patch": (EXAMPLE + BINARY, "is a binary patch"),
    "only in": (EXAMPLE + ONLY_IN, "left a file out"),
    "quoted name of no file": (QUOTED_MISSING, "does not apply"),
    "a struct gains a member (after a code change)": (
        EXAMPLE + STRUCT_C,
        "data layout change: struct timers_private (fs/proc/base.c:2483) changes"),
    "a header's struct gains a member": (
        STRUCT_H, "data layout change: struct seq_file (include/linux/seq_file.h:17) changes"),
    "a new file in a new directory": (
        "--- /dev/null\n+++ b/fs/newdir/sub/x.c\n@@ -0,0 +1 @@\n+int x;\n",
        "No changes detected"),
}


def refused(pb: Prebuilt, patch_text: str, message: str, tmp_path: Path) -> str:
    """Create with this patch: a one-line refusal naming ``message``, nothing changed."""
    patch = tmp_path / "hostile.patch"
    patch.write_text(patch_text)
    before = snapshot.tree_digest(pb.ksrc, [pb.orig])
    res = create(pb, patch, tmp_path / "out")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and message in errors[0], out[-3000:]
    assert post_tree_diff(pb) == []
    after = snapshot.tree_digest(pb.ksrc, [pb.orig])
    assert {k: after.get(k) for k in before} == before  # a targeted create may add pre objects
    return errors[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused(hostile_lp: Prebuilt, tmp_path: Path, name: str) -> None:
    text, message = CASES[name]
    refused(hostile_lp, text, message, tmp_path)


def test_the_issue_example_then_the_example_alone(hostile_lp: Prebuilt, tmp_path: Path) -> None:
    """The refused rename leaves nothing behind: the plain example then still patches."""
    refused(hostile_lp, EXAMPLE + RENAME, "renames a file", tmp_path)
    assert not (hostile_lp.postdir / "fs/proc/version2.c").exists()
    res = create(hostile_lp, PATCHES.parent.parent / "ksplice_tasks" / "data"
                 / "example-loadavg.patch", tmp_path / "ok")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    left = {d.split(": ", 1)[1] for d in post_tree_diff(hostile_lp)}
    assert "fs/proc/loadavg.c" in left
    assert left <= {"fs/proc/loadavg.c", "fs/proc/loadavg.o", "fs/proc/.loadavg.o.cmd"}, left
