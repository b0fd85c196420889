#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""The corpus benchmark: real fixes between two Debian linux-source-6.1 versions, end to end.

    PYTHONPATH=. python bench/corpus.py [--pair 170-176|176-187] [--limit N]
                                        [--target debian|test] [-j N] [-v]

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
SHA-256 of each file's path) and every expected-refusal case (data, init,
noop: few per pair).  A report is also kept as ``report-<commit>.{md,json}``,
so a run before and one after a change can be compared.  ``--target test``
runs on the project's lp test kernel (SMP+KASLR, ftrace, livepatch, ORC,
tinyconfig-based) built from the older version's source: its config compiles
far fewer of the changed files, so most cases are ``notbuilt`` there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

try:
    from ksplice_tasks.errors import UserError
    from ksplice_tasks.testing import corpus, corpus_run
except ImportError as e:
    sys.exit(f"corpus: error: {e}: run it from the checkout with PYTHONPATH={REPO}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", default="170-176", help="170-176 (default) or 176-187")
    p.add_argument("--limit", type=int, default=None,
                   help="the first N code fixes of the stable sample order (default: all)")
    p.add_argument("--target", default="debian",
                   help="debian (Debian's shipped image of the older version, default) or test "
                        "(the project's lp test kernel built from the older source)")
    p.add_argument("-j", "--jobs", type=int, default=2)
    p.add_argument("-v", "--verbose", action="store_true", help="show the commands run")
    args = p.parse_args(argv)
    try:
        if args.pair not in corpus.PAIRS:
            raise UserError(f"unknown --pair {args.pair!r} (have: {', '.join(corpus.PAIRS)})")
        if args.target not in ("debian", "test"):
            raise UserError(f"unknown --target {args.target!r} (have: debian, test)")
        if args.limit is not None and args.limit < 1:
            raise UserError(f"--limit must be a positive number, not {args.limit}")
        if not Path(corpus.__file__).resolve().is_relative_to(REPO):
            raise UserError(f"ksplice_tasks comes from {corpus.__file__}, not this checkout: "
                            f"run with PYTHONPATH={REPO}")
        if args.jobs < 1:
            raise UserError(f"-j must be a positive number, not {args.jobs}")
        t0 = time.monotonic()
        commit = corpus_run.commit()   # the code measured, taken before it can change
        r = corpus_run.Run(corpus_run.workdir(args.pair, args.target), jobs=args.jobs,
                           verbose=args.verbose)
        kernel, old_src, new_src = corpus_run.prepare(r, args.pair, args.target)
        all_cases = corpus_run.cut(r, kernel, old_src, new_src)
        cases = corpus.sample(all_cases, args.limit)
        r.say("cut: " + ", ".join(f"{k} {sum(c.kind == k for c in all_cases)}"
                                  for k in corpus.KINDS)
              + f"; sampled {len(cases)} ({sum(c.kind == 'code' for c in cases)} code)")
        headers = [c.path for c in all_cases if c.kind == "header"]
        sources = [c.path for c in all_cases if c.kind in corpus.BUILT_KINDS]
        corpus_run.create(r, kernel, cases,
                          corpus_run.Trees(old_src, new_src, headers, sources))
        corpus_run.boot(r, kernel, cases)
        r.seconds["total"] = time.monotonic() - t0
        meta = {"pair": args.pair, "versions": list(corpus.PAIRS[args.pair][:2]),
                "target": args.target, "release": kernel.release, "limit": args.limit,
                "commit": commit,
                "seconds": {k: round(v, 1) for k, v in r.seconds.items()}}
        print(corpus_run.report(r, all_cases, cases, meta))
        r.say(f"report: {r.work / 'report.md'} and report.json")
    except (UserError, OSError) as e:
        print(f"corpus: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("corpus: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
