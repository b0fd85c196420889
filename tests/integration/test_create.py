# SPDX-License-Identifier: GPL-2.0-only
"""`ksplice-create --patch` on the real Linux 6.1 tree: tarballs, incremental reruns, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from helpers import (
    EXPECTED,
    PATCHES,
    Prebuilt,
    create,
    executed_tasks,
    run_create,
    run_doit,
    tarball_from,
)

from ksplice_tasks.stages import patching, prebuild
from ksplice_tasks.stages.inputs import STATE_DIRNAME, resolve
from ksplice_tasks.stages.layout import state_layout

pytestmark = pytest.mark.kernel

def vermagic(ko: Path) -> str:
    out = subprocess.run(["modinfo", "-F", "vermagic", str(ko)], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def pre_tree_untouched(pb: Prebuilt) -> bool:
    """Nothing the pre build read or made has changed (the prebuild's own check)."""
    return prebuild.pre_tree_unchanged(resolve(pb.ksrc, orig=pb.orig))


@pytest.fixture(scope="module")
def tarballs(update_tarballs: dict) -> dict:
    return update_tarballs


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tarball_layout_vermagic_and_functions(name: str, tarballs: dict,
                                               prebuilt_smp: Prebuilt, tmp_path: Path) -> None:
    tarball = tarballs[name]
    uid = tarball.name[len("ksplice-"):-len(".tar.gz")]
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path, filter="data")
    top = f"ksplice-{uid}"
    assert {top, f"{top}/patch", f"{top}/ksplice-{uid}.ko", f"{top}/ksplice-{uid}-helper.ko",
            f"{top}/debug"} <= names
    assert all(n == top or n.startswith(top + "/") for n in names)
    root = tmp_path / top
    assert (root / "patch").read_bytes() == (PATCHES / f"{name}.patch").read_bytes()
    running = vermagic(next(prebuilt_smp.kernel.build.rglob("binfmt_misc.ko")))
    assert vermagic(root / f"ksplice-{uid}.ko") == running
    assert vermagic(root / f"ksplice-{uid}-helper.ko") == running
    for rel, (changed, new) in EXPECTED[name].items():
        diff = json.loads((root / "debug/objects" / rel.replace("/", "__") / "diff.json")
                          .read_text())
        assert (diff["changed"], diff["new"]) == (changed, new)
    objects = sorted(p.name for p in (root / "debug/objects").iterdir())
    assert objects == sorted(r.replace("/", "__") for r in EXPECTED[name])


def test_update_id_is_stable_and_distinct(tarballs: dict, prebuilt_smp: Prebuilt,
                                          tmp_path: Path) -> None:
    ids = {tarballs[name].name for name in EXPECTED}
    assert len(ids) == len(EXPECTED)
    res = create(prebuilt_smp, PATCHES / "loadavg-string.patch", tmp_path)
    assert res.returncode == 0, res.stderr
    assert tarball_from(res.stdout, tmp_path).name == tarballs["loadavg-string"].name


def test_the_pre_tree_is_left_alone(tarballs: dict, prebuilt_smp: Prebuilt) -> None:
    """Every file of the pre tree hashes the same before and after the five creates."""
    assert tarballs["pre tree unchanged"]
    assert pre_tree_untouched(prebuilt_smp)


def test_same_patch_again_does_nothing(prebuilt_smp: Prebuilt, tmp_path: Path) -> None:
    patch = PATCHES / "version-new-function.patch"
    first = create(prebuilt_smp, patch, tmp_path)
    assert first.returncode == 0, first.stderr
    again = create(prebuilt_smp, patch, tmp_path)
    assert again.returncode == 0, again.stderr
    assert executed_tasks(again.stdout) == []
    assert "Nothing to do" in again.stdout


def two_file_patch(tmp_path: Path, loadavg_text: str, version_text: str) -> Path:
    loadavg = (PATCHES / "loadavg-string.patch").read_text()
    version = (PATCHES / "version-new-function.patch").read_text()
    p = tmp_path / f"two-{loadavg_text}-{version_text}.patch"
    p.write_text(loadavg.replace("ksplice-loadavg", loadavg_text)
                 + version.replace("[ksplice] ", version_text))
    return p


