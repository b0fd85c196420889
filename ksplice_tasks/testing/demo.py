# SPDX-License-Identifier: GPL-2.0-only
"""The README's first command: the main job, end to end, on the bundled default.

By default the running kernel is **Debian's own shipped binary**, the newest
``linux-image-6.1.0-N-amd64`` in the archive: prepare the target from
Debian's packages (``ksplice-debian-target``), capture its /proc/kallsyms from
one boot (what a user copies from the running machine), do a targeted
prebuild of its ``linux-source-6.1`` with Debian's config, create an update
from the bundled example patch (a change to /proc/loadavg), then boot
Debian's vmlinuz in qemu with the host's root over 9p and, in the guest,
show /proc/loadavg, apply the update with the project's own ksplice-apply,
show it again, list it with ksplice-view, undo it, and show it restored.

``--target test`` does the same on a kernel this project builds from
Debian's source with a small test config (``--variant``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from ksplice_tasks import names
from ksplice_tasks.errors import UserError
from ksplice_tasks.testing import debian_guest, qemu, testkernel


def say(msg: str) -> None:
    print(f"\n### {msg}", flush=True)


def run_create(args: list[str], cwd: Path | None = None) -> float:
    argv = [sys.executable, "-m", "ksplice_tasks.cli", *args]
    print("$ ksplice-create " + " ".join(args), flush=True)
    t0 = time.monotonic()
    rc = subprocess.run(argv, cwd=cwd, check=False).returncode
    if rc != 0:
        raise UserError(f"ksplice-create exited {rc}")
    return time.monotonic() - t0


GUEST_SCRIPT = """KS="chroot /host {python} -m ksplice_tasks.target.apply"
echo "guest: $(cat /proc/version)"
echo "guest: CPUs online: $(cat /sys/devices/system/cpu/online)"
echo "guest: before: /proc/loadavg says: $(cat /proc/loadavg)"
echo "guest: $ ksplice-apply {tarball}"
$KS apply {tarball} || exit 1
echo "guest: after:  /proc/loadavg says: $(cat /proc/loadavg)"
echo "guest: $ ksplice-view"
$KS view | sed 's/^/guest:   /'
echo "guest: $ ksplice-undo {uid}"
$KS undo {uid} || exit 1
echo "guest: undone: /proc/loadavg says: $(cat /proc/loadavg)"
"""

EXAMPLE = resources.files("ksplice_tasks") / "data" / "example-loadavg.patch"
MARKER = "ksplice-loadavg "


def check_story(res: qemu.BootResult,
                kernel: testkernel.TestKernel | debian_guest.DebianKernel) -> None:
    """The guest ran ``kernel``; before: stock; after apply: the patched text; after undo:
    stock again. UserError naming what differs."""
    if not res.ok:
        raise UserError(f"guest script failed (status {res.status}, "
                        f"timed out: {res.timed_out})\n{res.output[-3000:]}")
    versions = [line[len("guest: "):] for line in res.guest_output.splitlines()
                if line.startswith("guest: Linux version ")]
    if not versions or not kernel.is_running(versions[0]):
        raise UserError(f"the guest's /proc/version is not the kernel's: {kernel.banner()}")
    seen = {}
    for line in res.guest_output.splitlines():
        for stage in ("before:", "after:", "undone:"):
            if line.startswith(f"guest: {stage}"):
                seen[stage] = MARKER in line
    if seen != {"before:": False, "after:": True, "undone:": False}:
        raise UserError(f"the guest did not show before/after/undone as expected: {seen}")


def debian_demo(args: argparse.Namespace) -> None:
    """The Debian flow: target, kallsyms, targeted prebuild, create, boot, apply/view/undo."""
    t0 = time.monotonic()
    say("1/6 the target: Debian's shipped kernel, from Debian's packages")
    kernel = debian_guest.prepare(args.release)
    ksrc, orig = kernel.source, kernel.orig_config
    held = ", ".join(sorted(p.name for p in orig.iterdir() if p.is_file()))
    print(f"kernel {kernel.release}: {kernel.bzimage}\nKERNEL_SOURCE: {ksrc}\n"
          f"ORIG_CONFIG: {orig} ({held})")

    say("2/6 the running kernel's symbols: /proc/kallsyms, read as root in one boot")
    if (orig / "kallsyms").is_file():
        print(f"have {orig / 'kallsyms'}")
    else:
        print(f"wrote {debian_guest.capture_kallsyms(kernel)}")

    extra = [f"-j{args.jobs}"] if args.jobs else []
    extra += ["-v"] if args.verbose else []
    say("3/6 targeted prebuild: make prepare, the config's object inventory, the include index")
    first = run_create(["--prebuild", *extra, str(ksrc)])
    again = run_create(["--prebuild", str(ksrc)])
    print(f"prebuild: {first:.1f} s, rerun: {again:.2f} s")

    say("4/6 create an update from the bundled example patch")
    tarball = create_example(ksrc, [], extra)

    say("5/6 boot Debian's vmlinuz in qemu (TCG): apply, look, undo, look")
    res = boot_story(kernel, tarball)
    say(f"6/6 done in {time.monotonic() - t0:.0f} s")
    print(f"Debian's {kernel.release} changed behaviour and changed back, without a reboot "
          f"(guest: {res.seconds:.1f} s).")


def create_example(ksrc: Path, config: list[str], extra: list[str]) -> Path:
    """Create the bundled example's update into the cache's demo-output, then rerun it
    (a no-op); print both times and return the tarball."""
    out = testkernel.cache_root() / "demo-output"
    out.mkdir(exist_ok=True)
    with resources.as_file(EXAMPLE) as patch:
        print(patch.read_text(), end="")
        made = run_create([f"--patch={patch}", *config, *extra, str(ksrc)], out)
        rerun = run_create([f"--patch={patch}", *config, str(ksrc)], out)
    tarball = max((p for p in out.iterdir() if names.tarball_id(p.name)),
                  key=lambda p: p.stat().st_mtime)
    print(f"create: {made:.1f} s, rerun: {rerun:.2f} s -> {tarball}")
    return tarball


def boot_story(kernel: testkernel.TestKernel | debian_guest.DebianKernel,
               tarball: Path) -> qemu.BootResult:
    """Boot ``kernel`` with the host's root over 9p; apply, look, view, undo, look; checked."""
    uid = names.tarball_id(tarball.name)
    script = GUEST_SCRIPT.format(python=sys.executable, tarball=tarball, uid=uid)
    res = kernel.boot(script, hostfs=True, timeout=300)
    print(res.guest_output.strip())
    check_story(res, kernel)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="./run demo", description=__doc__.splitlines()[0])
    p.add_argument("--target", default="debian", choices=("debian", "test"),
                   help="debian: Debian's shipped kernel (default); test: a test kernel "
                        "built here")
    p.add_argument("--release", default=None,
                   help="with --target debian: the release, e.g. 6.1.0-57-amd64 "
                        "(default: the newest in the archive)")
    p.add_argument("--variant", default="smp", choices=sorted(testkernel.VARIANTS),
                   help="with --target test: the test config")
    p.add_argument("-j", "--jobs", type=int, default=None)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.target == "debian":
        try:
            debian_demo(args)
        except UserError as e:
            print(f"demo: error: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        say(f"1/4 the running kernel: Debian linux-source-6.1, test config {args.variant!r}")
        kernel = testkernel.build_test_kernel(args.variant, jobs=args.jobs, verbose=args.verbose)
        print(f"kernel {kernel.release}: {kernel.bzimage}\nORIG_CONFIG: {kernel.orig_config}")

        say("2/5 prebuild: pre build with section flags, post tree as hard links")
        ksrc, orig = testkernel.prebuild_tree(kernel, "demo")
        extra = [f"-j{args.jobs}"] if args.jobs else []
        extra += ["-v"] if args.verbose else []
        first = run_create(["--prebuild", f"--config={orig}", *extra, str(ksrc)])

        say("3/5 prebuild again: nothing changed, so nothing is redone")
        again = run_create(["--prebuild", f"--config={orig}", str(ksrc)])
        print(f"prebuild: {first:.1f} s, rerun: {again:.2f} s")

        say("4/5 create an update from the bundled example patch")
        tarball = create_example(ksrc, [f"--config={orig}"], extra)

        say("5/5 boot the running kernel in qemu (TCG): apply, look, undo, look")
        res = boot_story(kernel, tarball)
        print(f"\nDemo done: the running kernel changed behaviour and changed back, "
              f"without a reboot (guest: {res.seconds:.1f} s).")
    except UserError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
