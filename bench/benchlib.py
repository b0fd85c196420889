# SPDX-License-Identifier: GPL-2.0-only
"""What the benchmarks share: timing a command, and the tests' prebuilt real tree."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ksplice_tasks.testing import testkernel


def timed(argv: list[str], cwd: Path | None = None) -> float:
    """Wall seconds of one command; a failing command ends the benchmark with its output."""
    t0 = time.monotonic()
    res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"bench: {argv[:4]}... failed:\n{res.stdout[-1500:]}{res.stderr[-1500:]}")
    return time.monotonic() - t0


def prebuilt_tree(name: str = "tests") -> tuple[Path, Path]:
    """(KERNEL_SOURCE, ORIG_CONFIG) of a prebuilt SMP tree ("tests", "demo"), built if needed."""
    kernel = testkernel.build_test_kernel("smp")
    return testkernel.prebuild_tree(kernel, name)