def test_editing_one_hunk_redoes_only_that_object(prebuilt_smp: Prebuilt,
                                                   tmp_path: Path) -> None:
    first = create(prebuilt_smp, two_file_patch(tmp_path, "edit-one", "[two] "), tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr
    assert "objdiff:fs/proc/version.o" in executed_tasks(first.stdout)
    second = create(prebuilt_smp, two_file_patch(tmp_path, "edit-two", "[two] "), tmp_path)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr
    ran = executed_tasks(second.stdout)
    assert "objdiff:fs/proc/loadavg.o" in ran and "extract:fs/proc/loadavg.o" in ran
    assert "objdiff:fs/proc/version.o" not in ran and "extract:fs/proc/version.o" not in ran
    assert "tarball" in ran


def test_moving_the_patch_to_another_file_restores_the_first(prebuilt_smp: Prebuilt,
                                                              tmp_path: Path) -> None:
    a = create(prebuilt_smp, PATCHES / "loadavg-string.patch", tmp_path)
    assert a.returncode == 0, a.stderr
    b = create(prebuilt_smp, PATCHES / "umask-syscall.patch", tmp_path)
    assert b.returncode == 0, b.stderr
    for rel in ("fs/proc/loadavg.c", "fs/proc/loadavg.o"):
        assert os.path.samefile(prebuilt_smp.ksrc / rel, prebuilt_smp.postdir / rel), rel
    with tarfile.open(tarball_from(b.stdout, tmp_path)) as tar:
        objects = {n.split("/")[3] for n in tar.getnames() if "/debug/objects/" in n}
    assert objects == {"kernel__sys.o"}


def refused(pb: Prebuilt, patch: Path, outdir: Path, message: str) -> str:
    res = create(pb, patch, outdir)
    assert res.returncode != 0
    assert message in res.stderr, res.stdout[-2000:] + res.stderr
    assert res.stderr.startswith("ksplice-create: error: ")
    assert not list(outdir.glob("ksplice-*.tar.gz"))
    record = state_layout(pb.orig).create.post_patch
    assert record.parent == pb.orig / STATE_DIRNAME / "create"
    assert not record.exists(), "the post tree still holds the refused patch"
    for rel in patching.target_files(patching.patch_files(patch.read_text()), 1):
        if (pb.ksrc / rel).exists():
            assert os.path.samefile(pb.ksrc / rel, pb.postdir / rel), rel
    assert pre_tree_untouched(pb)
    return res.stderr


def test_refuses_a_patch_that_changes_nothing(prebuilt_smp: Prebuilt, tmp_path: Path) -> None:
    refused(prebuilt_smp, PATCHES / "bad-no-change.patch", tmp_path, "No changes detected")


def test_refuses_a_patch_that_breaks_the_build(prebuilt_smp: Prebuilt, tmp_path: Path) -> None:
    err = refused(prebuilt_smp, PATCHES / "bad-build-break.patch", tmp_path,
                  "Applying the patch appears to break the kernel build")
    assert "fs/proc/loadavg.c" in err and "error:" in err


def test_refuses_a_data_change_naming_the_symbol(prebuilt_smp: Prebuilt,
                                                 tmp_path: Path) -> None:
    refused(prebuilt_smp, PATCHES / "bad-data-change.patch", tmp_path, "'overflowuid'")


def test_refuses_new_code_calling_a_function_no_file_of_the_patch_defines(
        prebuilt_smp: Prebuilt, tmp_path: Path) -> None:
    """The caller's half of two-files-new-function.patch: every apply would abort as
    unresolved, so create refuses it, naming the symbol and the function."""
    text = (PATCHES / "two-files-new-function.patch").read_text()
    half = tmp_path / "caller-only.patch"
    half.write_text(text[:text.index("--- a/fs/proc/version.c")])
    err = refused(prebuilt_smp, half, tmp_path / "out",
                  "the new code of loadavg_proc_show refers to ksplice_two_file_value, which "
                  "neither the running kernel (System.map) nor the update defines")
    assert len(err.splitlines()) == 1, err


def test_refuses_a_patch_that_does_not_apply(prebuilt_smp: Prebuilt, tmp_path: Path) -> None:
    bad = tmp_path / "stale.patch"
    bad.write_text((PATCHES / "loadavg-string.patch").read_text()
                   .replace('-\tseq_printf(m, "%lu.%02lu', '-\tseq_printf(m, "%lu.%03lu'))
    err = refused(prebuilt_smp, bad, tmp_path, "the patch does not apply")
    assert "FAILED" in err


@pytest.mark.parametrize(("header", "message"), [
    ("--- a/../../etc/passwd\n+++ b/../../etc/passwd\n", "'..'"),
    ("--- /etc/passwd\n+++ /etc/passwd\n", "absolute path"),
])
def test_refuses_paths_outside_the_tree(prebuilt_smp: Prebuilt, tmp_path: Path, header: str,
                                        message: str) -> None:
    bad = tmp_path / "escape.patch"
    bad.write_text(header + "@@ -1 +1 @@\n-root\n+toor\n")
    res = create(prebuilt_smp, bad, tmp_path)
    assert res.returncode != 0 and message in res.stderr, res.stderr
    assert len(res.stderr.splitlines()) == 1
    assert pre_tree_untouched(prebuilt_smp)


def test_diffext_makes_the_patch_from_edited_copies(prebuilt_smp: Prebuilt,
                                                    tmp_path: Path) -> None:
    src = prebuilt_smp.ksrc / "fs/proc/loadavg.c"
    copy = src.with_name("loadavg.c.kspltest")
    copy.write_text(src.read_text().replace('"%lu.%02lu %lu', '"diffext %lu.%02lu %lu', 1))
    try:
        res = run_create_diffext(prebuilt_smp, ".kspltest", tmp_path)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr
        with tarfile.open(tarball_from(res.stdout, tmp_path)) as tar:
            patch = next(m for m in tar.getmembers() if m.name.endswith("/patch"))
            text = tar.extractfile(patch).read().decode()
            diff = next(m for m in tar.getmembers() if m.name.endswith("/diff.json"))
            changed = json.loads(tar.extractfile(diff).read())["changed"]
        assert text.startswith("--- fs/proc/loadavg.c\n+++ fs/proc/loadavg.c\n")
        assert changed == ["loadavg_proc_show"]
        again = run_create_diffext(prebuilt_smp, ".kspltest", tmp_path)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr
        assert executed_tasks(again.stdout) == [] and "Nothing to do" in again.stdout
    finally:
        copy.unlink()


def run_create_diffext(pb: Prebuilt, ext: str, outdir: Path) -> subprocess.CompletedProcess:
    return run_create(f"--diffext={ext}", f"--config={pb.orig}", str(pb.ksrc), cwd=outdir)


def test_doit_front_end_creates_and_remembers(prebuilt_smp: Prebuilt, tmp_path: Path) -> None:
    patch = PATCHES / "umask-syscall.patch"
    res = run_doit(tmp_path, "create_update", f"KSRC={prebuilt_smp.ksrc}",
                   f"ORIG={prebuilt_smp.orig}", f"PATCH={patch}")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    tarball = tarball_from(res.stdout, tmp_path)
    assert tarball.is_file()
    again = run_doit(tmp_path, "create_update")
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stdout
    listed = run_doit(tmp_path, "info", "tarball")
    assert tarball.name in listed.stdout


def test_one_line_arithmetic_change_in_a_proc_show_function(prebuilt_smp: Prebuilt,
                                                             tmp_path: Path) -> None:
    """The object layer's real-tree case besides the five: not a string, just code."""
    res = create(prebuilt_smp, PATCHES / "loadavg-oneline.patch", tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    with tarfile.open(tarball_from(res.stdout, tmp_path)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/diff.json"))
        diff = json.loads(tar.extractfile(member).read())
    assert {k: diff[k] for k in ("changed", "new", "removed", "line_only")} == {
        "changed": ["loadavg_proc_show"], "new": [], "removed": [], "line_only": []}


def test_a_truncated_post_object_is_one_line_and_resets(prebuilt_smp: Prebuilt,
                                                        tmp_path: Path) -> None:
    """An object the ELF reader refuses: one line, nonzero, the post tree back to the snapshot."""
    patch = PATCHES / "loadavg-string.patch"
    first = create(prebuilt_smp, patch, tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr
    post = prebuilt_smp.postdir / "fs/proc/loadavg.o"
    assert not os.path.samefile(prebuilt_smp.ksrc / "fs/proc/loadavg.o", post)
    data = post.read_bytes()
    post.unlink()  # a new inode: never write through a link into the pre tree
    post.write_bytes(data[:200])
    err = refused(prebuilt_smp, patch, tmp_path / "again",
                  "objdiff:fs/proc/loadavg.o failed: ")
    assert len(err.splitlines()) == 1, err
    assert os.path.samefile(prebuilt_smp.ksrc / "fs/proc/loadavg.o", post)


def test_an_unwritable_outdir_is_refused_before_any_task(prebuilt_smp: Prebuilt,
                                                         tmp_path: Path) -> None:
    """OUTDIR under a file: one line at validation (tests/hostile has the write-time
    failures: a read-only and a full output directory)."""
    (tmp_path / "a-file").write_text("not a directory\n")
    outdir = tmp_path / "a-file" / "out"
    patch = PATCHES / "umask-syscall.patch"
    res = run_doit(tmp_path / "work", "create_update", f"KSRC={prebuilt_smp.ksrc}",
                   f"ORIG={prebuilt_smp.orig}", f"PATCH={patch}", f"OUTDIR={outdir}")
    assert res.returncode != 0
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert errors == [f"ksplice: error: the output directory {outdir} does not exist"], (
        res.stdout[-2000:] + res.stderr)
    assert "==> post_patch" not in res.stdout
    assert pre_tree_untouched(prebuilt_smp)


def test_new_code_with_the_same_relocations_is_rebuilt(prebuilt_smp: Prebuilt,
                                                       tmp_path: Path) -> None:
    """Two creates in a row that differ only in a string of the same function: the
    records (relocations, sizes) are alike, the code is not. The second update's
    primary must carry the second string (a stale collection once carried the first)."""
    first = PATCHES / "loadavg-string.patch"
    second = tmp_path / "second.patch"
    second.write_text(first.read_text().replace("ksplice-loadavg ", "ksplice-second "))
    for patch, text in ((first, b"ksplice-loadavg %lu"), (second, b"ksplice-second %lu")):
        res = create(prebuilt_smp, patch, tmp_path / patch.stem)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr
        with tarfile.open(tarball_from(res.stdout, tmp_path / patch.stem)) as tar:
            primary = next(m for m in tar.getmembers()
                           if m.name.endswith(".ko") and not m.name.endswith("-helper.ko"))
            data = tar.extractfile(primary).read()
        assert text in data, (patch.name, text)
        other = b"ksplice-second %lu" if patch == first else b"ksplice-loadavg %lu"
        assert other not in data, (patch.name, other)
