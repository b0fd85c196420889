# SPDX-License-Identifier: GPL-2.0-only
"""Boot a test kernel under qemu (TCG) with a busybox initramfs and run a guest script.

The guest's /init mounts the pseudo filesystems, loads the given kernel
modules in order (a distribution kernel has 9p and virtio as modules),
optionally mounts the host's root
read-only over virtio-9p (so the guest can run the project's own Python tools
with `chroot /host`), runs the script, prints its exit status and reboots;
qemu runs with -no-reboot, so the reboot ends it. A host-side timeout kills
qemu whatever the guest does, so a boot never hangs a test.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ksplice_tasks import symbolmap
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import write_atomic

BUSYBOX = Path("/bin/busybox")
EXIT_MARK = "KSPLICE-GUEST-EXIT="
BEGIN_MARK = "KSPLICE-GUEST-BEGIN"
# /init prints the running kernel's _text (from /proc/kallsyms) after this mark,
# so a hang report can undo KASLR; empty without CONFIG_KALLSYMS.
TEXT_MARK = "KSPLICE-GUEST-TEXT="
# boot() appends one line after this mark when the guest ran out of time.
HANG_MARK = "KSPLICE-HANG:"
HOST_MOUNT = "/host"

_INIT_HEAD = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
"""

# The host's root, read-only, with the guest's own pseudo filesystems and a
# writable tmpfs on /run (TMPDIR), so `chroot /host python3 ...` works in the
# guest. The host's /tmp stays visible: test files and CI clones live there.
_INIT_HOSTFS = f"""mkdir -p {HOST_MOUNT}
if mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose hostroot {HOST_MOUNT}; then
    mount -t proc proc {HOST_MOUNT}/proc
    mount -t sysfs sysfs {HOST_MOUNT}/sys
    mount -t devtmpfs devtmpfs {HOST_MOUNT}/dev
    mount -t tmpfs tmpfs {HOST_MOUNT}/run
else
    echo "{EXIT_MARK}125 (9p mount of the host root failed)"
    reboot -f
fi
"""

# Modules packed into the initramfs, loaded in the order given (insmod: no
# modules.dep needed). A module that does not load ends the boot with status 124.
PRELOAD_DIR = "/lib/ksplice-preload"
PRELOAD_FAILED = 124


def _init_preload(names: Sequence[str]) -> str:
    lines = []
    for name in names:
        lines.append(f"insmod {PRELOAD_DIR}/{name} || {{ echo \"{EXIT_MARK}{PRELOAD_FAILED} "
                     f"(insmod {name} failed)\"; reboot -f; }}\n")
    return "".join(lines)


def preload_files(modules: Sequence[Path]) -> list[tuple[str, Path]]:
    """(guest path, host path) for each module, numbered so the guest loads them in order."""
    return [(f"{PRELOAD_DIR}/{i:02d}-{m.name}", m) for i, m in enumerate(modules)]


_INIT_TAIL = f"""export TMPDIR=/run
echo "{TEXT_MARK}$(grep -m1 ' _text$' /proc/kallsyms 2>/dev/null | cut -d' ' -f1)"
echo {BEGIN_MARK}
sh /guest.sh
echo "{EXIT_MARK}$?"
sync
reboot -f
"""


@dataclass(frozen=True)
class BootResult:
    """What the serial console showed and how the guest script ended."""

    output: str
    status: int | None
    timed_out: bool
    seconds: float

    @property
    def guest_output(self) -> str:
        """The serial output after /init started the guest script."""
        _, _, after = self.output.partition(BEGIN_MARK)
        return after.split(EXIT_MARK)[0] if after else ""

    @property
    def ok(self) -> bool:
        return self.status == 0 and not self.timed_out


def init_script(hostfs: bool, preload: Sequence[str] = ()) -> str:
    """/init: mounts, insmod of ``preload`` (file names in PRELOAD_DIR, in order), 9p, script."""
    return (_INIT_HEAD + _init_preload(preload) + (_INIT_HOSTFS if hostfs else "")
            + _INIT_TAIL)


def cpio_list(init: Path, guest: Path, files: Sequence[tuple[str, Path]] = ()) -> str:
    """gen_init_cpio's input: device nodes without root, busybox, /init and the script."""
    lines = [
        "dir /dev 0755 0 0",
        "nod /dev/console 0600 0 0 c 5 1",
        "nod /dev/null 0666 0 0 c 1 3",
        "dir /proc 0755 0 0",
        "dir /sys 0755 0 0",
        "dir /tmp 1777 0 0",
        "dir /run 0755 0 0",
        "dir /bin 0755 0 0",
        "dir /sbin 0755 0 0",
        "dir /root 0700 0 0",
        f"file /bin/busybox {BUSYBOX} 0755 0 0",
        f"file /init {init} 0755 0 0",
        f"file /guest.sh {guest} 0755 0 0",
    ]
    dirs = {"/dev", "/proc", "/sys", "/tmp", "/run", "/bin", "/sbin", "/root"}
    for dest, src in files:
        parent = os.path.dirname(dest)
        parts = [p for p in parent.split("/") if p]
        for i in range(len(parts)):
            d = "/" + "/".join(parts[: i + 1])
            if d not in dirs:
                dirs.add(d)
                lines.append(f"dir {d} 0755 0 0")
        lines.append(f"file {dest} {src} 0644 0 0")
    return "\n".join(lines) + "\n"


