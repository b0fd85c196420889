# SPDX-License-Identifier: GPL-2.0-only
"""The live-patch cases of ../shared/cases, each checked against its ``Expected:`` line.

Every case patch is made into an update once with ``ksplice-create --patch``
on the lp (SMP+KASLR, ftrace/livepatch/ORC) prebuilt tree, the configuration
the cases' results were measured on.  Then one boot of the lp kernel runs,
for each created update, the case's ``Observe:`` command before, after
``ksplice-apply`` and after ``ksplice-undo``, and greps dmesg for
WARNING/BUG/Oops around each case.  The guest prints each step after an
``@@case:step`` marker; the tests read them.

A case whose expected outcome the project does not reach yet is marked
``xfail(strict=True)``: the test turns red once the behaviour changes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import Prebuilt, create, exit_code, parse_marked, tarball_from

import ksplice_tasks
from ksplice_tasks import names

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

ROOT = Path(ksplice_tasks.__file__).resolve().parent.parent
CASES_DIR = Path(os.environ.get("KSPLICE_CASES", ROOT.parent / "shared" / "cases"))
KS = (f"chroot /host env PYTHONPATH={ROOT} TMPDIR=/run {sys.executable}"
      " -m ksplice_tasks.target.apply")
BM = "/proc/sys/fs/binfmt_misc"
BAD = "WARNING|BUG|Oops"

# The new lines matching a pattern that a command makes the kernel log.
SINCE = ('since() { n=$(dmesg | grep -c "$1"); eval "$2" >/dev/null 2>&1; '
         'dmesg | grep "$1" | tail -n +$((n + 1)); }')


def _dmesg_line(text: str) -> str:
    """Kernel log lines without their timestamps, PIDs as 'PID'."""
    lines = [re.sub(r"^\[\s*\d+\.\d+\]\s*", "", line) for line in text.splitlines()]
    return "\n".join(re.sub(r"\((\d+)\)", "(PID)", line) for line in lines)


def _same(v: str) -> str:
    return v


@dataclass(frozen=True)
class Case:
    """How the guest observes one case, and what the Expected/Observe lines say it shows.

    ``before`` is the expected observation before the apply (None: any value
    matching ``fmt``); ``after(before)`` the one after it.  After the undo
    the ``before`` observation must be back.
    """

    observe: str | None
    before: str | None = None
    after: Callable[[str], str] = _same
    fmt: str = r".*"
    norm: Callable[[str], str] = str.strip
    xfail: str | None = None


CASES: dict[str, Case] = {
    "01-static-local-state": Case(
        observe="echo 1 > /proc/sys/vm/drop_caches; dmesg | grep 'drop_caches:' | tail -n 1",
        before="sh (PID): drop_caches: 1",
        after=lambda _b: "sh (PID): drop_caches: 1 [pagecache]",
        norm=_dmesg_line),
    "02-line-only-shift": Case(observe=None),
    "03-new-func-name-object": Case(
        observe=(SINCE + "; since 'overcommit_memory set' "
                 "'echo 1 > /proc/sys/vm/overcommit_memory'; "
                 "echo 0 > /proc/sys/vm/overcommit_memory"),
        before="",
        after=lambda _b: "overcommit_policy_handler: sh (PID): overcommit_memory set to 1",
        norm=_dmesg_line),
    "04-switch-jump-table": Case(
        observe=(SINCE + "; since 'console loglevel changed' 'dmesg -n 1; dmesg -n 4' | wc -l"
                 "; dmesg | tail -n 1 | wc -l"),
        before="0\n1",
        after=lambda _b: "2\n1"),
    "05-isra-clone-abi-change": Case(
        observe="(echo 500 > /proc/self/oom_score_adj && cat /proc/self/oom_score_adj)",
        before="500"),
    "07-new-initialized-data": Case(
        observe=("grep CommitPolicy /proc/meminfo; echo 2 > /proc/sys/vm/overcommit_memory; "
                 "grep CommitPolicy /proc/meminfo; echo 0 > /proc/sys/vm/overcommit_memory"),
        before="",
        after=lambda _b: "CommitPolicy:   heuristic\nCommitPolicy:   never"),
    "08-changed-data-initializer": Case(observe=None),
    "09-extable-alternatives": Case(
        observe="ls -a / | wc -l",
        fmt=r"\d+"),
    "10-syscall-inline-notrace": Case(
        observe="uname -r",
        fmt=r"6\.1\.\d+\S*",
        after=lambda b: b + "-lp1"),
    "12-header-inline-many-objects": Case(
        observe=("cat /proc/self/comm; ls /proc/self/ns | wc -l; "
                 "head -n 1 /proc/self/maps | sed 's/.* //'"),
        fmt=r"cat\n\d+\n\S+"),
    "15-module-binfmt-misc": Case(
        observe=f"grep -c '^flags: $' {BM}/ksp",
        before="1",
        after=lambda _b: "0"),
}

CREATE_ONLY = {"02-line-only-shift", "08-changed-data-initializer"}
MODULE_CASE = "15-module-binfmt-misc"
STATE_CASE = "01-static-local-state"


def case_patch(name: str) -> Path:
    p = CASES_DIR / f"{name}.patch"
    assert p.is_file(), f"case patch {p} is missing (set KSPLICE_CASES to the cases folder)"
    return p


def expected_line(name: str) -> str:
    return next(line for line in case_patch(name).read_text().splitlines()
                if line.startswith("Expected:"))


def test_every_case_is_listed() -> None:
    assert sorted(p.stem for p in CASES_DIR.glob("*.patch")) == sorted(CASES)


@dataclass(frozen=True)
class Created:
    result: subprocess.CompletedProcess
    outdir: Path
    tarball: Path | None

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr


@pytest.fixture(scope="session")
def case_updates(prebuilt_lp: Prebuilt, tmp_path_factory: pytest.TempPathFactory
                 ) -> dict[str, Created]:
    """ksplice-create --patch=<case> on the lp prebuilt tree, once per case."""
    out = {}
    for name in CASES:
        outdir = tmp_path_factory.mktemp(f"case-{name[:2]}")
        res = create(prebuilt_lp, case_patch(name), outdir)
        tb = tarball_from(res.stdout, outdir) if res.returncode == 0 else None
        out[name] = Created(res, outdir, tb)
        print(f"\ncase {name}: create rc={res.returncode}"
              + ("" if tb else f": {(res.stdout + res.stderr).strip()[-500:]}"))
    return out


def uid_of(tarball: Path) -> str:
    uid = names.tarball_id(tarball.name)
    assert uid is not None, tarball
    return uid


def mark(key: str) -> str:
    return f'echo "@@{key}"'


def case_lines(name: str, tb: Path) -> list[str]:
    uid = uid_of(tb)
    observe = CASES[name].observe or ":"
    return [
        mark(f"{name}:bad_before"), f"dmesg | grep -E '{BAD}'",
        mark(f"{name}:before"), observe,
        mark(f"{name}:apply"), f"$KS apply {tb} 2>&1; echo rc=$?",
        mark(f"{name}:log"), "dmesg | grep -i ksplice | tail -n 20",
        mark(f"{name}:after"), observe,
        mark(f"{name}:view"), "$KS view 2>&1; echo rc=$?",
        mark(f"{name}:undo"), f"$KS undo {uid} 2>&1; echo rc=$?",
        mark(f"{name}:restored"), observe,
        mark(f"{name}:left"), "left",
    ]


def state_lines(tb: Path) -> list[str]:
    """01's Observe (state): stfu set by the old code must silence the new code."""
    uid = uid_of(tb)
    count = "dmesg | grep -c 'drop_caches:'"
    return [
        mark("state:set"), f"echo 4 > /proc/sys/vm/drop_caches; {count}",
        mark("state:apply"), f"$KS apply {tb} 2>&1; echo rc=$?",
        mark("state:after"), f"echo 1 > /proc/sys/vm/drop_caches; {count}",
        mark("state:undo"), f"$KS undo {uid} 2>&1; echo rc=$?",
    ]


