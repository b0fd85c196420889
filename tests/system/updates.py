# SPDX-License-Identifier: GPL-2.0-only
"""The updates the apply tests need, made by the shipped pipeline.

A test update that a user could make is made the user's way: a patch, then
``ksplice-create`` on the tests' prebuilt tree (:func:`create_update`).

Two refusal tests need updates that no correct tree can produce: one whose
pre object was compiled from source the running kernel was not built from,
and one compiled with another test config's recipe. For those, and only for
the compile, :func:`build_from_objects` reruns the kernel's own recipe (from
its Kbuild ``.cmd`` file) with the section flags; every later step is the
pipeline's own stage functions (objdiff, the passes, collect, the tables,
modcommon, Kbuild of kmodsrc, the tarball) in a private work directory.
"""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

from helpers import Prebuilt, create, exit_code, tarball_from

import ksplice_tasks
from ksplice_tasks import artifacts, names
from ksplice_tasks.files import write_atomic
from ksplice_tasks.obj.kernel_sections import LOADER_SYMBOLS
from ksplice_tasks.stages import collect, extract, kmod, package
from ksplice_tasks.stages.layout import CreateLayout
from ksplice_tasks.testing.testkernel import TestKernel
from ksplice_tasks.tree import cmdfile, kbuild

PATCH_OPTS = ("-p1",)

# The guest's ksplice-apply/view/undo: this checkout's code, over the host's root (9p).
ROOT = Path(ksplice_tasks.__file__).resolve().parent.parent
GUEST_KS = (f"chroot /host env PYTHONPATH={ROOT} TMPDIR=/run {sys.executable}"
            " -m ksplice_tasks.target.apply")


# msleep() in kernel/time/timer.c: the function the code_busy and run-pre
# refusal tests patch (a sleeper sits in it).
MSLEEP_LINE = "\tunsigned long timeout = msecs_to_jiffies(msecs) + 1;\n\n\twhile (timeout)\n"


def msleep_post(src: str, timeout_extra: int = 2) -> str:
    """``src`` (kernel/time/timer.c) with msleep()'s ``+ 1`` timeout made ``+ timeout_extra``."""
    assert MSLEEP_LINE in src
    return src.replace(MSLEEP_LINE, MSLEEP_LINE.replace("+ 1;", f"+ {timeout_extra};"))


def source_patch(rel: str, pre_text: str, post_text: str) -> str:
    """A ``-p1`` unified diff of one tree-relative source file."""
    return "".join(difflib.unified_diff(pre_text.splitlines(keepends=True),
                                        post_text.splitlines(keepends=True),
                                        f"a/{rel}", f"b/{rel}"))


def create_update(pb: Prebuilt, rel: str, post_text: str, workdir: Path) -> Path:
    """``ksplice-create --patch`` of the change from the pristine ``rel`` to ``post_text``."""
    workdir.mkdir(parents=True, exist_ok=True)
    pre_text = (pb.kernel.source / rel).read_text()
    patch = workdir / f"{Path(rel).stem}.patch"
    patch.write_text(source_patch(rel, pre_text, post_text))
    res = create(pb, patch, workdir)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    return tarball_from(res.stdout, workdir)


def compile_object(kernel: TestKernel, obj: str, source: Path, out: Path) -> Path:
    """Rerun the kernel's recipe for ``obj`` on ``source``, with section flags, into ``out``.

    The dependency-file option is dropped so the cached build stays as it was.
    """
    recipe = cmdfile.read(kernel.build, obj)
    assert recipe is not None and recipe.commands(), f"no Kbuild recipe for {obj}"
    for argv in recipe.commands():
        argv = [a for a in argv if not a.startswith("-Wp,-MMD")]
        if Path(argv[0]).name.endswith("gcc"):
            i = argv.index("-o")
            argv[i + 1] = str(out)
            argv[-1] = str(source)
            argv[1:1] = kbuild.SECTION_FLAGS.split()
        else:
            argv = [str(out) if a == obj else a for a in argv]
        subprocess.run(argv, cwd=kernel.build, check=True, capture_output=True)
    return out


