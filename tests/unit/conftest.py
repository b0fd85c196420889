# SPDX-License-Identifier: GPL-2.0-only
"""Unit fixtures for the object layer: C snippets compiled with kernel flags."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "objfixtures"
KERNEL_FLAGS = ["-O2", "-mcmodel=kernel", "-mfentry", "-pg", "-fno-PIE", "-fno-pic",
                "-ffunction-sections", "-fdata-sections"]
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "expect.json").is_file())


def expectation(case: str) -> dict:
    return json.loads((FIXTURES / case / "expect.json").read_text())


@pytest.fixture(scope="session")
def compile_c(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Compile a snippet once per session; pre and post get the same file name.

    The same name matters: ``__FILE__`` ends up in the objects, and pre and
    post of one kernel file share it.
    """
    root = tmp_path_factory.mktemp("objs")
    cache: dict[tuple, Path] = {}

    def build(src: Path, variant: str, name: str | None = None,
              flags: tuple[str, ...] = ()) -> Path:
        key = (str(src), variant, name, flags)
        if key not in cache:
            d = root / variant
            d.mkdir(exist_ok=True)
            cname = (name or src.parent.name) + ".c"
            shutil.copyfile(src, d / cname)
            out = d / (Path(cname).stem + ".o")
            subprocess.run(["gcc", *KERNEL_FLAGS, *flags, f"-I{FIXTURES}", "-c", cname,
                            "-o", out.name], cwd=d, check=True)
            cache[key] = out
        return cache[key]

    return build


@pytest.fixture(scope="session")
def fixture_pair(compile_c: Callable[..., Path]) -> Callable[[str], tuple[Path, Path]]:
    def pair(case: str) -> tuple[Path, Path]:
        return (compile_c(FIXTURES / case / "pre.c", "pre"),
                compile_c(FIXTURES / case / "post.c", "post"))
    return pair


@pytest.fixture(scope="session")
def stubs_o(compile_c: Callable[..., Path]) -> Path:
    return compile_c(FIXTURES / "stubs.c", "stubs", "stubs")
