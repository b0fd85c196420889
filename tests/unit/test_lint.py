# SPDX-License-Identifier: GPL-2.0-only
"""ruff over the Python: the suite fails on any finding, as CI's lint step would.

The kernel C is checked by checkpatch in test_kmodsrc.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ksplice_tasks

ROOT = Path(ksplice_tasks.__file__).resolve().parent.parent
TARGETS = ("ksplice_tasks", "tests", "bench", "dodo.py")


def test_ruff_is_clean() -> None:
    present = [t for t in TARGETS if (ROOT / t).exists()]
    assert "ksplice_tasks" in present and "tests" in present
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *present],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"ruff check {' '.join(present)}:\n{r.stdout}{r.stderr}"