def guest_script(tarballs: dict[str, Path]) -> str:
    lines = [
        f'KS="{KS}"',
        "left() { ls /sys/module | grep ksplice; echo end; }",
    ]
    if MODULE_CASE in tarballs:
        # binfmt_misc is not loaded yet: the update must refuse, touching nothing.
        lines += [mark("notloaded"), f"$KS apply {tarballs[MODULE_CASE]} 2>&1; echo rc=$?",
                  mark("notloaded_left"), "left"]
    for name, tb in tarballs.items():
        if name == MODULE_CASE:
            continue
        lines += case_lines(name, tb)
        if name == STATE_CASE:
            lines += state_lines(tb)
        lines += [mark(f"{name}:bad_after"), f"dmesg | grep -E '{BAD}'"]
    if MODULE_CASE in tarballs:
        lines += [
            mark("insmod"),
            f"insmod /m/binfmt_misc.ko && mount -t binfmt_misc none {BM}"
            f" && echo ':ksp:E::ksp::/bin/sh:' > {BM}/register; echo rc=$?",
            *case_lines(MODULE_CASE, tarballs[MODULE_CASE]),
            mark(f"{MODULE_CASE}:bad_after"), f"dmesg | grep -E '{BAD}'",
        ]
    lines += [mark("dmesg"), f"dmesg | grep -E '{BAD}'", mark("end")]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def guest(prebuilt_lp: Prebuilt, case_updates: dict[str, Created]) -> tuple[dict[str, str], str]:
    """One boot of the lp kernel through every created update: the marked blocks, the console."""
    tarballs = {n: c.tarball for n, c in case_updates.items() if c.tarball is not None}
    kernel = prebuilt_lp.kernel
    res = kernel.boot(guest_script(tarballs), hostfs=True, timeout=1800,
                      files=[("/m/binfmt_misc.ko", kernel.build / "fs/binfmt_misc.ko")])
    print(f"\nlp: {len(tarballs)} case updates, one boot, {res.seconds:.1f} s")
    return parse_marked(res.guest_output), res.output[-6000:]


