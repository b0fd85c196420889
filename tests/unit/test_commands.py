# SPDX-License-Identifier: GPL-2.0-only
"""commands.spawn: a command's whole process group ends with us, however we end; hold_lock."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ksplice_tasks import commands
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import hold_lock

REPO = Path(__file__).resolve().parents[2]


def _sleepers(tag: str) -> list[int]:
    """Live processes running ``sleep <tag>`` (zombies excluded)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmd[:2] == [b"sleep", tag.encode()] and state != "Z":
            out.append(int(pid))
    return out


def _gone_within(tag: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _sleepers(tag)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


# A parent that runs a shell with two background sleeps (a grandchild tree, like
# make's gcc) through spawn, says "ready" and waits for them.
PARENT = """
import subprocess, sys
from ksplice_tasks.commands import interrupt_on_signals, spawn
interrupt_on_signals()
tag = sys.argv[1]
with spawn(["sh", "-c", f"sleep {tag} & sleep {tag} & wait"]) as p:
    print("ready", flush=True)
    p.wait()
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=lambda s: signal.Signals(s).name)
def test_group_ends_with_parent(sig: int) -> None:
    """However the parent ends, its command's children (grandchildren of it) end within 1 s."""
    tag = f"{random.randint(100, 999)}.{random.randint(1, 10**6)}"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, tag], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert parent.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 5
        while len(_sleepers(tag)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(_sleepers(tag)) == 2
        parent.send_signal(sig)
        parent.wait(timeout=10)
        assert _gone_within(tag, 1.0) == []
    finally:
        for pid in _sleepers(tag):
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.communicate()


def test_group_ends_when_the_block_fails() -> None:
    tag = f"{random.randint(100, 999)}.{random.randint(1, 10**6)}"
    with pytest.raises(RuntimeError), commands.spawn(
            ["sh", "-c", f"sleep {tag} & sleep {tag} & wait"]) as proc:
        deadline = time.monotonic() + 5
        while len(_sleepers(tag)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        raise RuntimeError("the task failed")
    assert proc.returncode is not None
    assert _sleepers(tag) == []  # (zombies may wait a moment for init to reap them)


def test_interrupted_exits_quietly() -> None:
    """A signal in a front end: exit 128 + N, no traceback (doit does not catch it)."""
    code = ("import os, signal, time; from ksplice_tasks.commands import interrupt_on_signals;"
            "interrupt_on_signals(); os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (res.returncode, res.stderr) == (128 + signal.SIGTERM, "")
    assert str(commands.Interrupted(signal.SIGHUP)) == "interrupted by SIGHUP"


def test_run_process_and_run() -> None:
    res = commands.run_process(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert commands.run(["sh", "-c", "echo hi"]) == "hi\n"
    with pytest.raises(UserError, match="^false failed: exit status 1$"):
        commands.run(["false"])


def test_hold_lock_busy_then_free(tmp_path: Path) -> None:
    """A held lock refuses at once naming its holder; a SIGKILLed holder leaves no stale lock."""
    lock = tmp_path / "state" / "lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ksplice_tasks.files import hold_lock;"
         f"f = hold_lock(__import__('pathlib').Path({str(lock)!r})); print('held', flush=True);"
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UserError) as e:
            hold_lock(lock)
        assert str(e.value) == f"busy: another ksplice-create holds {lock} (pid {holder.pid})"
        holder.kill()
        holder.wait()
        with hold_lock(lock) as f:
            assert lock.read_text() == f"{os.getpid()}\n"
            assert not f.closed
    finally:
        holder.kill()
        holder.communicate()
