# SPDX-License-Identifier: GPL-2.0-only
"""Debian's shipped kernel as a target, prepared from Debian's own packages.

For a kernel release such as ``6.1.0-57-amd64`` (what ``uname -r`` prints on
the machine to patch) Debian ships, all at one package version (6.1.192-3
for ABI 57, from ``apt-cache madison``; ../shared/DESIGN.md section 6):

- ``linux-image-<release>-unsigned``: /boot/vmlinuz, /boot/config and
  lib/modules. Its /boot/System.map is a one-line stub;
- ``linux-headers-<release>``: /usr/src/linux-headers-<release>/Module.symvers,
  the symbol CRCs modules must carry (CONFIG_MODVERSIONS);
- ``linux-source-<major.minor>``: /usr/src/linux-source-<major.minor>.tar.xz,
  the source the image was built from, with Debian's patches;
- ``linux-image-<release>-dbg`` (858 MB for amd64, only with ``dbg``): the
  real System.map, in /usr/lib/debug/boot.

:func:`prepare_target` downloads them with ``apt-get download`` (no root, no
install; apt checks them against the archive's signed index), unpacks them
with ``dpkg-deb -x`` into ``$KSPLICE_CACHE/debian/<version>/`` (keyed by the
package version, so a second call reuses everything) and writes a target
directory::

    DIR/linux/                   the source tree, a private copy to build in
    DIR/linux/ksplice/           ORIG_CONFIG: .config, Module.symvers,
                                 kernel.release, System.map (only with dbg)
    DIR/image -> cache           the image's boot/vmlinuz-<release> and lib/modules
    DIR/debian-target.json       the record (artifacts.DebianTarget)

Everything is written under a temporary name and renamed when whole.
``ksplice-debian-target`` is the command line (:func:`main`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ksplice_tasks import artifacts
from ksplice_tasks.artifacts import DebianTarget
from ksplice_tasks.commands import run
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import (
    atomic_dir,
    cache_root,
    copy_atomic,
    extract_tarball,
    locked,
    write_atomic,
)

DEFAULT_FLAVOUR = "amd64"
RECORD_NAME = "debian-target.json"
ORIG_DIRNAME = "ksplice"

# 6.1.0-57-amd64: the upstream major.minor, Debian's ABI number, the flavour.
_RELEASE_RE = re.compile(r"^(\d+\.\d+)\.0-(\d+)-([a-z0-9]+(?:-[a-z0-9]+)*)$")
_FLAVOUR_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_VERSION_RE = re.compile(r"^[0-9][A-Za-z0-9.+~:-]*$")
# How many lines a real System.map has at least (6.1 amd64: about 140,000).
_REAL_SYSTEM_MAP_LINES = 1000


@dataclass(frozen=True)
class Release:
    """A Debian kernel release string, split: ``6.1.0-57-amd64`` -> ("6.1", 57, "amd64")."""

    series: str
    abi: int
    flavour: str

    @property
    def name(self) -> str:
        return f"{self.series}.0-{self.abi}-{self.flavour}"

    def __str__(self) -> str:
        return self.name


def parse_release(text: str) -> Release:
    """``6.1.0-57-amd64`` -> Release; UserError for anything else."""
    m = _RELEASE_RE.match(text)
    if not m:
        raise UserError(f"not a Debian kernel release like 6.1.0-57-amd64: {text!r}")
    return Release(m.group(1), int(m.group(2)), m.group(3))


def check_flavour(flavour: str) -> str:
    """Return ``flavour`` (``amd64``, ``cloud-amd64``, ...); UserError when malformed."""
    if not _FLAVOUR_RE.match(flavour):
        raise UserError(f"not a Debian kernel flavour like amd64: {flavour!r}")
    return flavour


@dataclass(frozen=True)
class Packages:
    """The packages of one release, all at ``version`` (package name -> version)."""

    release: str
    version: str
    image: str
    headers: str
    source: str
    dbg: str | None

    @property
    def names(self) -> list[str]:
        return [p for p in (self.image, self.headers, self.source, self.dbg) if p]


def image_package(release: str) -> str:
    return f"linux-image-{release}-unsigned"


def headers_package(release: str) -> str:
    return f"linux-headers-{release}"


def dbg_package(release: str) -> str:
    return f"linux-image-{release}-dbg"


def source_package(series: str) -> str:
    return f"linux-source-{series}"


# -- what the archive has (apt-cache) -----------------------------------------------


def apt_cache(args: Sequence[str]) -> str:
    """``apt-cache ARGS`` stdout; UserError when apt-cache is missing or fails."""
    if shutil.which("apt-cache") is None:
        raise UserError("apt-cache is missing: this needs Debian's apt (apt-get install apt)")
    return run(["apt-cache", *args], what="apt-cache")


def parse_pkgnames(text: str, series: str | None = None) -> list[Release]:
    """The releases named by ``linux-image-<release>-unsigned`` lines of ``apt-cache pkgnames``.

    Other lines (signed images, -dbg, meta packages) are ignored; ``series``
    ("6.1") keeps only that upstream series. Sorted by (flavour, ABI).
    """
    out = set()
    for line in text.split():
        if not (line.startswith("linux-image-") and line.endswith("-unsigned")):
            continue
        m = _RELEASE_RE.match(line[len("linux-image-"):-len("-unsigned")])
        if m and (series is None or m.group(1) == series):
            out.add(Release(m.group(1), int(m.group(2)), m.group(3)))
    return sorted(out, key=lambda r: (r.flavour, r.abi))


def parse_madison(text: str) -> dict[str, list[str]]:
    """``apt-cache madison`` lines ``pkg | version | origin`` -> package -> versions.

    Versions keep madison's order (apt lists them newest first) without
    duplicates (one version may come from several origins).
    """
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 3 or not parts[0] or not _VERSION_RE.match(parts[1]):
            continue
        versions = out.setdefault(parts[0], [])
        if parts[1] not in versions:
            versions.append(parts[1])
    return out


def known_releases(series: str = "6.1") -> list[Release]:
    """Every ``<series>.0-N-<flavour>`` whose ``-unsigned`` image apt knows (apt-cache pkgnames)."""
    return parse_pkgnames(apt_cache(["pkgnames", f"linux-image-{series}.0-"]), series)


def newest(releases: Iterable[Release], flavour: str) -> Release | None:
    """The highest ABI number among ``releases`` of ``flavour``; None when there is none."""
    mine = [r for r in releases if r.flavour == flavour]
    return max(mine, key=lambda r: r.abi) if mine else None


def nearest(release: Release, releases: Iterable[Release], count: int = 3) -> list[Release]:
    """Up to ``count`` known releases closest to ``release``: same flavour first, then by ABI."""
    return sorted(releases, key=lambda r: (r.flavour != release.flavour,
                                           abs(r.abi - release.abi), -r.abi))[:count]


def _refuse_release(release: Release, known: list[Release]) -> UserError:
    near = ", ".join(str(r) for r in nearest(release, known)) or "none"
    return UserError(f"Debian kernel release {release} is not in the archive "
                     f"(no {image_package(str(release))} in apt-cache; nearest known: {near}; "
                     "is apt-get update needed?)")


def newest_release(flavour: str = DEFAULT_FLAVOUR, series: str = "6.1") -> Release:
    """The newest release of ``flavour`` in the archive; UserError when apt knows none."""
    check_flavour(flavour)
    known = known_releases(series)
    best = newest(known, flavour)
    if best is None:
        flavours = sorted({r.flavour for r in known})
        raise UserError(f"no Debian {series} kernel of flavour {flavour!r} in the archive "
                        f"(known flavours: {', '.join(flavours) or 'none'}; "
                        "is apt-get update needed?)")
    return best


def resolve_packages(text_release: str, *, dbg: bool = False,
                     source_version: str | None = None,
                     madison: dict[str, list[str]] | None = None,
                     known: list[Release] | None = None) -> Packages:
    """The packages and the one version for a release, checked against the archive.

    The version is the image's newest in the archive; the headers must exist
    at it, and so must ``linux-source-<series>`` (``source_version``, which
    defaults to the image's: the source the image was built from) and, with
    ``dbg``, the -dbg image. ``madison``/``known`` replace the apt-cache
    queries (tests). UserError (one line) names the missing release or
    version and lists the nearest releases or the versions the archive has.
    """
    release = parse_release(text_release)
    rel = str(release)
    image, headers, source = image_package(rel), headers_package(rel), source_package(
        release.series)
    extra = dbg_package(rel) if dbg else None
    if madison is None:
        madison = parse_madison(apt_cache(["madison", image, headers, source,
                                           *([extra] if extra else [])]))
    versions = madison.get(image, [])
    if not versions:
        raise _refuse_release(release, known if known is not None else known_releases(
            release.series))
    version = versions[0]
    if version not in madison.get(headers, []):
        raise UserError(f"{headers} {version} (for {rel}) is not in the archive "
                        f"(have: {', '.join(madison.get(headers, [])) or 'none'})")
    want_source = source_version or version
    if not _VERSION_RE.match(want_source):
        raise UserError(f"not a Debian package version: {want_source!r}")
    if want_source != version:
        raise UserError(f"{source} {want_source} is not the source of {rel}, which was built "
                        f"from {source} {version}")
    if want_source not in madison.get(source, []):
        raise UserError(f"{source} {want_source} (the source of {rel}) is not in the archive "
                        f"(have: {', '.join(madison.get(source, [])) or 'none'})")
    if extra and version not in madison.get(extra, []):
        raise UserError(f"{extra} {version} is not in the archive "
                        f"(have: {', '.join(madison.get(extra, [])) or 'none'})")
    return Packages(rel, version, image, headers, source, extra)


# -- the cache: downloads and unpacked packages ----------------------------------------


def debian_cache(version: str) -> Path:
    """``$KSPLICE_CACHE/debian/<version>``: every file of one Debian kernel upload."""
    return cache_root() / "debian" / version.replace(":", "%3a")


def say(out: TextIO, msg: str) -> None:
    out.write(f"debian: {msg}\n")
    out.flush()


def _deb_in(directory: Path, package: str) -> Path | None:
    # Package names cannot hold "_", so "<package>_" names exactly one package's files.
    found = sorted(directory.glob(f"{package}_*.deb"))
    return found[0] if found else None


def _deb_field(deb: Path, field: str) -> str:
    return run(["dpkg-deb", "-f", deb, field], what="dpkg-deb -f").strip()


def download(pkgs: Packages, names: Sequence[str], out: TextIO = sys.stdout) -> dict[str, Path]:
    """The .deb of each package in ``names`` at ``pkgs.version``, downloaded once into the cache.

    ``apt-get download`` runs in a private temp directory under the cache;
    each .deb is checked (its Package and Version fields) and renamed into
    ``debian/<version>/debs/``. Returns package -> .deb path.
    """
    debs = debian_cache(pkgs.version) / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    have = {p: _deb_in(debs, p) for p in names}
    missing = [p for p, deb in have.items() if deb is None]
    if missing:
        if shutil.which("apt-get") is None:
            raise UserError("apt-get is missing: this needs Debian's apt")
        say(out, f"download {', '.join(f'{p}={pkgs.version}' for p in missing)}")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".download.", dir=debs.parent) as tmp:
            run(["apt-get", "download", "-q", *[f"{p}={pkgs.version}" for p in missing]],
                cwd=Path(tmp), what="apt-get download")
            size = 0
            for p in missing:
                deb = _deb_in(Path(tmp), p)
                if deb is None:
                    raise UserError(f"apt-get download left no .deb for {p}")
                got = (_deb_field(deb, "Package"), _deb_field(deb, "Version"))
                if got != (p, pkgs.version):
                    raise UserError(f"{deb.name}: is {got[0]} {got[1]}, "
                                    f"expected {p} {pkgs.version}")
                size += deb.stat().st_size
                os.replace(deb, debs / deb.name)
                have[p] = debs / deb.name
        say(out, f"downloaded {size / 1e6:.1f} MB in {time.monotonic() - t0:.1f} s")
    return {p: deb for p, deb in have.items() if deb is not None}


def unpack(deb: Path, dest: Path, out: TextIO = sys.stdout) -> Path:
    """``dpkg-deb -x`` of ``deb`` into ``dest`` (a private temp dir renamed when whole)."""
    if dest.is_dir():
        return dest
    say(out, f"unpack {deb.name}")
    t0 = time.monotonic()
    with atomic_dir(dest) as tmp:
        run(["dpkg-deb", "-x", deb, tmp], what="dpkg-deb -x")
    say(out, f"unpacked {deb.name} in {time.monotonic() - t0:.1f} s")
    return dest


def unpack_member(deb: Path, member: str, dest: Path) -> Path:
    """One file of a .deb's data to ``dest``, atomically, without unpacking the rest.

    ``dpkg-deb --fsys-tarfile`` piped to ``tar --occurrence=1``, which stops
    reading at the member (the -dbg image's System.map comes early in its
    5 GB of data). UserError when the member is not there.
    """
    with tempfile.TemporaryDirectory(prefix=".member.", dir=dest.parent) as tmp:
        feed = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert feed.stdout is not None
        tar = subprocess.run(["tar", "-x", "--occurrence=1", "--no-same-owner", "-C", tmp,
                              "-f", "-", f"./{member}"],
                             stdin=feed.stdout, capture_output=True, text=True, check=False)
        feed.stdout.close()
        feed.kill()
        feed.wait()
        got = Path(tmp) / member
        if tar.returncode != 0 or not got.is_file():
            raise UserError(f"{deb.name} has no /{member}")
        os.replace(got, dest)
    return dest


def is_stub_system_map(path: Path) -> bool:
    """True for the one-line System.map that Debian's image packages ship in /boot."""
    with open(path, "rb") as f:
        for n, _ in enumerate(f, 1):
            if n >= _REAL_SYSTEM_MAP_LINES:
                return False
    return True


@dataclass(frozen=True)
class Cached:
    """The unpacked packages of one release in the cache."""

    image: Path            # the image package's root: boot/, lib/modules/
    headers: Path          # the headers package's root
    source: Path           # the pristine, never-built source tree
    system_map: Path | None


def populate_cache(pkgs: Packages, out: TextIO = sys.stdout) -> Cached:
    """Download and unpack what ``pkgs`` names into ``debian/<version>/`` (once, under a lock)."""
    base = debian_cache(pkgs.version)
    with locked(f"debian-{pkgs.version.replace(':', '%3a')}"):
        debs = download(pkgs, pkgs.names, out)
        image = unpack(debs[pkgs.image], base / "x" / pkgs.image, out)
        headers = unpack(debs[pkgs.headers], base / "x" / pkgs.headers, out)
        source = base / "src" / "linux"
        if not source.is_dir():
            series = pkgs.source[len("linux-source-"):]
            t0 = time.monotonic()
            with tempfile.TemporaryDirectory(prefix=".source.", dir=base) as tmp:
                tree = unpack(debs[pkgs.source], Path(tmp) / "deb", out)
                extract_tarball(tree / f"usr/src/linux-source-{series}.tar.xz", source, out)
            say(out, f"source tree ready in {time.monotonic() - t0:.1f} s")
        system_map = None
        if pkgs.dbg:
            system_map = base / "x" / f"System.map-{pkgs.release}"
            if not system_map.is_file():
                say(out, f"take System.map out of {debs[pkgs.dbg].name}")
                unpack_member(debs[pkgs.dbg], f"usr/lib/debug/boot/System.map-{pkgs.release}",
                              system_map)
            if is_stub_system_map(system_map):
                raise UserError(f"{system_map}: a stub, not the real System.map")
    return Cached(image, headers, source, system_map)


# -- the target directory ------------------------------------------------------------


def copy_tree(src: Path, dest: Path) -> None:
    """A full private copy (``cp -a``): the user may edit and build in it without touching the
    cache (a hard-linked copy would let an in-place edit change the pristine tree)."""
    run(["cp", "-a", "--reflink=auto", src, dest], what="cp")


def _record(pkgs: Packages, flavour: str) -> DebianTarget:
    rel = pkgs.release
    return DebianTarget(
        release=rel, flavour=flavour, package_version=pkgs.version,
        packages={p: pkgs.version for p in pkgs.names},
        source="linux", orig_config=f"linux/{ORIG_DIRNAME}", image="image",
        vmlinuz=f"image/boot/vmlinuz-{rel}", modules=f"image/lib/modules/{rel}",
        system_map=f"linux/{ORIG_DIRNAME}/System.map" if pkgs.dbg else None,
    )


def read_target(directory: Path) -> DebianTarget:
    """The record of a prepared target DIR; UserError when DIR holds none (or a bad one)."""
    path = directory / RECORD_NAME
    try:
        return artifacts.DEBIAN_TARGET.read(path)
    except FileNotFoundError:
        raise UserError(f"{directory} is not a Debian target (no {RECORD_NAME}; "
                        "make one with ksplice-debian-target)") from None
    except (OSError, artifacts.ArtifactError) as e:
        raise UserError(str(e)) from None


def write_orig_config(orig: Path, cached: Cached, release: str) -> None:
    """ORIG_CONFIG's files: .config, Module.symvers, kernel.release and, with dbg, System.map."""
    orig.mkdir(parents=True, exist_ok=True)
    copy_atomic(cached.image / f"boot/config-{release}", orig / ".config")
    copy_atomic(cached.headers / f"usr/src/linux-headers-{release}/Module.symvers",
                orig / "Module.symvers")
    write_atomic(orig / "kernel.release", f"{release}\n")
    if cached.system_map is not None:
        copy_atomic(cached.system_map, orig / "System.map")


def prepare_target(release: str | None, directory: Path, *, flavour: str = DEFAULT_FLAVOUR,
                   dbg: bool = False, out: TextIO = sys.stdout) -> DebianTarget:
    """Make ``directory`` a Debian target for ``release`` (None: the newest of ``flavour``).

    Returns the record written to ``directory/debian-target.json``. A
    directory that already holds this release is reused (with ``dbg``, the
    real System.map is added to it); one that holds another release, or any
    other non-empty directory, is refused. The directory appears whole or
    not at all. UserError (one line) for a release or version not in the
    archive, a failed download or unpack.
    """
    check_flavour(flavour)
    if release is None:
        rel = newest_release(flavour)
        say(out, f"newest {flavour} release in the archive: {rel}")
    else:
        rel = parse_release(release)
        if flavour != DEFAULT_FLAVOUR and rel.flavour != flavour:
            raise UserError(f"release {rel} is not of flavour {flavour}")
    directory = Path(os.path.abspath(directory))
    existing: DebianTarget | None = None
    if (directory / RECORD_NAME).is_file():
        existing = read_target(directory)
        if existing.release != str(rel):
            raise UserError(f"{directory} already holds the target {existing.release}, "
                            f"not {rel}")
    elif directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UserError(f"{directory} exists and is not an empty directory")
    pkgs = resolve_packages(str(rel), dbg=dbg or bool(existing and existing.system_map))
    if existing is not None and existing.package_version != pkgs.version:
        raise UserError(f"{directory} holds {existing.release} at {existing.package_version}; the "
                        f"archive now has {pkgs.version}: use a new directory")
    cached = populate_cache(pkgs, out)
    record = _record(pkgs, rel.flavour)
    if existing is not None:
        if existing != record:
            write_orig_config(directory / record.orig_config, cached, record.release)
            write_atomic(directory / RECORD_NAME, artifacts.DEBIAN_TARGET.dumps(record))
        say(out, f"target {record.release} ({pkgs.version}) ready in {directory}")
        return record
    with atomic_dir(directory) as tmp:   # renamed over an empty DIR (checked above)
        say(out, f"copy the source tree to {directory / 'linux'}")
        t0 = time.monotonic()
        copy_tree(cached.source, tmp / "linux")
        say(out, f"copied in {time.monotonic() - t0:.1f} s")
        write_orig_config(tmp / record.orig_config, cached, record.release)
        os.symlink(cached.image, tmp / "image")
        write_atomic(tmp / RECORD_NAME, artifacts.DEBIAN_TARGET.dumps(record))
    say(out, f"target {record.release} ({pkgs.version}) ready in {directory}")
    return record


def main(argv: list[str] | None = None) -> int:
    """``ksplice-debian-target [--flavour F] [--dbg] [RELEASE] DIR``: 0, or 1 with one line."""
    p = argparse.ArgumentParser(
        prog="ksplice-debian-target",
        description="Prepare a Debian kernel as a ksplice target from Debian's packages: "
                    "DIR/linux (source), DIR/linux/ksplice (ORIG_CONFIG), DIR/image.")
    p.add_argument("--flavour", default=DEFAULT_FLAVOUR,
                   help="kernel flavour when RELEASE is not given (default: amd64)")
    p.add_argument("--dbg", action="store_true",
                   help="also download the -dbg image (858 MB for amd64) for the real System.map")
    p.add_argument("release", nargs="?", metavar="RELEASE",
                   help="e.g. 6.1.0-57-amd64 (default: the newest in the archive)")
    p.add_argument("dir", metavar="DIR", type=Path)
    args = p.parse_args(argv)
    try:
        prepare_target(args.release, args.dir, flavour=args.flavour, dbg=args.dbg)
    except UserError as e:
        print(f"ksplice-debian-target: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"ksplice-debian-target: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ksplice-debian-target: interrupted; nothing half-written is left",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