def make_initramfs(
    gen_init_cpio: Path,
    script: str,
    out: Path,
    *,
    hostfs: bool = False,
    files: Sequence[tuple[str, Path]] = (),
    preload: Sequence[Path] = (),
) -> Path:
    """Pack a gzip'd initramfs with the kernel's own gen_init_cpio (no root needed).

    ``preload``: kernel modules (.ko, uncompressed) that /init loads, in this
    order, before it mounts the host's root.
    """
    if not BUSYBOX.exists():
        raise UserError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    with tempfile.TemporaryDirectory(prefix="ksplice-initramfs-") as tmp:
        t = Path(tmp)
        packed = preload_files(preload)
        (t / "init").write_text(init_script(hostfs, [Path(g).name for g, _ in packed]))
        (t / "guest.sh").write_text(script)
        (t / "list").write_text(cpio_list(t / "init", t / "guest.sh", [*files, *packed]))
        cpio = subprocess.run(
            [str(gen_init_cpio), str(t / "list")], capture_output=True, check=False
        )
        if cpio.returncode != 0:
            raise UserError(f"gen_init_cpio failed: {cpio.stderr.decode(errors='replace')}")
        gz = subprocess.run(["gzip", "-1", "-n"], input=cpio.stdout, capture_output=True,
                            check=True)
        write_atomic(out, gz.stdout)
    return out


def qemu_argv(
    bzimage: Path,
    initramfs: Path,
    *,
    cpus: int = 1,
    memory_mb: int = 512,
    hostfs: bool = False,
    append: str = "",
    monitor: Path | None = None,
) -> list[str]:
    """TCG only: this machine's /dev/kvm dies with "KVM internal error" (DESIGN.md)."""
    argv = [
        "qemu-system-x86_64",
        "-accel", "tcg",
        # RDRAND, trusted (random.trust_cpu, drivers/char/random.c): the CRNG is
        # seeded in start_kernel(), so its crng_is_ready key flips on one CPU at
        # boot. Without it the first getrandom() (the guest's Python) spins in
        # try_to_generate_entropy() while a worker flips that key on the other
        # vCPU, and TCG can run the stale int3 of text_poke_bp() (see
        # bench/tcg_key_race.py): an "int3: 0000 [#1]" oops or a hang.
        "-cpu", "qemu64,+rdrand",
        "-m", str(memory_mb),
        "-kernel", str(bzimage),
        "-initrd", str(initramfs),
        # loglevel=4: warnings and oopses reach the console, chatter does not.
        "-append", f"console=ttyS0 loglevel=4 panic=-1 oops=panic random.trust_cpu=on "
                   f"{append}".strip(),
        "-display", "none",
        "-serial", "stdio",
        "-monitor", f"unix:{monitor},server=on,wait=off" if monitor else "none",
        "-no-reboot",
    ]
    if cpus > 1:
        # Without ACPI the CPUs come from MP tables, which need one core per socket.
        argv += ["-smp", f"{cpus},sockets={cpus},cores=1"]
    if hostfs:
        argv += [
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ]
    return argv


_EXIT_RE = re.compile(re.escape(EXIT_MARK) + r"(\d+)")


def parse_status(output: str) -> int | None:
    """The guest script's exit status, or None when the guest never reported one."""
    m = _EXIT_RE.findall(output)
    return int(m[-1]) if m else None