def check_applied(name: str, created: Created, guest: tuple[dict[str, str], str]) -> None:
    """Created, applied ('Done!'), Observe after-value seen, undone, before-value back."""
    case = CASES[name]
    assert created.tarball is not None, f"create failed: {created.output[-3000:]}"
    g, console = guest
    steps = ["bad_before", "before", "apply", "after", "undo", "restored", "left", "bad_after"]
    missing = [s for s in steps if f"{name}:{s}" not in g]
    assert not missing, f"guest did not reach {missing}: {console}"
    apply_out = g[f"{name}:apply"]
    assert exit_code(apply_out) == 0 and apply_out.startswith("Done!"), (
        apply_out + "\n" + g.get(f"{name}:log", ""))
    if case.observe is not None:
        seen = {s: case.norm(g[f"{name}:{s}"]) for s in ("before", "after", "restored")}
        for s, v in seen.items():
            assert re.fullmatch(case.fmt, v, re.S), (s, v)
        before = seen["before"] if case.before is None else case.before
        assert seen == {"before": before, "after": case.after(before), "restored": before}, (
            expected_line(name), g[f"{name}:view"])
    assert exit_code(g[f"{name}:undo"]) == 0, g[f"{name}:undo"]
    assert g[f"{name}:left"] == "end", "the update's modules must be unloaded after the undo"
    assert g[f"{name}:bad_after"] == g[f"{name}:bad_before"], g[f"{name}:bad_after"]


