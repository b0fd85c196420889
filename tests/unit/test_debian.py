# SPDX-License-Identifier: GPL-2.0-only
"""distro.debian: what the archive has (from captured apt-cache output), and the refusals."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ksplice_tasks import artifacts
from ksplice_tasks.distro import debian
from ksplice_tasks.errors import UserError

APT = Path(__file__).resolve().parent / "aptfixtures"
# Captured on Debian 12 on 2026-11-29: `apt-cache pkgnames linux-image-6.1.0-`
# and `apt-cache madison` of the 6.1.0-57-amd64 packages.
PKGNAMES = (APT / "pkgnames-linux-image-6.1.0.txt").read_text()
MADISON = (APT / "madison-6.1.0-57-amd64.txt").read_text()


def test_pkgnames_give_the_unsigned_images_only() -> None:
    releases = debian.parse_pkgnames(PKGNAMES, "6.1")
    amd64 = [r.abi for r in releases if r.flavour == "amd64"]
    assert amd64 == [47, 50, 53, 54, 55, 56, 57]
    assert {r.flavour for r in releases} == {"amd64", "cloud-amd64", "rt-amd64"}
    assert debian.parse_pkgnames(PKGNAMES, "6.2") == []
    assert debian.parse_pkgnames("linux-image-amd64\nlinux-image-6.1.0-57-amd64-dbg\n") == []


def test_the_newest_release_is_the_highest_abi_not_the_last_listed() -> None:
    releases = debian.parse_pkgnames(PKGNAMES, "6.1")
    assert str(debian.newest(releases, "amd64")) == "6.1.0-57-amd64"
    assert str(debian.newest(releases, "cloud-amd64")) == "6.1.0-57-cloud-amd64"
    shuffled = [debian.parse_release(r) for r in ("6.1.0-9-amd64", "6.1.0-10-amd64",
                                                  "6.1.0-100-cloud-amd64")]
    assert str(debian.newest(shuffled, "amd64")) == "6.1.0-10-amd64"   # 10 > 9, not "9" > "1"
    assert debian.newest(shuffled, "arm64") is None


def test_madison_versions_newest_first_without_duplicates() -> None:
    m = debian.parse_madison(MADISON + MADISON.splitlines()[0] + "\n")
    assert m["linux-image-6.1.0-57-amd64-unsigned"] == ["6.1.192-3"]
    assert m["linux-source-6.1"][:3] == ["6.1.192-3", "6.1.192-2", "6.1.192-1"]
    assert m["linux-image-6.1.0-57-amd64-dbg"] == ["6.1.192-3"]
    assert debian.parse_madison("N: Unable to locate package x\n\n") == {}


def test_packages_of_a_release() -> None:
    m = debian.parse_madison(MADISON)
    pkgs = debian.resolve_packages("6.1.0-57-amd64", madison=m, known=[])
    assert pkgs.version == "6.1.192-3"
    assert pkgs.names == ["linux-image-6.1.0-57-amd64-unsigned", "linux-headers-6.1.0-57-amd64",
                          "linux-source-6.1"]
    dbg = debian.resolve_packages("6.1.0-57-amd64", madison=m, known=[], dbg=True)
    assert dbg.names[-1] == "linux-image-6.1.0-57-amd64-dbg"


def test_a_source_version_other_than_the_images_is_refused() -> None:
    m = debian.parse_madison(MADISON)
    with pytest.raises(UserError, match=r"linux-source-6.1 6.1.192-2 is not the source of "
                                        r"6.1.0-57-amd64, which was built from .* 6.1.192-3"):
        debian.resolve_packages("6.1.0-57-amd64", madison=m, known=[], source_version="6.1.192-2")


def test_a_source_version_missing_from_the_archive_is_refused() -> None:
    m = debian.parse_madison(MADISON)
    m["linux-source-6.1"] = ["6.1.192-2", "6.1.190-1"]
    with pytest.raises(UserError, match=r"linux-source-6.1 6.1.192-3 \(the source of "
                                        r"6.1.0-57-amd64\) is not in the archive "
                                        r"\(have: 6.1.192-2, 6.1.190-1\)"):
        debian.resolve_packages("6.1.0-57-amd64", madison=m, known=[])


def test_missing_headers_or_dbg_are_refused() -> None:
    m = debian.parse_madison(MADISON)
    del m["linux-headers-6.1.0-57-amd64"]
    with pytest.raises(UserError, match="linux-headers-6.1.0-57-amd64 6.1.192-3"):
        debian.resolve_packages("6.1.0-57-amd64", madison=m, known=[])
    m = debian.parse_madison(MADISON)
    del m["linux-image-6.1.0-57-amd64-dbg"]
    with pytest.raises(UserError, match="linux-image-6.1.0-57-amd64-dbg 6.1.192-3"):
        debian.resolve_packages("6.1.0-57-amd64", madison=m, known=[], dbg=True)


def test_an_unknown_release_lists_the_nearest_from_captured_output() -> None:
    known = debian.parse_pkgnames(PKGNAMES, "6.1")
    with pytest.raises(UserError) as e:
        debian.resolve_packages("6.1.0-52-amd64", madison={}, known=known)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("Debian kernel release 6.1.0-52-amd64 is not in the archive")
    assert "nearest known: 6.1.0-53-amd64, 6.1.0-54-amd64, 6.1.0-50-amd64" in msg


def test_malformed_releases_and_flavours() -> None:
    for bad in ("6.1.0-57", "6.1.192-3", "6.1.0-x-amd64", "6.1.0-57-AMD64", "../x", ""):
        with pytest.raises(UserError, match="not a Debian kernel release"):
            debian.parse_release(bad)
    with pytest.raises(UserError, match="not a Debian kernel flavour"):
        debian.check_flavour("amd64 --x")
    rel = debian.parse_release("6.1.0-57-cloud-amd64")
    assert (rel.series, rel.abi, rel.flavour) == ("6.1", 57, "cloud-amd64")


def test_the_stub_system_map_is_recognised(tmp_path: Path) -> None:
    stub = tmp_path / "stub"
    stub.write_text("ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg"
                    " package\n")
    real = tmp_path / "real"
    real.write_text("".join(f"ffffffff81{i:06x} T f{i}\n" for i in range(2000)))
    assert debian.is_stub_system_map(stub)
    assert not debian.is_stub_system_map(real)


needs_apt = pytest.mark.skipif(shutil.which("apt-cache") is None, reason="needs Debian's apt")


@needs_apt
def test_the_real_archive_refuses_a_release_it_does_not_have(tmp_path: Path) -> None:
    """The real apt-cache (fast, no download): one line, exit 1, nothing written."""
    target = tmp_path / "target"
    proc = subprocess.run([sys.executable, "-m", "ksplice_tasks.distro.debian",
                           "6.1.0-999-amd64", str(target)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ksplice-debian-target: error: Debian kernel release "
                               "6.1.0-999-amd64 is not in the archive")
    assert "nearest known: 6.1.0-" in lines[0]
    assert not target.exists() and list(tmp_path.iterdir()) == []


@needs_apt
def test_the_real_archive_has_a_newest_amd64_release() -> None:
    rel = debian.newest_release("amd64")
    assert rel.flavour == "amd64" and rel.series == "6.1" and rel.abi >= 57


def test_a_non_empty_directory_is_refused_before_any_download(tmp_path: Path,
                                                              capsys) -> None:
    (tmp_path / "keep").write_text("x")
    assert debian.main(["6.1.0-57-amd64", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not an empty directory" in err
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]


def test_a_directory_holding_another_target_is_refused(tmp_path: Path) -> None:
    rec = debian._record(debian.resolve_packages(
        "6.1.0-57-amd64", madison=debian.parse_madison(MADISON), known=[]), "amd64")
    (tmp_path / debian.RECORD_NAME).write_text(artifacts.DEBIAN_TARGET.dumps(rec))
    with pytest.raises(UserError, match="already holds the target 6.1.0-57-amd64, not "
                                        "6.1.0-56-amd64"):
        debian.prepare_target("6.1.0-56-amd64", tmp_path)
    assert debian.read_target(tmp_path) == rec
    with pytest.raises(UserError, match="is not a Debian target"):
        debian.read_target(tmp_path / "nope")
