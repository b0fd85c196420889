# SPDX-License-Identifier: GPL-2.0-only
"""A small, fast subset of the corpus benchmark (bench/corpus.py) on Debian's shipped kernel.

Four real changes of Debian's 6.1.170-3 -> 6.1.176-1 update go through the
benchmark's own phases (ksplice_tasks/testing/corpus_run.py): cut and
classified from the two pristine source trees, created against the shipped
6.1.0-47-amd64 target (targeted prebuild), then one boot of that image
applies, checks (a jmp at every patch site, from /proc/kcore), reverses,
re-applies and reverses each created update, reading the kernel log after
each step.  Two are code fixes that apply and undo today, two are expected
refusals (a changed initializer of data, an __init-only change): these
outcomes must not change.  The whole corpus is the benchmark.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ksplice_tasks.testing import corpus_run

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

PAIR = "170-176"
# path -> (kind, created, applied, undone, a phrase of the reason)
EXPECTED = {
    "kernel/time/time.c": ("code", True, True, True, ""),
    "net/unix/af_unix.c": ("code", True, True, True, ""),
    "net/netlabel/netlabel_unlabeled.c": ("data", False, None, None,
                                          "ksplice cannot change initialised data"),
    "fs/dcache.c": ("init", False, None, None, "only __init/__exit code changed"),
}


def test_four_real_changes_of_debians_stable_update(tmp_path: Path) -> None:
    run = corpus_run.Run(tmp_path, jobs=2, out=sys.stdout)
    kernel, old_src, new_src = corpus_run.prepare(run, PAIR)
    cases = corpus_run.cut(run, kernel, old_src, new_src, only=sorted(EXPECTED))
    corpus_run.create(run, kernel, cases)
    corpus_run.boot(run, kernel, cases)
    got = {c.path: (c.kind, c.created, c.applied, c.undone) for c in cases}
    want = {p: e[:4] for p, e in EXPECTED.items()}
    detail = {c.path: c.reason for c in cases}
    assert got == want, detail
    for c in cases:
        assert EXPECTED[c.path][4] in c.reason, (c.path, c.reason)
        assert c.log == [], (c.path, c.log)
    # the cut names the function each fix touches (a syscall by its macro)
    assert {c.path: c.functions for c in cases if c.kind == "code"} == {
        "kernel/time/time.c": ["SYSCALL_DEFINE2"],
        "net/unix/af_unix.c": ["bpf_iter_unix_seq_show"]}
