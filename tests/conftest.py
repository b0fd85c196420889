# SPDX-License-Identifier: GPL-2.0-only
"""Fixtures for the real-kernel tiers: test kernels and prebuilt trees, cached outside the clone.

Nothing here is skipped: without the Debian tarball or qemu the kernel tests
fail and say what to install (`./run tests` installs both).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import EXPECTED, PATCHES, Prebuilt, create, run_create, tarball_from  # noqa: E402

from ksplice_tasks.testing import debian_guest, testkernel  # noqa: E402
from ksplice_tasks.tree import snapshot


@pytest.fixture(scope="session")
def kernel_up() -> testkernel.TestKernel:
    return testkernel.build_test_kernel("up")


@pytest.fixture(scope="session")
def kernel_smp() -> testkernel.TestKernel:
    return testkernel.build_test_kernel("smp")


def prebuild(kernel: testkernel.TestKernel, name: str = "tests", full: bool = True) -> Prebuilt:
    """A KERNEL_SOURCE prebuilt by ksplice-create against a test kernel's ORIG_CONFIG.

    ``full``: every object built now (``--full``); else the targeted prebuild
    a never-built tree gets by default.
    """
    ksrc, orig = testkernel.prebuild_tree(kernel, name)
    res = run_create("--prebuild", *(["--full"] if full else []), f"--config={orig}", str(ksrc))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return Prebuilt(kernel, ksrc, orig)


def create_all(pb: Prebuilt, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The create issue's five updates for one prebuilt tree, name -> tarball."""
    out = {}
    for name in EXPECTED:
        outdir = tmp_path_factory.mktemp(f"{pb.kernel.variant}-{name}")
        res = create(pb, PATCHES / f"{name}.patch", outdir)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr
        out[name] = tarball_from(res.stdout, outdir)
    return out


@pytest.fixture(scope="session")
def prebuilt_smp(kernel_smp: testkernel.TestKernel) -> Prebuilt:
    return prebuild(kernel_smp)


@pytest.fixture(scope="session")
def update_tarballs(prebuilt_smp: Prebuilt, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The five updates on SMP+KASLR; also whether the pre tree stayed put meanwhile."""
    before = snapshot.tree_digest(prebuilt_smp.ksrc, [prebuilt_smp.orig])
    out: dict = create_all(prebuilt_smp, tmp_path_factory)
    out["pre tree unchanged"] = snapshot.tree_digest(prebuilt_smp.ksrc,
                                                     [prebuilt_smp.orig]) == before
    return out


@pytest.fixture(scope="session")
def kernel_lp() -> testkernel.TestKernel:
    return testkernel.build_test_kernel("lp")


@pytest.fixture(scope="session")
def prebuilt_lp(kernel_lp: testkernel.TestKernel) -> Prebuilt:
    """Like prebuilt_smp, for the lp (ftrace, livepatch, ORC) test kernel."""
    return prebuild(kernel_lp)


@pytest.fixture(scope="session")
def targeted_lp(kernel_lp: testkernel.TestKernel) -> Prebuilt:
    """A targeted prebuild (make prepare, inventory, includes) for the lp test kernel."""
    return prebuild(kernel_lp, "targeted", full=False)


@pytest.fixture(scope="session")
def hostile_lp(kernel_lp: testkernel.TestKernel) -> Prebuilt:
    """A targeted prebuild of its own for tests/hostile: kills, races and hostile
    patches there never touch the trees other tests share."""
    return prebuild(kernel_lp, "hostile", full=False)


@pytest.fixture(scope="session")
def update_tarballs_lp(prebuilt_lp: Prebuilt, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The five updates built against the lp kernel."""
    return create_all(prebuilt_lp, tmp_path_factory)


@pytest.fixture(scope="session")
def kernel_debian() -> debian_guest.DebianKernel:
    """Debian's shipped kernel, the newest amd64 in the archive, prepared once in the cache."""
    return debian_guest.prepare()


@pytest.fixture(scope="session")
def prebuilt_debian(kernel_debian: debian_guest.DebianKernel) -> Prebuilt:
    """Debian's own source tree with its ORIG_CONFIG (kallsyms captured in one boot),
    targeted-prebuilt: make prepare, the inventory and the include index."""
    orig = kernel_debian.orig_config
    if not (orig / "kallsyms").is_file():
        debian_guest.capture_kallsyms(kernel_debian)
    res = run_create("--prebuild", str(kernel_debian.source))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return Prebuilt(kernel_debian, kernel_debian.source, orig)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def update_tarballs_debian(prebuilt_debian: Prebuilt,
                           tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The five updates, built for Debian's shipped kernel."""
    return create_all(prebuilt_debian, tmp_path_factory)
