# SPDX-License-Identifier: GPL-2.0-only
"""`ksplice-create`: the seed's command line on the same doit task graph as `doit prebuild`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain

from ksplice_tasks import graph
from ksplice_tasks.commands import Interrupted, interrupt_on_signals
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import hold_lock
from ksplice_tasks.reporter import CreateReporter
from ksplice_tasks.stages import package
from ksplice_tasks.stages.inputs import resolve

PROG = "ksplice-create"


class _Parser(argparse.ArgumentParser):
    """argparse, but every usage error is one line and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def create_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Create a Ksplice update (a pair of kernel modules) from a source patch.",
    )
    p.add_argument("--patch", metavar="PATCH_FILE", help="the source patch to apply")
    p.add_argument("--diffext", metavar="EXTENSION",
                   help="take the patch from FILE.EXTENSION files beside FILE")
    p.add_argument("--prebuild", action="store_true",
                   help="only do the pre build and set up the post tree")
    p.add_argument("--full", action="store_true",
                   help="with --prebuild: build every object now (hours for a distribution "
                        "config); by default a never-built tree gets a targeted prebuild "
                        "and each create builds the objects its patch touches")
    p.add_argument("--config", metavar="ORIG_CONFIG",
                   help="directory with the running kernel's .config and System.map "
                        "(default: KERNEL_SOURCE/ksplice)")
    p.add_argument("--postdir", metavar="DIRECTORY",
                   help="directory dedicated to the post tree (default: ORIG_CONFIG/post)")
    p.add_argument("--patch-opt", action="append", metavar="OPTIONS",
                   help="options for patch(1) (default: -p1); repeatable")
    p.add_argument("-j", "--jobs", type=int, metavar="JOBS",
                   help="parallel build jobs (default: $CONCURRENCY_LEVEL or all cores)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the commands run and their output")
    p.add_argument("--apply", action="store_true",
                   help="apply the update to the running kernel once it is built")
    p.add_argument("kernel_source", metavar="KERNEL_SOURCE")
    return p


def create_main(argv: Sequence[str] | None = None) -> int:
    """ksplice-create: 0 on success, 1 for a refused input or a failed task, 2 for usage.

    One run at a time per ORIG_CONFIG: a second one refuses at once with
    ``busy: ...`` (:func:`ksplice_tasks.files.hold_lock`). SIGINT, SIGTERM and
    SIGHUP end the running build's process group, return the post tree to the
    snapshot and exit with 128 + the signal's number.
    """
    interrupt_on_signals()
    args = create_parser().parse_args(argv)
    actions = sum(x is not None and x is not False for x in (args.patch, args.diffext,
                                                             args.prebuild))
    if actions != 1:
        sys.stderr.write(f"{PROG}: error: give exactly one of --patch, --diffext or "
                         f"--prebuild (got {actions})\n")
        return 2
    if args.full and not args.prebuild:
        sys.stderr.write(f"{PROG}: error: --full goes with --prebuild\n")
        return 2
    try:
        settings = resolve(
            args.kernel_source,
            orig=args.config,
            postdir=args.postdir,
            jobs=args.jobs,
            verbose=args.verbose,
            patch=args.patch,
            diffext=args.diffext,
            patch_opts=args.patch_opt,
            full=args.full,
        )
    except UserError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 1
    try:
        lock = hold_lock(settings.layout.lock)
    except UserError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 1
    print("Starting kernel builds (this process might take a long time)...", flush=True)
    if not settings.verbose:
        print(f"For output during this process, run {PROG} with the option -v", flush=True)
    try:
        with lock:
            namespace = graph.namespace(settings, CreateReporter)
            rc = DoitMain(ModuleTaskLoader(namespace)).run(
                ["prebuild" if args.prebuild else "create_update"])
    except Interrupted as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 128 + e.signum
    if rc != 0:
        return 1
    if args.apply and not args.prebuild:
        tarball = package.built_tarball(settings.outdir, settings.layout.create)
        if tarball is None:
            sys.stderr.write(f"{PROG}: error: no update was built\n")
            return 1
        print("Now running ksplice-apply to apply update...", flush=True)
        from ksplice_tasks.target.apply import apply_main

        return apply_main([str(tarball)])
    return 0


if __name__ == "__main__":
    sys.exit(create_main())
