# SPDX-License-Identifier: GPL-2.0-only
"""A small, test-only builder of real updates for one kernel source file.

It stands in for the create pipeline so the apply tests can run before it
lands: compile the unmodified source (pre) and an edited copy (post) with the
cached test kernel's own recipe plus the section flags, diff them, run the
object passes, encode the tables, build the two modules with kmod and pack
the tarball layout ``ksplice-<id>/{patch, ksplice-<id>.ko,
ksplice-<id>-helper.ko, debug/}``.
"""

from __future__ import annotations

import difflib
import re
import shlex
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ksplice_tasks.encode import ksplice_tables as metadata
from ksplice_tasks.obj import objdiff, objmanip
from ksplice_tasks.obj.elfread import read_object
from ksplice_tasks.obj.elfwrite import write_object
from ksplice_tasks.stages import kmod
from ksplice_tasks.stages.extract import LOADER_SYMBOLS
from ksplice_tasks.testing.testkernel import TestKernel

SECTION_FLAGS = ["-ffunction-sections", "-fdata-sections"]
# Symbols the module loader must resolve because tables it consumes at load
# time refer to the call sites (ftrace's __mcount_loc): stripping them would
# make ftrace find a call to nowhere and shut itself down.


def recipe(build: Path, obj: str) -> list[list[str]]:
    """The commands Kbuild ran for ``obj`` (relative to the O= build dir), from its .cmd."""
    o = Path(obj)
    text = (build / o.parent / f".{o.name}.cmd").read_text()
    head = f"cmd_{obj} := "
    line = next(ln for ln in text.splitlines() if ln.startswith(head))
    return [shlex.split(part) for part in line[len(head):].split(";") if part.strip()]


def compile_object(kernel: TestKernel, obj: str, source: Path, out: Path) -> Path:
    """Rerun the kernel's recipe for ``obj`` on ``source``, with section flags, into ``out``.

    The dependency-file option is dropped so the cached build stays as it was.
    """
    cmds = recipe(kernel.build, obj)
    for argv in cmds:
        argv = [a for a in argv if not a.startswith("-Wp,-MMD")]
        if Path(argv[0]).name.endswith("gcc"):
            i = argv.index("-o")
            argv[i + 1] = str(out)
            argv[-1] = str(source)
            argv[1:1] = SECTION_FLAGS
        else:
            argv = [str(out) if a == obj else a for a in argv]
        subprocess.run(argv, cwd=kernel.build, check=True, capture_output=True)
    return out


@dataclass(frozen=True)
class Update:
    """A built update: its id, tarball and what it replaces."""

    id: str
    tarball: Path
    functions: tuple[str, ...]
    primary: Path
    helper: Path


def _tag(obj: str, update_id: str) -> str:
    return "____" + re.sub(r"[^A-Za-z0-9]", "_", Path(obj).stem) + "_" + update_id


def _sizes(obj_path: Path, tag: str, suffix: str, only: set[str] | None = None
           ) -> list[metadata.SizeInput]:
    _o, recs = objmanip.sizelist(read_object(obj_path))
    end = tag + suffix
    out = []
    for r in recs:
        if not r.name.endswith(end) or not r.size:
            continue
        name = r.name[: -len(end)]
        if only is None or name in only:
            out.append(metadata.SizeInput(name, r.size, r.name + "_global"))
    return out


