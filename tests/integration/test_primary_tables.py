# SPDX-License-Identifier: GPL-2.0-only
"""Changed code holding kernel-table sites, made into an update on the real lp tree.

Issue 10, kind 4: code with alternatives was refused at create ("table symbols not
defined by the collection: .altinstr_replacement_global"), because the relocations of
the replacement code were stripped for the ksplice core, which writes them only after
the module loader has already copied the replacements in.  The primary must carry the
alternatives (and the ``static_cpu_has()`` blocks they jump to) with relocations the
loader resolves.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest
from helpers import PATCHES, Prebuilt, create, tarball_from

from ksplice_tasks.obj.elfread import read_object

pytestmark = pytest.mark.kernel


def primary_ko(tarball: Path, dest: Path) -> Path:
    uid = tarball.name[len("ksplice-"):-len(".tar.gz")]
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    return dest / f"ksplice-{uid}" / f"ksplice-{uid}.ko"


@pytest.mark.parametrize(("patch", "function"), [
    ("alternatives-lbr-reset", "intel_pmu_lbr_reset"),
    ("alternatives-dup-mmap", "dup_mmap"),
])
def test_changed_code_with_alternatives_becomes_an_update(
        prebuilt_lp: Prebuilt, tmp_path: Path, patch: str, function: str) -> None:
    res = create(prebuilt_lp, PATCHES / f"{patch}.patch", tmp_path / "out")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert re.search(rf"function\(s\) to patch \([^)]*\b{function}\b", out), out[-3000:]
    ko = read_object(primary_ko(tarball_from(res.stdout, tmp_path / "out"), tmp_path))
    sections = {s.name: s for s in ko.sections.values()}
    assert sections[".altinstructions"].size % 12 == 0 and sections[".altinstructions"].size
    # every relocation of the replacement code is the loader's, against what it can resolve
    repl = sections[".altinstr_replacement"].index
    for r in ko.relocs.get(repl, []):
        sym = ko.symbols[r.sym]
        assert sym.in_section or sym.name, sym


def test_changed_const_operations_table_is_refused_naming_it(
        prebuilt_lp: Prebuilt, tmp_path: Path) -> None:
    """Kind 7: /dev/null's const file_operations gains .fsync.  The running kernel
    reaches null_fops through inodes and the devlist table, never through the functions
    an update replaces, so a copy in the update would silently change nothing."""
    res = create(prebuilt_lp, PATCHES / "const-fops-gains-fsync.patch", tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    lines = [ln for ln in out.splitlines() if "null_fops" in ln]
    assert lines and "initializer of const object 'null_fops'" in lines[0], out[-3000:]
    assert "Traceback" not in out
    assert not list(tmp_path.glob("ksplice-*.tar.gz"))