def build_from_objects(kernel: TestKernel, obj: str, post_text: str, workdir: Path, *,
                       pre_text: str | None = None, compile_with: TestKernel | None = None,
                       jobs: int = 2) -> Path:
    """An update for ``kernel`` from objects this test compiles; returns its tarball.

    ``pre_text`` (default: the pristine source) is the source the pre object
    is compiled from; ``compile_with`` compiles both objects with another test
    config's recipe. The System.map, the modules' Kbuild tree and the update
    id's config are ``kernel``'s (the config is ``compile_with``'s when given,
    so the id differs from an update of the same patch built correctly).
    """
    rel_src = str(Path(obj).with_suffix(".c"))
    pristine = (kernel.source / rel_src).read_text()
    pre_text = pristine if pre_text is None else pre_text
    cc = compile_with or kernel
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "src"
    pre_src, post_src = src / "pre" / Path(rel_src).name, src / "post" / Path(rel_src).name
    write_atomic(pre_src, pre_text)
    write_atomic(post_src, post_text)
    pre_o = compile_object(cc, obj, pre_src, workdir / "pre.o")
    post_o = compile_object(cc, obj, post_src, workdir / "post.o")

    patch_text = source_patch(rel_src, pre_text, post_text)
    patch = write_atomic(workdir / "patch", patch_text)
    smap = kernel.orig_config / "System.map"
    uid = package.update_id(patch_text.encode(), PATCH_OPTS,
                            (cc.orig_config / ".config").read_bytes(), smap.read_bytes())
    work = CreateLayout(workdir / "create")
    paths = work.object(obj)
    extract.diff_object(pre_o, post_o, obj, paths, rel_src, patch_text)
    # With another recipe the objects may call __fentry__ although the running
    # kernel has no ftrace: only what it exports is left to its module loader.
    loader = {s for s in LOADER_SYMBOLS if s in kmod.read_system_map(smap)}
    extract.extract_object(pre_o, post_o, obj, paths, loader)
    collect.collect([paths], work)
    kmod.write_tables(work, smap)
    kmod.assemble_tables(work)
    kmod.write_modcommon(work, smap, uid)
    kmod.build(work, kernel.build, uid, jobs=jobs)
    kmod.rmsyms_check(work, kernel.build)
    write_atomic(work.post_build, artifacts.POST_BUILD.dumps(
        artifacts.PostBuild("test", [obj], [obj], 0.0, 0)))
    return package.write_tarball(workdir, work, patch,
                                 [p.name for p in kmod.all_kmodsrc_files()])


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


# tests/patches/two-files-new-function.patch: fs/proc/version.c gains a global
# function ksplice_two_file_value() (returns 7) that loadavg_proc_show() in
# fs/proc/loadavg.c calls; /proc/loadavg ends in " two7" while it is applied.
TWO_FILES_STEPS = {"before": False, "after": True, "reversed": False, "after2": True,
                   "restored": False}


def two_files_script(ks: str, tarball: Path, update_id: str) -> str:
    """Guest shell: the two-file update applied, reversed, re-applied and undone."""
    m = f"/sys/module/{names.sysfs_module(update_id)}/ksplice"
    return f"""KS="{ks}"
mark() {{ echo "@@$1"; }}
mark before; cat /proc/loadavg
mark apply; $KS apply {tarball} 2>&1; echo "rc=$?"
mark after; cat /proc/loadavg
mark reverse; echo reverse > {m}/stage; echo "rc=$?"
mark reversed; cat /proc/loadavg
mark reapply; echo apply > {m}/stage; echo "rc=$?"
mark after2; cat /proc/loadavg
mark undo; $KS undo {update_id} 2>&1; echo "rc=$?"
mark restored; cat /proc/loadavg
mark left; ls /sys/module | grep ksplice; echo end
mark log; dmesg | grep -E 'WARNING|BUG|Oops|no value for'; echo end
mark end
"""


def check_two_files(g: dict[str, str]) -> None:
    """Assert the guest saw " two7" exactly while the update was applied, and a clean undo."""
    seen = {step: g[step].endswith(" two7") for step in TWO_FILES_STEPS}
    assert seen == TWO_FILES_STEPS, {s: g[s] for s in TWO_FILES_STEPS}
    for step in ("apply", "reverse", "reapply", "undo"):
        assert exit_code(g[step]) == 0, (step, g[step])
    assert g["left"] == "end" and g["log"] == "end", (g["left"], g["log"])
