# SPDX-License-Identifier: GPL-2.0-only
"""Any exception inside any create task: one line, exit 1, the post tree back at its snapshot.

A bug (KeyError, AssertionError, ...), an environment failure (OSError,
MemoryError) or an interrupt can come from any stage function. Each is
injected into the real ``ksplice-create`` on the real lp tree of this suite:
a ``sitecustomize`` module, first on the child's PYTHONPATH, replaces one
stage function with one that raises. The outcome must not depend on what was
raised or where.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, Prebuilt, post_tree_diff

pytestmark = pytest.mark.kernel

EXAMPLE = REPO / "ksplice_tasks" / "data" / "example-loadavg.patch"

# (stage module, function, the exception it raises): one row per create task.
CAUSES = [
    ("patching", "post_patch", "UnicodeDecodeError('utf-8', b'\\xff', 0, 1, 'bad')"),
    ("postbuild", "build_post", "RuntimeError('a bug in the post build')"),
    ("extract", "diff_object", "KeyError('.text.loadavg_proc_show')"),
    ("extract", "extract_object", "AssertionError('an internal check')"),
    ("collect", "collect", "ZeroDivisionError('division by zero')"),
    ("kmod", "write_tables", "ValueError('bad table')"),
    ("kmod", "write_modcommon", "IndexError('list index out of range')"),
    ("kmod", "build", f"OSError({errno.ENOSPC}, 'No space left on device')"),
    ("kmod", "rmsyms_check", "TypeError('unsupported operand')"),
    ("package", "write_tarball", "MemoryError()"),
]

SITECUSTOMIZE = """\
import importlib
_mod = importlib.import_module("ksplice_tasks.stages.{module}")
def _fail(*args, **kwargs):
    raise {exc}
setattr(_mod, "{function}", _fail)
"""


def _run(pb: Prebuilt, tmp_path: Path, module: str, function: str, exc: str
         ) -> subprocess.CompletedProcess:
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        SITECUSTOMIZE.format(module=module, function=function, exc=exc))
    env = {**os.environ, "PYTHONPATH": f"{inject}{os.pathsep}{REPO}"}
    out = tmp_path / "out"
    out.mkdir()
    # another patch each time, so no task is up to date from an earlier row
    patch = tmp_path / "fix.patch"
    patch.write_text(EXAMPLE.read_text().replace("ksplice-loadavg", f"ksplice-{function}"))
    return subprocess.run([sys.executable, "-m", "ksplice_tasks.cli", f"--patch={patch}",
                           f"--config={pb.orig}", str(pb.ksrc)], cwd=out, env=env,
                          capture_output=True, text=True, check=False)


@pytest.mark.parametrize(("module", "function", "exc"), CAUSES,
                         ids=[f"{m}.{f}" for m, f, _ in CAUSES])
def test_an_exception_in_a_task_is_one_line_and_resets(hostile_lp: Prebuilt, tmp_path: Path,
                                                        module: str, function: str,
                                                        exc: str) -> None:
    res = _run(hostile_lp, tmp_path, module, function, exc)
    output = res.stdout + res.stderr
    assert res.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1, output[-3000:]
    kind = exc.split("(", 1)[0]
    assert errors[0].startswith("ksplice-create: error: "), errors
    assert kind in errors[0] or "No space left on device" in errors[0], errors[0]
    assert post_tree_diff(hostile_lp) == []
    assert not list((tmp_path / "out").iterdir())


def test_an_interrupt_in_a_task_resets_the_post_tree(hostile_lp: Prebuilt,
                                                     tmp_path: Path) -> None:
    """Ctrl-C (KeyboardInterrupt) in the post build: no traceback, nonzero, reset."""
    res = _run(hostile_lp, tmp_path, "postbuild", "build_post", "KeyboardInterrupt()")
    output = res.stdout + res.stderr
    assert res.returncode == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert res.stderr.splitlines() == ["ksplice-create: error: interrupted by SIGINT"]
    assert post_tree_diff(hostile_lp) == []
