# SPDX-License-Identifier: GPL-2.0-only
"""The README's first command: the main job, end to end, on the bundled default.

Debian's linux-source-6.1 with the project's SMP+KASLR test config: build the
running kernel, prebuild a KERNEL_SOURCE copy with ksplice-create, rerun it
to show that nothing is redone, then boot the running kernel in qemu with
the host's root over 9p and run the project's own Python inside the guest.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from . import testkernel
from .errors import UserError


def say(msg: str) -> None:
    print(f"\n### {msg}", flush=True)


def run_create(args: list[str]) -> float:
    argv = [sys.executable, "-m", "ksplice_tasks.cli", *args]
    print("$ ksplice-create " + " ".join(args), flush=True)
    t0 = time.monotonic()
    rc = subprocess.run(argv, check=False).returncode
    if rc != 0:
        raise UserError(f"ksplice-create exited {rc}")
    return time.monotonic() - t0


GUEST_SCRIPT = """echo "guest: $(cat /proc/version)"
echo "guest: CPUs online: $(cat /sys/devices/system/cpu/online)"
chroot /host {python} -c 'import ksplice_tasks, sys; print("guest: Python", sys.version.split()[0])'
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="./run demo", description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="smp", choices=sorted(testkernel.VARIANTS))
    p.add_argument("-j", "--jobs", type=int, default=None)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        say(f"1/4 the running kernel: Debian linux-source-6.1, test config {args.variant!r}")
        kernel = testkernel.build_test_kernel(args.variant, jobs=args.jobs, verbose=args.verbose)
        print(f"kernel {kernel.release}: {kernel.bzimage}\nORIG_CONFIG: {kernel.orig_config}")

        say("2/4 prebuild: pre build with section flags, post tree as hard links")
        ksrc, orig = testkernel.prebuild_tree(kernel, "demo")
        extra = [f"-j{args.jobs}"] if args.jobs else []
        extra += ["-v"] if args.verbose else []
        first = run_create(["--prebuild", f"--config={orig}", *extra, str(ksrc)])

        say("3/4 prebuild again: nothing changed, so nothing is redone")
        again = run_create(["--prebuild", f"--config={orig}", str(ksrc)])
        print(f"prebuild: {first:.1f} s, rerun: {again:.2f} s")

        say("4/4 boot the running kernel in qemu (TCG) and run our Python in the guest")
        res = kernel.boot(GUEST_SCRIPT.format(python=sys.executable), hostfs=True, timeout=240)
        print(res.guest_output.strip())
        if not res.ok:
            raise UserError(f"guest script failed (status {res.status}, "
                            f"timed out: {res.timed_out})\n{res.output[-2000:]}")
        banner = kernel.banner()
        if banner not in res.guest_output:
            raise UserError(f"the guest's /proc/version is not the built kernel's: {banner}")
        print(f"\nDemo done: boot and guest script took {res.seconds:.1f} s.")
    except UserError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
