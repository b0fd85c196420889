# SPDX-License-Identifier: GPL-2.0-only
"""Processes of one ksplice-create run, found by a token in their environment.

Every child inherits the environment (make passes it to gcc, as and ld), so
``KSPLICE_TEST_TOKEN=<token>`` marks the whole process tree of a run, the
ones that escaped their parent included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

TOKEN_VAR = "KSPLICE_TEST_TOKEN"
REPO = Path(__file__).resolve().parents[2]


def new_token() -> str:
    return uuid.uuid4().hex


def _state(pid: str) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat.rsplit(")", 1)[1].split()[0]


def marked(token: str) -> dict[int, list[str]]:
    """Live (not zombie) processes carrying ``token``: pid -> command line."""
    needle = f"{TOKEN_VAR}={token}".encode()
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and _state(pid) not in ("Z", "X", "gone"):
            out[int(pid)] = [a.decode(errors="replace") for a in cmd.split(b"\0") if a]
    return out


def start(args: list[str], token: str, cwd: Path, log: Path,
          env: dict[str, str] | None = None, doit: bool = False) -> subprocess.Popen:
    """ksplice-create ``args`` (or ``doit args`` on a copy of dodo.py in ``cwd``), marked."""
    cwd.mkdir(parents=True, exist_ok=True)
    full = {**os.environ, "PYTHONPATH": str(REPO), TOKEN_VAR: token, **(env or {})}
    if doit:
        (cwd / "dodo.py").write_bytes((REPO / "dodo.py").read_bytes())
        argv = [sys.executable, "-m", "doit", *args]
    else:
        argv = [sys.executable, "-m", "ksplice_tasks.cli", *args]
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=cwd, env=full, stdout=out, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)


def wait_for(token: str, match: Callable[[list[str]], bool], timeout: float,
             proc: subprocess.Popen | None = None) -> int | None:
    """The pid of a marked process whose command line ``match``es, polled every 20 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, cmd in marked(token).items():
            if cmd and match(cmd):
                return pid
        if proc is not None and proc.poll() is not None:
            return None
        time.sleep(0.02)
    return None


def is_make(cmd: list[str], tree: Path) -> bool:
    return Path(cmd[0]).name == "make" and "-C" in cmd and str(tree) in cmd


def is_compiler(cmd: list[str]) -> bool:
    return Path(cmd[0]).name in ("cc1", "gcc", "as", "ld", "modpost", "objtool")


def survivors(token: str, within: float = 1.0) -> dict[int, list[str]]:
    """Marked processes still alive ``within`` seconds from now (empty: all gone)."""
    deadline = time.monotonic() + within
    while True:
        left = marked(token)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def reap(token: str) -> None:
    """SIGKILL whatever a failed test left with ``token`` (each by its pid)."""
    for pid in marked(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
