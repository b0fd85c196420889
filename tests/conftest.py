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

from helpers import Prebuilt, run_create  # noqa: E402

from ksplice_tasks import testkernel  # noqa: E402


@pytest.fixture(scope="session")
def kernel_up() -> testkernel.TestKernel:
    return testkernel.build_test_kernel("up")


@pytest.fixture(scope="session")
def kernel_smp() -> testkernel.TestKernel:
    return testkernel.build_test_kernel("smp")


@pytest.fixture(scope="session")
def prebuilt_smp(kernel_smp: testkernel.TestKernel) -> Prebuilt:
    """A KERNEL_SOURCE prebuilt by ksplice-create against the SMP test kernel's ORIG_CONFIG."""
    ksrc, orig = testkernel.prebuild_tree(kernel_smp, "tests")
    res = run_create("--prebuild", f"--config={orig}", str(ksrc))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return Prebuilt(kernel_smp, ksrc, orig)
