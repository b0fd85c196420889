# SPDX-License-Identifier: GPL-2.0-only
"""Run external commands from argument lists; `-v` echoes each one first.

Every command runs in a process group of its own, watched (:func:`spawn`):
when ksplice-create is interrupted (Ctrl-C, SIGTERM, SIGHUP), fails while a
command runs, or is killed outright (SIGKILL, the OOM killer), the whole
group - make and every gcc, as and ld below it - is ended within
:data:`GRACE` seconds, so no build outlives the command that started it.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ksplice_tasks.errors import UserError

# Seconds between SIGTERM and SIGKILL when a command's process group is ended.
GRACE = 0.5

# The watcher: a separate tiny process (its own session, deaf to the terminal's
# signals) that reads the group id from stdin, then waits for end of file. The
# parent writes "done" before it closes the pipe after a normal end; end of
# file without it means the parent died (the kernel closed its end), and the
# watcher ends the group. Only os, signal, time, sys: it starts in ~20 ms.
_WATCHER = """\
import os, signal, sys, time
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
    signal.signal(s, signal.SIG_IGN)
data = b""
while True:
    chunk = os.read(0, 256)
    if not chunk:
        break
    data += chunk
words = data.split()
if words and words[-1] != b"done" and words[0].isdigit():
    pgid, grace = int(words[0]), float(sys.argv[1])
    sig, deadline = signal.SIGTERM, time.monotonic() + grace
    while True:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            break
        if sig == signal.SIGKILL:
            break
        time.sleep(0.02)
        if time.monotonic() >= deadline:
            sig = signal.SIGKILL
"""


def echo(argv: Sequence[str | Path], cwd: Path | None = None) -> None:
    """Print a command the way a user could paste it back into a shell."""
    where = f"(cd {shlex.quote(str(cwd))} && " if cwd else ""
    print(f"+ {where}{shlex.join(str(a) for a in argv)}{')' if cwd else ''}", flush=True)


def end_group(pgid: int, grace: float = GRACE,
              leader: subprocess.Popen | None = None) -> None:
    """SIGTERM process group ``pgid``, then SIGKILL whatever is left after ``grace`` seconds.

    ``leader``, our child that leads the group, is reaped as it ends (a zombie
    still counts as a member). Returns as soon as the group is gone (or was
    never there).
    """
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while True:
        if leader is not None:
            leader.poll()
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if sig == signal.SIGKILL:
            return
        time.sleep(0.02)
        if time.monotonic() >= deadline:
            sig = signal.SIGKILL


def _start_watcher(grace: float) -> tuple[subprocess.Popen, int]:
    """The watcher process (:data:`_WATCHER`) and the write end of its stdin pipe."""
    r, w = os.pipe()
    try:
        watcher = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHER, str(grace)],
                                   stdin=r, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    return watcher, w


@contextmanager
def spawn(argv: Sequence[str | Path], *, grace: float = GRACE,
          **popen: Any) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(argv, **popen)`` in a new process group that cannot outlive us.

    The block reads the process's output and waits for it. Leaving the block
    by an exception (KeyboardInterrupt, :class:`Interrupted`, a failure while
    reading) ends the whole group (:func:`end_group`: SIGTERM, then SIGKILL
    after ``grace`` seconds) before the exception goes on. If this process
    dies without running any Python (SIGKILL), a watcher process ends the
    group instead, within ``grace`` seconds plus ~20 ms. stdin is /dev/null
    unless ``popen`` says otherwise. OSError when ``argv[0]`` cannot be run.
    """
    popen.setdefault("stdin", subprocess.DEVNULL)
    watcher, w = _start_watcher(grace)
    proc = None
    ended = False  # the group is known to be over: the watcher has nothing to do
    try:
        proc = subprocess.Popen([str(a) for a in argv], process_group=0, **popen)
        os.write(w, f"{proc.pid}\n".encode())
        yield proc
        proc.wait()
        end_group(proc.pid, grace)  # anything the command left behind in its group
        ended = True
    except BaseException:
        if proc is not None:
            end_group(proc.pid, grace, proc)
            proc.wait()
        ended = True
        raise
    finally:
        try:
            if ended:
                os.write(w, b"done\n")
        finally:
            os.close(w)
            watcher.wait()


def run_process(argv: Sequence[str | Path], *, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command in a watched process group (:func:`spawn`), capturing its text output.

    Never raises for a nonzero exit; OSError when the command cannot be run.
    """
    with spawn(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
               text=True, errors="replace") as proc:
        out, err = proc.communicate()
    return subprocess.CompletedProcess([str(a) for a in argv], proc.returncode, out, err)


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
    proc = run_process(argv, cwd=cwd, env=env)
    if verbose and proc.stdout:
        sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        detail = "; ".join(line.strip() for line in tail) or f"exit status {proc.returncode}"
        raise UserError(f"{what or Path(str(argv[0])).name} failed: {detail}")
    return proc.stdout


class Interrupted(SystemExit):
    """SIGINT, SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt, so cleanups run.

    ``signum`` is the signal's number. A SystemExit with code 128 + signum:
    uncaught (doit), the process exits with that code and no traceback;
    ksplice-create catches it and says which signal it was.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}"


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def interrupt_on_signals() -> None:
    """Turn SIGINT (Ctrl-C), SIGTERM and SIGHUP into :class:`Interrupted` in this (main) thread.

    Called by the front ends (ksplice-create, dodo.py): the running command's
    group is then ended and a create task's cleanup runs.
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)