def _params() -> list:
    out = []
    for name, case in CASES.items():
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", [p for p in _params() if p.id not in CREATE_ONLY])
def test_case_applies(name: str, case_updates: dict[str, Created], guest) -> None:
    check_applied(name, case_updates[name], guest)


def test_01_static_local_state_keeps_the_running_variable(case_updates, guest) -> None:
    """After 'echo 4' in the old code, the applied code must print nothing (same stfu)."""
    name = STATE_CASE
    assert case_updates[name].tarball is not None, case_updates[name].output[-3000:]
    g, console = guest
    assert "state:undo" in g, console
    assert exit_code(g["state:apply"]) == 0 and g["state:apply"].startswith("Done!")
    assert g["state:after"] == g["state:set"], "a fresh stfu would print drop_caches again"
    assert exit_code(g["state:undo"]) == 0


def test_15_module_binfmt_misc_refused_while_not_loaded(case_updates, guest) -> None:
    """Expected: refuse:not_loaded (clear message) while binfmt_misc.ko is not loaded."""
    name = MODULE_CASE
    assert case_updates[name].tarball is not None, case_updates[name].output[-3000:]
    g, console = guest
    assert "notloaded_left" in g and "insmod" in g, console
    assert exit_code(g["notloaded"]) == 1, g["notloaded"]
    assert "(not loaded)" in g["notloaded"], g["notloaded"]
    assert g["notloaded_left"] == "end"
    assert exit_code(g["insmod"]) == 0, g["insmod"]


TO_PATCH_RE = re.compile(r"^collect: \d+ object\(s\), (\d+) function\(s\) to patch \((.*)\), ",
                         re.M)


def tarball_diffs(tarball: Path | None, dest: Path) -> dict[str, dict]:
    """Object key -> objdiff's record (debug/objects/<key>/diff.json) in an update tarball."""
    assert tarball is not None
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    objects = dest / f"ksplice-{uid_of(tarball)}" / "debug" / "objects"
    return {p.name: json.loads((p / "diff.json").read_text()) for p in objects.iterdir()}


def test_case_02_line_only_shift_create(case_updates, guest) -> None:
    """Expected: one changed function, two __LINE__-only ones left alone; then it applies."""
    name = "02-line-only-shift"
    created = case_updates[name]
    out = created.result.stdout
    assert created.result.returncode == 0, created.output[-3000:]
    to_patch = TO_PATCH_RE.search(out)
    assert to_patch and to_patch.group(2) == "_hpet_print_config", out[-3000:]
    # objdiff's own record, as the tarball carries it: the objdiff task may be up to
    # date from an earlier run on this tree, and then prints nothing.
    found = tarball_diffs(created.tarball, created.outdir / "unpacked")
    assert set(found) == {"arch__x86__kernel__hpet.o"}, found
    diff = found["arch__x86__kernel__hpet.o"]
    changed, line_only = diff["changed"], diff["line_only"]
    assert "_hpet_print_config" in changed, found
    # hpet_enable and hpet_late_init (__init) call hpet_print_config() too: they are
    # line-only as well, and never patched (their code was freed after boot).
    assert {"hpet_clkevt_legacy_resume", "hpet_clkevt_set_state_periodic"} <= set(
        line_only) <= {"hpet_clkevt_legacy_resume", "hpet_clkevt_set_state_periodic",
                       "hpet_enable", "hpet_late_init"}, found
    assert not set(line_only) & set(changed), found
    check_applied(name, created, guest)


def test_case_08_changed_data_initializer_refused(case_updates) -> None:
    """Expected: refuse: initialized data of existing symbol pipe_max_size changed."""
    created = case_updates["08-changed-data-initializer"]
    assert created.result.returncode != 0 and created.tarball is None, created.output[-3000:]
    out = created.output
    assert "pipe_max_size" in out, out[-3000:]
    assert re.search(r"initiali[sz]", out), out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert not list(created.outdir.glob("ksplice-*.tar.gz")), "a refused update leaves no tarball"