def boot(
    bzimage: Path,
    gen_init_cpio: Path,
    script: str,
    *,
    cpus: int = 1,
    hostfs: bool = False,
    timeout: float = 180.0,
    memory_mb: int | None = None,
    files: Sequence[tuple[str, Path]] = (),
    append: str = "",
    preload: Sequence[Path] = (),
    monitor: Path | None = None,
    symbols: Path | None = None,
) -> BootResult:
    """Boot, run `script` with busybox sh as root, and always return within `timeout`.

    ``preload``: modules /init loads in order before anything else (see
    make_initramfs); a failed load ends the boot with status PRELOAD_FAILED.
    ``monitor``: a unix socket path for qemu's human monitor (see inject_nmis);
    without it boot() opens its own, and on a timeout appends hang_lines():
    where each vCPU is, named from ``symbols`` (a System.map or kallsyms of
    this kernel) when given.
    """
    if shutil.which("qemu-system-x86_64") is None:
        raise UserError("qemu-system-x86_64 is missing: apt-get install qemu-system-x86")
    mem = memory_mb or (1024 if hostfs else 256)
    with tempfile.TemporaryDirectory(prefix="ksplice-boot-") as tmp:
        initrd = make_initramfs(gen_init_cpio, script, Path(tmp) / "initramfs.cpio.gz",
                                hostfs=hostfs, files=files, preload=preload)
        own_monitor = monitor is None
        if own_monitor:
            monitor = Path(tmp) / "monitor"
        argv = qemu_argv(bzimage, initrd, cpus=cpus, memory_mb=mem, hostfs=hostfs,
                         append=append, monitor=monitor)
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        report = None
        try:
            raw, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            # the guest's CPUs as they are now: where it hangs, whatever the guest prints
            report = vcpu_report(monitor) if own_monitor else None
            proc.kill()
            raw, _ = proc.communicate()
        seconds = time.monotonic() - t0
    output = raw.decode("utf-8", errors="replace").replace("\r\n", "\n")
    if report is not None:
        output += hang_lines(*report[:2], output, symbols, report[2])
    elif timed_out:
        output += f"\n{HANG_MARK} vCPU state not read: the caller holds qemu's monitor\n"
    return BootResult(output, parse_status(output), timed_out, seconds)


@dataclass(frozen=True)
class VcpuState:
    """One vCPU in qemu's ``info registers``: its number, RIP, RSP, privilege level, halted."""

    cpu: int
    rip: int
    rsp: int
    cpl: int
    halted: bool


_CPU_RE = re.compile(r"^CPU#(\d+)", re.M)
_RSP_RE = re.compile(r"RSP=([0-9a-f]{16})\b")
_RIP_RE = re.compile(r"RIP=([0-9a-f]{16})\b.*?CPL=(\d).*?HLT=(\d)", re.S)
_WORDS_RE = re.compile(r"^[0-9a-f]+:((?: 0x[0-9a-f]{16})+)", re.M)
_BYTES_RE = re.compile(r"^[0-9a-f]+:((?: 0x[0-9a-f]{2})+)\s*$", re.M)
STACK_WORDS = 64
CODE_BYTES = 5


def parse_registers(text: str) -> list[VcpuState]:
    """The vCPUs in the text of qemu's ``info registers -a`` (x86-64 target); [] when none."""
    parts = _CPU_RE.split(text)
    states = []
    for num, body in zip(parts[1::2], parts[2::2], strict=True):
        m, sp = _RIP_RE.search(body), _RSP_RE.search(body)
        if m and sp:
            states.append(VcpuState(int(num), int(m[1], 16), int(sp[1], 16), int(m[2]),
                                    m[3] == "1"))
    return states


def parse_words(text: str) -> list[int]:
    """The 64-bit words of qemu's ``x/Ngx ADDR`` answer, in address order."""
    return [int(w, 16) for line in _WORDS_RE.findall(text) for w in line.split()]


def _until_prompt(sock: socket.socket, deadline: float) -> str:
    data = b""
    while b"(qemu) " not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", errors="replace")


def monitor_commands(monitor: Path, commands: Sequence[str], timeout_s: float = 5.0) -> list[str]:
    """qemu's human-monitor answers, in order, to ``commands`` sent to the socket ``monitor``.

    Each answer is what came before the next "(qemu) " prompt; "" for each
    command not answered within ``timeout_s`` in all (qemu itself hung, or
    another client holds the socket).
    """
    deadline = time.monotonic() + timeout_s
    answers: list[str] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(monitor))
            _until_prompt(sock, deadline)  # the banner
            for command in commands:
                sock.sendall(command.encode() + b"\n")
                answers.append(_until_prompt(sock, deadline))
    except OSError:
        pass
    return answers + [""] * (len(commands) - len(answers))


def parse_bytes(text: str) -> bytes:
    """The bytes of qemu's ``x/Nbx ADDR`` answer, in address order."""
    return bytes(int(b, 16) for line in _BYTES_RE.findall(text) for b in line.split())


def vcpu_report(monitor: Path) -> tuple[list[VcpuState], dict[int, list[int]], dict[int, bytes]]:
    """Each vCPU's registers; for each one in the kernel, STACK_WORDS words of its
    stack and the CODE_BYTES bytes at its RIP as memory holds them now."""
    states = parse_registers(monitor_commands(monitor, ["info registers -a"])[0])
    stacks, code = {}, {}
    for st in states:
        if st.cpl == 0:
            _, words, text = monitor_commands(monitor, [
                f"cpu {st.cpu}", f"x/{STACK_WORDS}gx {st.rsp:#x}",
                f"x/{CODE_BYTES}bx {st.rip:#x}"])
            stacks[st.cpu] = parse_words(words)
            code[st.cpu] = parse_bytes(text)
    return states, stacks, code


