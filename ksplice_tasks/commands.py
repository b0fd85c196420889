# SPDX-License-Identifier: GPL-2.0-only
"""Run external commands from argument lists; `-v` echoes each one first."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ksplice_tasks.errors import UserError


def echo(argv: Sequence[str | Path], cwd: Path | None = None) -> None:
    """Print a command the way a user could paste it back into a shell."""
    where = f"(cd {shlex.quote(str(cwd))} && " if cwd else ""
    print(f"+ {where}{shlex.join(str(a) for a in argv)}{')' if cwd else ''}", flush=True)


def run(
    argv: Sequence[str | Path],
    *,
    verbose: bool = False,
    cwd: Path | None = None,
    what: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run a command, return its stdout; on failure raise UserError with its stderr tail."""
    if verbose:
        echo(argv, cwd)
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    if verbose and proc.stdout:
        sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        detail = "; ".join(line.strip() for line in tail) or f"exit status {proc.returncode}"
        raise UserError(f"{what or Path(str(argv[0])).name} failed: {detail}")
    return proc.stdout
