# SPDX-License-Identifier: GPL-2.0-only
"""tree/deps.py: make -n's compile commands, the include scan, and which objects a patch reaches."""

from __future__ import annotations

from pathlib import Path

from ksplice_tasks import artifacts
from ksplice_tasks.tree import deps

# Shaped like Kbuild's make -n output (scripts/Makefile.build rule_cc_o_c): each
# compile appears in the command and again in fixdep's saved copy.
FLAGS = ("-nostdinc -I./arch/x86/include -I./arch/x86/include/generated -I./include "
         "-I./include/uapi -include ./include/linux/compiler-version.h "
         "-include ./include/linux/kconfig.h -D__KERNEL__ -O2")


def compile_line(obj: str, src: str, extra: str = "") -> str:
    d = obj.rsplit("/", 1)[0]
    name = obj.rsplit("/", 1)[1]
    cmd = f"gcc-12 -Wp,-MMD,{d}/.{name}.d {FLAGS} {extra} -c -o {obj} {src}"
    return (f"set -e;  echo '  CC      {obj}'; trap 'rm -f {obj}' HUP; {cmd}; "
            f"scripts/basic/fixdep {d}/.{name}.d {obj} '{cmd}' > {d}/.{name}.cmd\n")


DRY_RUN = (compile_line("fs/proc/loadavg.o", "fs/proc/loadavg.c")
           + compile_line("fs/proc/base.o", "fs/proc/base.c")
           + compile_line("drivers/x/y.o", "drivers/x/y.c", "-I /abs/tree/drivers/x/inc")
           + compile_line("lib/gen.o", "lib/gen.c")
           + compile_line("arch/x86/entry/entry_64.o", "arch/x86/entry/entry_64.S")
           # a host program: no -D__KERNEL__
           + "gcc -Wp,-MMD,scripts/.conf.o.d -O2 -c -o scripts/conf.o scripts/conf.c\n")


def make_tree(root: Path) -> Path:
    files = {
        "fs/proc/loadavg.c": '#include <linux/seq_file.h>\n#include "internal.h"\n',
        "fs/proc/base.c": '#include "internal.h"\n#include "sub/local.h"\n',
        "fs/proc/internal.h": "#include <linux/proc_fs.h>\n",
        "fs/proc/sub/local.h": "",
        "fs/other/internal.h": "",
        "drivers/x/y.c": '#include "z.h"\n  #  include <linux/seq_file.h>\n',
        "drivers/x/inc/z.h": "",
        "include/linux/seq_file.h": "#include <linux/proc_fs.h>\n",
        "include/linux/proc_fs.h": "",
        "include/linux/kconfig.h": "",
        "include/linux/compiler-version.h": "",
        "arch/x86/entry/entry_64.S": "#include <asm/thing.h>\n",
        "arch/x86/include/asm/thing.h": "",
        "arch/arm/include/asm/thing.h": "#include <linux/proc_fs.h>\n",
        "kernel/sched/build.c": '#include "fair.c"\n',
        "kernel/sched/fair.c": "#include <linux/proc_fs.h>\n",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_parse_dry_run_keeps_kernel_objects_with_their_include_directories() -> None:
    units = deps.parse_dry_run(DRY_RUN, "/abs/tree")
    assert sorted(units) == ["arch/x86/entry/entry_64.o", "drivers/x/y.o", "fs/proc/base.o",
                             "fs/proc/loadavg.o", "lib/gen.o"]
    u = units["drivers/x/y.o"]
    assert u.source == "drivers/x/y.c"
    assert u.include_dirs == ("arch/x86/include", "arch/x86/include/generated", "include",
                              "include/uapi", "drivers/x/inc")
    assert u.forced == ("include/linux/compiler-version.h", "include/linux/kconfig.h")


def affected(tmp_path: Path, touched: list[str]) -> list[str] | None:
    tree = make_tree(tmp_path)
    units = deps.parse_dry_run(DRY_RUN, "/abs/tree")
    units["drivers/x/y.o"] = deps.CompileUnit(
        "drivers/x/y.c", (*units["drivers/x/y.o"].include_dirs[:-1], "drivers/x/inc"),
        units["drivers/x/y.o"].forced)
    units["kernel/sched/build.o"] = deps.CompileUnit("kernel/sched/build.c", ("include",), ())
    scan = deps.scan_includes(tree)
    return deps.affected_objects(units, scan, touched)[0]


def test_a_c_file_reaches_its_object_and_the_files_including_it(tmp_path: Path) -> None:
    assert affected(tmp_path, ["fs/proc/loadavg.c"]) == ["fs/proc/loadavg.o"]
    assert affected(tmp_path, ["kernel/sched/fair.c"]) == ["kernel/sched/build.o"]


def test_a_private_header_reaches_only_its_directory(tmp_path: Path) -> None:
    # "internal.h" from fs/proc is fs/proc/internal.h, never fs/other/internal.h
    assert affected(tmp_path, ["fs/proc/internal.h"]) == ["fs/proc/base.o", "fs/proc/loadavg.o"]
    assert affected(tmp_path, ["fs/other/internal.h"]) == []
    assert affected(tmp_path, ["fs/proc/sub/local.h"]) == ["fs/proc/base.o"]


def test_a_global_header_reaches_through_other_headers_and_i_directories(
        tmp_path: Path) -> None:
    got = affected(tmp_path, ["include/linux/proc_fs.h"])
    # proc_fs.h <- seq_file.h <- loadavg.c, y.c; <- internal.h <- base.c; <- fair.c <- build.c;
    # lib/gen.c does not exist (generated), so it counts for any global header.
    assert got == ["drivers/x/y.o", "fs/proc/base.o", "fs/proc/loadavg.o",
                   "kernel/sched/build.o", "lib/gen.o"]
    assert affected(tmp_path, ["drivers/x/inc/z.h"]) == ["drivers/x/y.o"]
    # an architecture's header reaches only through that architecture's -I
    assert affected(tmp_path, ["arch/x86/include/asm/thing.h"]) == [
        "arch/x86/entry/entry_64.o", "lib/gen.o"]


def test_a_forced_include_reaches_every_object(tmp_path: Path) -> None:
    got = affected(tmp_path, ["include/linux/kconfig.h"])
    assert got is not None and "fs/proc/loadavg.o" in got and "drivers/x/y.o" in got


def test_anything_but_c_headers_and_asm_needs_a_full_build(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    units = deps.parse_dry_run(DRY_RUN, "/abs/tree")
    objects, why = deps.affected_objects(units, deps.scan_includes(tree), ["fs/proc/Makefile"])
    assert objects is None and "fs/proc/Makefile" in why


def test_the_records_round_trip(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    units = deps.parse_dry_run(DRY_RUN, "/abs/tree")
    scan = deps.scan_includes(tree)
    rec = artifacts.INVENTORY.loads(artifacts.INVENTORY.dumps(deps.inventory_record(units)))
    assert deps.units_from_record(rec) == units
    idx = artifacts.INCLUDES.loads(artifacts.INCLUDES.dumps(deps.index_record(scan)))
    back = deps.scan_from_record(idx)
    assert back.files == scan.files
    assert {k: sorted(v) for k, v in back.by_basename.items()} == {
        k: sorted(v) for k, v in scan.by_basename.items()}


def test_scan_exclusions_keep_the_architecture_in_use(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    units = deps.parse_dry_run(DRY_RUN, "/abs/tree")
    out = deps.scan_exclusions(tree, units)
    assert tree / "arch/arm" in out and tree / "arch/x86" not in out
