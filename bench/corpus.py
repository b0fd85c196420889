#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""The corpus benchmark: real fixes between two Debian linux-source-6.1 versions, end to end.

    PYTHONPATH=. python bench/corpus.py [--pair 170-176|176-187] [--limit N]
                                        [--target debian] [-j N] [-v]

Phases (each prints ``corpus: [phase i/N] ...``):

1. prepare: the older version's Debian target (``ksplice-debian-target``:
   source tree, ORIG_CONFIG, shipped image), its /proc/kallsyms (one boot),
   the newer version's source tree, all cached under
   ``$KSPLICE_CACHE/debian/<version>``; a targeted prebuild of the target;
2. cut: ``diff -rq`` of the two trees, one case per changed file, each
   classified (ksplice_tasks/testing/corpus.py: code, data, init, noop,
   header, notbuilt, other); which ``.c`` files are built into the image
   comes from ``make -n vmlinux modules`` on the target (cached);
3. create: ``ksplice-create --patch`` of each sampled case (code fixes and the
   expected refusals data/init/noop), against the older version's target;
4. boot: the older version's shipped image, once, with every created update:
   apply, check (jmp at every patch site), reverse, re-apply, reverse, and the
   kernel log after each step;
5. report: the table and totals, printed and written to
   ``$KSPLICE_CACHE/corpus/<pair>-<target>/report.{json,md}``.

``--limit N`` takes the first N code fixes of the stable sample order (the
SHA-256 of each file's path) and every expected-refusal case before the
last of them.  ``--target test`` (the project's SMP+ftrace test kernel built
from the older source) is designed for but not implemented yet.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ksplice_tasks import names
from ksplice_tasks.distro import debian
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import cache_root, extract_tarball, locked, write_atomic
from ksplice_tasks.stages.inputs import target_make_vars
from ksplice_tasks.testing import corpus, debian_guest
from ksplice_tasks.tree import deps

REPO = Path(__file__).resolve().parent.parent
VERBOSE = False
TIMES: dict[str, float] = {}


def say(msg: str) -> None:
    print(f"corpus: {msg}", flush=True)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    if VERBOSE:
        print("$ " + " ".join(str(a) for a in argv), flush=True)
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False,
                          **kw)


def source_tree(version: str) -> Path:
    """The pristine linux-source-6.1 tree of ``version``, unpacked once into the cache."""
    pkgs = debian.Packages(release="", version=version, image="", headers="",
                           source="linux-source-6.1", dbg=None)
    base = debian.debian_cache(version)
    src = base / "src" / "linux"
    with locked(f"debian-{version.replace(':', '%3a')}"):
        if not src.is_dir():
            debs = debian.download(pkgs, [pkgs.source])
            with tempfile.TemporaryDirectory(prefix=".source.", dir=base) as tmp:
                tree = debian.unpack(debs[pkgs.source], Path(tmp) / "deb")
                extract_tarball(tree / "usr/src/linux-source-6.1.tar.xz", src)
    return src


def create_cmd(jobs: int) -> list[str]:
    return [sys.executable, "-m", "ksplice_tasks.cli", f"-j{jobs}"]


