# SPDX-License-Identifier: GPL-2.0-only
"""The C headers ``kmodsrc/`` takes from Python, and the one command that writes them.

::

    python -m ksplice_tasks.encode.headers [--check] [KMODSRC_DIR]

Without ``--check`` each generated header is (re)written in KMODSRC_DIR
(default: the repository's ``kmodsrc/``); with it nothing is written and the
exit status is 1 when a checked-in header differs from what Python makes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ksplice_tasks.encode import abort_causes, ksplice_tables
from ksplice_tasks.files import write_if_changed

COMMAND = "python -m ksplice_tasks.encode.headers"

# Header file name -> the function that renders its whole text.
GENERATED: dict[str, Callable[[], str]] = {
    ksplice_tables.HEADER_NAME: ksplice_tables.render_struct_header,
    abort_causes.HEADER_NAME: abort_causes.render_abort_header,
}


def stale(kmodsrc: Path) -> list[str]:
    """Names of the generated headers in ``kmodsrc`` that are missing or out of date."""
    out = []
    for name, render in GENERATED.items():
        path = kmodsrc / name
        if not path.is_file() or path.read_text() != render():
            out.append(name)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with ``--check`` compare) every generated header; 1 if any is stale."""
    ap = argparse.ArgumentParser(prog="ksplice_tasks.encode.headers",
                                 description="Write the C headers generated from Python.")
    ap.add_argument("--check", action="store_true", help="compare only; write nothing")
    ap.add_argument("kmodsrc", nargs="?", type=Path,
                    default=Path(__file__).resolve().parents[2] / "kmodsrc")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale(args.kmodsrc)
        for name in bad:
            print(f"{args.kmodsrc / name}: stale; run {COMMAND}", file=sys.stderr)
        return 1 if bad else 0
    for name, render in GENERATED.items():
        write_if_changed(args.kmodsrc / name, render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