def text_symbols(path: Path) -> list[tuple[int, str]]:
    """(link-time address, name) of each symbol in [_text, _etext) of a System.map
    or kallsyms (read by :func:`ksplice_tasks.symbolmap.load`), sorted, then
    _etext itself; [] when the file is missing or not a symbol map."""
    try:
        symbols = symbolmap.load(path)
    except (UserError, OSError):
        return []
    lo, hi = symbols.get("_text", [None])[0], symbols.get("_etext", [None])[0]
    if lo is None or hi is None:
        return []
    inside = sorted((a, n) for n, addrs in symbols.items() for a in addrs if lo <= a < hi)
    return inside + [(hi, "_etext")]


def symbolize(addr: int, symbols: list[tuple[int, str]], slide: int = 0) -> str:
    """``name+0xoff`` of the run-time ``addr`` in ``symbols`` (text_symbols()) moved by
    ``slide`` (KASLR); "?" outside them."""
    i = bisect.bisect_right(symbols, (addr - slide, "\uffff")) - 1
    if i < 0 or i == len(symbols) - 1:
        return "?"
    base, name = symbols[i]
    off = addr - slide - base
    return f"{name}+{off:#x}"


def hang_lines(states: Sequence[VcpuState], stacks: dict[int, list[int]], output: str,
               symbols: Path | None, code: dict[int, bytes] | None = None) -> str:
    """What boot() appends on a timeout: one HANG_MARK line per vCPU.

    Each names the RIP and, for a vCPU in the kernel, the bytes memory holds
    at the RIP (``code``: a vCPU looping on an instruction memory no longer
    holds shows here) and the text addresses on its stack (return addresses
    and stale ones alike: a hint, not an unwind), when ``symbols`` allows.
    The KASLR slide is the guest's _text (TEXT_MARK in ``output``) minus the
    file's _text. Without states (qemu's monitor did not answer) one line
    says so.
    """
    if not states:
        return f"\n{HANG_MARK} qemu's monitor gave no vCPU state\n"
    syms = text_symbols(symbols) if symbols else []
    m = re.search(re.escape(TEXT_MARK) + r"([0-9a-f]+)", output)
    # text_symbols() starts at _text
    slide = int(m[1], 16) - syms[0][0] if m and syms else 0
    lines = []
    for st in states:
        where = symbolize(st.rip, syms, slide) if syms and st.cpl == 0 else ""
        line = (f"{HANG_MARK} CPU#{st.cpu} RIP={st.rip:#x}{f' {where}' if where else ''} "
                f"CPL={st.cpl}{' halted' if st.halted else ''}")
        if code and code.get(st.cpu):
            line += " code: " + code[st.cpu].hex(" ")
        names = [symbolize(w, syms, slide) for w in stacks.get(st.cpu, [])] if syms else []
        names = [n for n in names if n != "?"]
        if names:
            line += " stack: " + " ".join(names)
        lines.append(line)
    return "\n" + "\n".join(lines) + "\n"


def inject_nmis(monitor: Path, stop: threading.Event, interval_s: float = 0.005,
                start_after_s: float = 20.0, connect_timeout_s: float = 60.0) -> int:
    """Send qemu's monitor command ``nmi`` every ``interval_s`` from ``start_after_s``
    on until ``stop`` is set or qemu closes the socket; returns how many were sent.

    qemu raises the NMI on every vCPU's LINT1, which Linux leaves unmasked on
    the boot CPU only, so the guest sees it on CPU 0, like an external NMI on
    real hardware.

    Run it in a thread next to boot(monitor=...): NMIs that arrive at any time,
    which no guest-side trigger gives (a guest CPU sending one is not where
    the receiving CPU is).  The delay matters: an NMI in the firmware or the
    early kernel, before Linux's IDT, resets the machine (and -no-reboot ends
    qemu); a guest script waits for /proc/interrupts' NMI line to move.
    0 when the socket never appeared.
    """
    if stop.wait(start_after_s):
        return 0
    deadline = time.monotonic() + connect_timeout_s
    sent = 0
    while not stop.is_set():
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(monitor))
                sock.setblocking(False)
                while not stop.wait(interval_s):
                    sock.sendall(b"nmi\n")
                    sent += 1
                    with contextlib.suppress(BlockingIOError):
                        sock.recv(65536)
                return sent
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                return sent
            stop.wait(0.1)
        except (BrokenPipeError, ConnectionResetError):
            return sent
    return sent
