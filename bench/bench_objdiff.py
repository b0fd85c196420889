# SPDX-License-Identifier: GPL-2.0-only
"""Time objdiff and the object passes against the time to compile the objects.

    python bench/bench_objdiff.py                       # the unit fixture snippets
    python bench/bench_objdiff.py --kbuild O_DIR fs/proc/base.o kernel/fork.o

With --kbuild, each object is recompiled from its Kbuild ``.cmd`` line (with
``-ffunction-sections -fdata-sections`` added, objtool left out) into a
private temp dir; the build dir is not touched.  Prints one line per object
and the ratio diff+passes / compile.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ksplice_tasks.names import POST, PRE, side_suffix, symbol_suffix, tag_infix  # noqa: E402
from ksplice_tasks.obj.elfread import read_object  # noqa: E402
from ksplice_tasks.obj.objdiff import ObjdiffRefusal, diff_objects  # noqa: E402
from ksplice_tasks.obj.objmanip import globalize, keep_helper, keep_primary  # noqa: E402
from ksplice_tasks.tree import cmdfile  # noqa: E402

FIX = ROOT / "tests" / "unit" / "objfixtures"
TAG = "0bench"
FLAGS = ["-O2", "-mcmodel=kernel", "-mfentry", "-pg", "-fno-PIE", "-fno-pic",
         "-ffunction-sections", "-fdata-sections"]


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def run_passes(pre: Path, post: Path) -> float:
    """objdiff + keep-primary + keep-helper + globalize, seconds."""
    t = time.perf_counter()
    try:
        d = diff_objects(pre, post)
    except ObjdiffRefusal:
        return time.perf_counter() - t
    keep = d.keep or []
    if keep:
        o, _ = keep_primary(read_object(post), keep, tag_infix(TAG), side_suffix(POST),
                            d.renames, d.new_data)
        globalize(o, symbol_suffix(TAG, POST))
    o, _ = keep_helper(read_object(pre), tag_infix(TAG), side_suffix(PRE))
    globalize(o, symbol_suffix(TAG, PRE))
    return time.perf_counter() - t


def bench_fixtures(tmp: Path) -> list[tuple[str, float, float]]:
    rows = []
    for case in sorted(p for p in FIX.iterdir() if (p / "expect.json").exists()):
        objs = []
        t = time.perf_counter()
        for v in ("pre", "post"):
            d = tmp / v
            d.mkdir(exist_ok=True)
            (d / f"{case.name}.c").write_bytes((case / f"{v}.c").read_bytes())
            subprocess.run(["gcc", *FLAGS, f"-I{FIX}", "-c", f"{case.name}.c"], cwd=d,
                           check=True)
            objs.append(d / f"{case.name}.o")
        compile_s = time.perf_counter() - t
        rows.append((case.name, compile_s, run_passes(*objs)))
    return rows


def kbuild_command(kbuild: Path, obj: str, out: Path) -> list[str]:
    cmd = cmdfile.read(kbuild, obj)
    if cmd is None or not cmd.commands():
        sys.exit(f"bench: no Kbuild command for {obj} in {kbuild}")
    argv = cmd.commands()[0]  # the compiler; objtool left out
    i = argv.index("-o")
    argv[i + 1] = str(out)
    argv = [a for a in argv if not a.startswith("-Wp,-MMD")]
    return argv[:1] + ["-ffunction-sections", "-fdata-sections"] + argv[1:]


def bench_kbuild(kbuild: Path, objs: list[str], tmp: Path) -> list[tuple[str, float, float]]:
    rows = []
    for obj in objs:
        out = tmp / Path(obj).name
        argv = kbuild_command(kbuild, obj, out)
        t = time.perf_counter()
        subprocess.run(argv, cwd=kbuild, check=True)
        compile_s = time.perf_counter() - t
        rows.append((obj, compile_s, run_passes(out, out)))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kbuild", type=Path, help="a Kbuild O= directory with .cmd files")
    ap.add_argument("objects", nargs="*")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ksplice-bench-") as tmp:
        if args.kbuild:
            rows = bench_kbuild(args.kbuild.resolve(), args.objects, Path(tmp))
        else:
            rows = bench_fixtures(Path(tmp))
    print(f"{'object':40} {'compile s':>10} {'diff+passes s':>14} {'ratio':>8}")
    for name, c, d in rows:
        print(f"{name:40} {c:10.3f} {d:14.4f} {d / c:8.3f}")
    tc, td = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'TOTAL':40} {tc:10.3f} {td:14.4f} {td / tc:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