def error_line(text: str) -> str:
    """The line of ksplice-create's output that says why it failed."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for pat in (r"ksplice-create: error", r"error:", r"Error", r"refus", r"undefined"):
        hits = [ln for ln in lines if re.search(pat, ln)]
        if hits:
            return hits[0][:200]
    return lines[-1][:200] if lines else "no output"


def phase_prepare(pair: tuple[str, str, str], jobs: int) -> tuple[debian_guest.DebianKernel, Path]:
    t0 = time.monotonic()
    old_v, new_v, release = pair
    say(f"[prepare 1/4] Debian target {release} ({old_v})")
    kernel = debian_guest.prepare(release)
    if kernel.record.package_version != old_v:
        raise UserError(f"{release} is {kernel.record.package_version} in the archive, "
                        f"not {old_v}")
    say("[prepare 2/4] /proc/kallsyms of the shipped image")
    if not (kernel.orig_config / "kallsyms").is_file():
        debian_guest.capture_kallsyms(kernel)
    say(f"[prepare 3/4] source tree {new_v}")
    new_src = source_tree(new_v)
    say("[prepare 4/4] targeted prebuild")
    res = run([*create_cmd(jobs), "--prebuild", kernel.source])
    if res.returncode != 0:
        raise UserError(f"prebuild failed: {error_line(res.stdout + res.stderr)}")
    TIMES["prepare"] = time.monotonic() - t0
    return kernel, new_src


def builtin(kernel: debian_guest.DebianKernel, work: Path) -> frozenset[str]:
    """The .c sources compiled into the image (make -n on the target, cached in ``work``)."""
    dry = work / "make-n.txt"
    if not dry.is_file():
        argv = deps.dry_run_argv(kernel.source, target_make_vars(kernel.orig_config))
        res = run(argv)
        if "-D__KERNEL__" not in res.stdout:
            raise UserError(f"make -n listed nothing: {error_line(res.stderr)}")
        write_atomic(dry, res.stdout)
    return corpus.builtin_sources(dry.read_text(), str(kernel.source))


def phase_cut(kernel, new_src: Path, work: Path, limit: int | None):
    t0 = time.monotonic()
    # the pristine older tree: the target's copy holds the prebuild's outputs
    old_src = source_tree(kernel.record.package_version)
    say("[cut 1/3] make -n: which sources the image compiles")
    built = builtin(kernel, work)
    say(f"[cut 2/3] diff -rq {old_src} {new_src}")
    paths = corpus.changed_files(old_src, new_src)
    say(f"[cut 3/3] classify {len(paths)} changed files")
    all_cases, patches = corpus.cut(old_src, new_src, paths, built)
    (work / "patches").mkdir(exist_ok=True)
    for name, text in patches.items():
        write_atomic(work / "patches" / f"{name}.patch", text)
    chosen = corpus.sample(all_cases, limit)
    counts = {k: sum(c.kind == k for c in all_cases) for k in corpus.KINDS}
    say("cut: " + ", ".join(f"{k} {n}" for k, n in counts.items())
        + f"; sampled {len(chosen)} ({sum(c.kind == 'code' for c in chosen)} code)")
    TIMES["cut"] = time.monotonic() - t0
    return all_cases, chosen


def phase_create(kernel, cases: list[corpus.Case], work: Path, jobs: int) -> None:
    t0 = time.monotonic()
    out = work / "updates"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for i, c in enumerate(cases, 1):
        say(f"[create {i}/{len(cases)}] {c.path} ({c.kind})")
        t1 = time.monotonic()
        res = run([*create_cmd(jobs), f"--patch={work / 'patches' / (c.name + '.patch')}",
                   f"--config={kernel.orig_config}", kernel.source], cwd=out)
        c.create_seconds = round(time.monotonic() - t1, 1)
        text = res.stdout + res.stderr
        (work / "logs").mkdir(exist_ok=True)
        write_atomic(work / "logs" / f"{c.name}.create.log", text)
        m = re.search(rf"Ksplice update tarball written to ({names.TARBALL_RE.pattern})",
                      res.stdout)
        c.created = res.returncode == 0 and m is not None
        if c.created:
            c.tarball = str(out / m.group(1))
        else:
            c.reason = "create: " + error_line(text)
        say(f"  {'created' if c.created else 'refused'} in {c.create_seconds:.0f} s"
            + ("" if c.created else f": {c.reason}"))
    TIMES["create"] = time.monotonic() - t0


def phase_boot(kernel, cases: list[corpus.Case], work: Path) -> None:
    t0 = time.monotonic()
    todo = [c for c in cases if c.created]
    if not todo:
        return
    manifest = work / "manifest.json"
    write_atomic(manifest, json.dumps([[c.name, c.tarball] for c in todo]))
    say(f"[boot 1/1] {kernel.release} with {len(todo)} updates")
    script = ("dmesg -n 1\n"
              f"chroot /host {sys.executable} -m ksplice_tasks.testing.corpus guest {manifest}\n")
    script = f"export PYTHONPATH={REPO}\n" + script
    res = kernel.boot(script, hostfs=True, timeout=120 + 30 * len(todo))
    write_atomic(work / "guest.log", res.output)
    results, crashed = corpus.parse_guest(res.guest_output)
    for c in todo:
        r = results.get(c.name)
        if r is None:
            c.reason = ("the guest died in this case" if c.name == crashed
                        else "not run (the guest stopped earlier)")
            continue
        c.applied, c.undone, c.log = r["applied"], r["undone"], r["log"]
        c.reason = r["reason"] or ("kernel log: " + r["log"][0] if r["log"] else "")
    TIMES["boot"] = time.monotonic() - t0


def report(all_cases, cases, work: Path, meta: dict) -> None:
    rows = corpus.table(cases)
    tot = corpus.totals(cases, all_cases)
    lines = [f"# corpus {meta['pair']} on {meta['target']}", "", *rows, "",
             "## totals", "", "```", json.dumps(tot, indent=1), "```", "",
             "## wall seconds", "", "```", json.dumps(meta["seconds"], indent=1), "```", ""]
    write_atomic(work / "report.md", "\n".join(lines))
    write_atomic(work / "report.json", corpus.to_json(cases, all_cases, meta))
    print("\n".join(rows))
    print(json.dumps(tot, indent=1))
    print(json.dumps(meta["seconds"]))
    say(f"report: {work / 'report.md'} and report.json")


def main(argv: list[str] | None = None) -> int:
    global VERBOSE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", default="170-176", help="170-176 (default) or 176-187")
    p.add_argument("--limit", type=int, default=None,
                   help="the first N code fixes of the stable sample order (default: all)")
    p.add_argument("--target", default="debian", help="debian (Debian's shipped image)")
    p.add_argument("-j", "--jobs", type=int, default=2)
    p.add_argument("-v", "--verbose", action="store_true", help="show the commands run")
    args = p.parse_args(argv)
    VERBOSE = args.verbose
    os.environ["PYTHONPATH"] = str(REPO)   # ksplice-create and the guest use this checkout
    try:
        if not Path(corpus.__file__).resolve().is_relative_to(REPO):
            raise UserError(f"ksplice_tasks comes from {corpus.__file__}, not this checkout: "
                            f"run with PYTHONPATH={REPO}")
        if args.pair not in corpus.PAIRS:
            raise UserError(f"unknown --pair {args.pair!r} (have: {', '.join(corpus.PAIRS)})")
        if args.target != "debian":
            raise UserError(f"--target {args.target!r} is not implemented (have: debian)")
        if args.limit is not None and args.limit < 1:
            raise UserError(f"--limit must be a positive number, not {args.limit}")
        t0 = time.monotonic()
        pair = corpus.PAIRS[args.pair]
        work = cache_root() / "corpus" / f"{args.pair}-{args.target}"
        work.mkdir(parents=True, exist_ok=True)
        kernel, new_src = phase_prepare(pair, args.jobs)
        all_cases, cases = phase_cut(kernel, new_src, work, args.limit)
        phase_create(kernel, cases, work, args.jobs)
        phase_boot(kernel, cases, work)
        TIMES["total"] = time.monotonic() - t0
        meta = {"pair": args.pair, "versions": list(pair[:2]), "target": args.target,
                "release": kernel.release, "limit": args.limit,
                "commit": run(["git", "-C", REPO, "rev-parse", "HEAD"]).stdout.strip(),
                "seconds": {k: round(v, 1) for k, v in TIMES.items()}}
        report(all_cases, cases, work, meta)
    except UserError as e:
        print(f"corpus: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("corpus: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