def build_update(kernel: TestKernel, obj: str, post_text: str, update_id: str,
                 workdir: Path, *, pre_text: str | None = None,
                 compile_with: TestKernel | None = None, jobs: int = 2) -> Update:
    """Build ``ksplice-<id>.tar.gz`` replacing what ``post_text`` changes in ``obj``'s source.

    ``pre_text`` (default: the pristine source) lets a test build an update
    from source the running kernel was not built from; ``compile_with`` compiles
    both objects with another test config's recipe (the modules and System.map
    are still ``kernel``'s).
    """
    metadata.check_id(update_id)
    workdir.mkdir(parents=True, exist_ok=True)
    source = kernel.source / Path(obj).with_suffix(".c")
    pre_src, post_src = source, workdir / "post" / source.name
    post_src.parent.mkdir(exist_ok=True)
    post_src.write_text(post_text)
    if pre_text is not None:
        pre_src = workdir / "pre" / source.name
        pre_src.parent.mkdir(exist_ok=True)
        pre_src.write_text(pre_text)
    cc = compile_with or kernel
    pre = compile_object(cc, obj, pre_src, workdir / "pre.o")
    post = compile_object(cc, obj, post_src, workdir / "post.o")

    d = objdiff.diff_objects(pre, post)
    assert d.changed, f"no changed function in {obj}"
    tag = _tag(obj, update_id)
    pobj, precs = objmanip.keep_primary(read_object(post), d.keep, tag, "_post", d.renames,
                                        d.new_data)
    smap = kmod.read_system_map(kernel.orig_config / "System.map")
    loader = [r for r in precs if r.symbol in LOADER_SYMBOLS and r.symbol in smap]
    precs = [r for r in precs if r not in loader]
    pobj = objmanip.restore_relocs(pobj, loader)
    pobj, _ = objmanip.globalize(pobj, "_post")
    write_object(pobj, workdir / "primary.o")
    hobj, hrecs = objmanip.keep_helper(read_object(pre), tag, "_pre")
    hobj, _ = objmanip.globalize(hobj, "_pre")
    write_object(hobj, workdir / "helper.o")

    old = {post_name: d.renames.get(post_name, post_name) for post_name in d.changed}
    psizes = _sizes(workdir / "primary.o", tag, "_post", set(d.keep))
    ptables = metadata.ModuleTables(
        relocs=metadata.relocs_from_records(precs),
        sizes=psizes,
        patches=[metadata.PatchInput(old[n], n + tag + "_post_global") for n in d.changed],
    )
    htables = metadata.ModuleTables(relocs=metadata.relocs_from_records(hrecs),
                                    sizes=_sizes(workdir / "helper.o", tag, "_pre"))
    primary, helper = kmod.build_update_modules(
        workdir / "kmod", kernel.build, update_id, smap,
        kmod.ModuleInputs(workdir / "primary.o", ptables),
        kmod.ModuleInputs(workdir / "helper.o", htables), jobs=jobs)

    top = workdir / "pkg" / f"ksplice-{update_id}"
    if top.exists():
        shutil.rmtree(top)
    (top / "debug").mkdir(parents=True)
    pre_lines = pre_src.read_text().splitlines(keepends=True)
    (top / "patch").write_text("".join(difflib.unified_diff(
        pre_lines, post_text.splitlines(keepends=True), f"a/{source.name}", f"b/{source.name}")))
    shutil.copy(primary, top / primary.name)
    shutil.copy(helper, top / helper.name)
    for f in ("pre.o", "post.o", "primary.o", "helper.o"):
        shutil.copy(workdir / f, top / "debug" / f)
    tarball = workdir / f"ksplice-{update_id}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(top, arcname=top.name)
    return Update(update_id, tarball, tuple(old[n] for n in d.changed), primary, helper)


SLEEPER_C = r"""// SPDX-License-Identifier: GPL-2.0
/* Test module: a kthread that sleeps in msleep() once, then says so. */
#include <linux/delay.h>
#include <linux/kthread.h>
#include <linux/module.h>

static int ms = 5000;
module_param(ms, int, 0444);
static int done;
module_param(done, int, 0444);

static int ksplice_sleeper_fn(void *arg)
{
	msleep(ms);
	WRITE_ONCE(done, 1);
	return 0;
}

static int __init ksplice_sleeper_init(void)
{
	return PTR_ERR_OR_ZERO(kthread_run(ksplice_sleeper_fn, NULL, "ksplice_sleeper"));
}
module_init(ksplice_sleeper_init);
MODULE_LICENSE("GPL");
"""


def build_sleeper(kernel: TestKernel, workdir: Path) -> Path:
    """``msleeper.ko``: parks a kthread ("ksplice_sleeper") inside msleep() for ``ms`` ms."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "msleeper.c").write_text(SLEEPER_C)
    (workdir / "Kbuild").write_text("obj-m := msleeper.o\n")
    subprocess.run(["make", "-C", str(kernel.build), f"M={workdir}", "modules"], check=True,
                   capture_output=True)
    return workdir / "msleeper.ko"
