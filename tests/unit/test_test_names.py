# SPDX-License-Identifier: GPL-2.0-only
"""The test tree itself: pytest's default import mode ("prepend") imports every
test file by its basename, so two test files (or conftest.py files) with the same
basename in different tiers make the whole run stop at collection
("import file mismatch").  Running one tier at a time hides it; CI runs them all.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique_across_tiers() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if path.name.startswith("test_") or path.name == "conftest.py":
            seen[path.name].append(str(path.relative_to(TESTS)))
    dups = {name: paths for name, paths in seen.items()
            if len(paths) > 1 and name != "conftest.py"}
    assert dups == {}
    # one conftest.py per tree level is pytest's own rule; below tests/ only the
    # root one exists, so a tier's conftest cannot shadow another tier's module
    assert sorted(seen.get("conftest.py", [])) in (["conftest.py"],
                                                   ["conftest.py", "unit/conftest.py"])
