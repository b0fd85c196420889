# SPDX-License-Identifier: GPL-2.0-only
"""The corpus run's phases on a Debian target: prepare, cut, create, boot, report.

bench/corpus.py is their command line; tests/system/test_corpus_subset.py runs a
few real cases through the same functions.  The pure logic (cutting,
classifying, the table, the guest side) is in :mod:`ksplice_tasks.testing.corpus`.
Everything is cached under ``$KSPLICE_CACHE``: the Debian packages and trees
by package version (distro.debian), the run's patches, updates, logs and
reports in ``corpus/<pair>-<target>/`` (:func:`workdir`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ksplice_tasks import names
from ksplice_tasks.distro import debian
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import cache_root, extract_tarball, locked, write_atomic
from ksplice_tasks.stages import prebuild
from ksplice_tasks.stages.inputs import target_make_vars
from ksplice_tasks.stages.layout import state_layout
from ksplice_tasks.testing import corpus, debian_guest, qemu, testkernel
from ksplice_tasks.tree import datalayout, deps

REPO = Path(__file__).resolve().parents[2]
_TARBALL = re.compile(rf"Ksplice update tarball written to ({names.TARBALL_RE.pattern})")


@dataclass
class Run:
    """One corpus run: where it writes, how it talks, and the wall seconds of each phase."""

    work: Path
    jobs: int = 2
    verbose: bool = False
    out: TextIO = sys.stdout
    seconds: dict[str, float] = field(default_factory=dict)

    def say(self, msg: str) -> None:
        self.out.write(f"corpus: {msg}\n")
        self.out.flush()

    def run(self, argv: Sequence[str | Path], cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
        """A command (argument list), its output captured; -v prints it first."""
        if self.verbose:
            self.out.write("$ " + " ".join(str(a) for a in argv) + "\n")
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                              check=False, cwd=cwd)

    def create_argv(self) -> list[str]:
        return [sys.executable, "-m", "ksplice_tasks.cli", f"-j{self.jobs}"]


def workdir(pair: str, target: str) -> Path:
    """``$KSPLICE_CACHE/corpus/<pair>-<target>``, made if missing."""
    path = cache_root() / "corpus" / f"{pair}-{target}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_tree(version: str) -> Path:
    """The pristine linux-source-6.1 tree of Debian package ``version``, unpacked once.

    ``$KSPLICE_CACHE/debian/<version>/src/linux``, the same place
    distro.debian.populate_cache puts a target's source. UserError when apt
    cannot download that version.
    """
    pkgs = debian.Packages(release="", version=version, image="", headers="",
                           source="linux-source-6.1", dbg=None)
    base = debian.debian_cache(version)
    src = base / "src" / "linux"
    with locked(f"debian-{version.replace(':', '%3a')}"):
        if not src.is_dir():
            debs = debian.download(pkgs, [pkgs.source])
            with tempfile.TemporaryDirectory(prefix=".source.", dir=base) as tmp:
                tree = debian.unpack(debs[pkgs.source], Path(tmp) / "deb")
                extract_tarball(tree / "usr/src/linux-source-6.1.tar.xz", src)
    return src


def error_line(text: str) -> str:
    """The line of a command's output that says why it failed (the first error-like line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for pat in (r"ksplice-create: error", r"error:", r"Error", r"refus", r"undefined"):
        hits = [ln for ln in lines if re.search(pat, ln)]
        if hits:
            return hits[0][:200]
    return lines[-1][:200] if lines else "no output"


@dataclass(frozen=True)
class Target:
    """The running kernel a run patches: its KERNEL_SOURCE, ORIG_CONFIG and how to boot it.

    ``name`` is ``debian`` (Debian's shipped image) or ``test`` (the project's
    lp kernel: SMP+KASLR, ftrace, livepatch, ORC, built from the older
    source); ``key`` names the target in cache file names.
    """

    name: str
    release: str
    key: str
    source: Path
    orig_config: Path
    boot: Callable[..., qemu.BootResult]


def prepare(r: Run, pair: str, target: str = "debian") -> tuple[Target, Path, Path]:
    """The older version's target, targeted-prebuilt, and both pristine source trees.

    ``debian``: Debian's shipped image of the older version (its kallsyms
    captured in one boot).  ``test``: the project's ``lp`` test kernel built
    from the older version's ``linux-source-6.1`` tarball, and a tree of its
    own to prebuild (``ksrc/corpus-<version>-...``).  Returns (target, old
    source, new source).  UserError when the archive's image is not at the
    pair's older version, a build or the prebuild fails.
    """
    t0 = time.monotonic()
    old_v, new_v, release = corpus.PAIRS[pair]
    if target == "debian":
        r.say(f"[prepare 1/4] Debian target {release} ({old_v})")
        kernel = debian_guest.prepare(release, out=r.out)
        if kernel.record.package_version != old_v:
            raise UserError(f"{release} is {kernel.record.package_version} in the archive, "
                            f"not {old_v}")
        r.say("[prepare 2/4] /proc/kallsyms of the shipped image")
        if not (kernel.orig_config / "kallsyms").is_file():
            debian_guest.capture_kallsyms(kernel)
        tgt = Target("debian", kernel.release, f"{kernel.release}-{old_v}", kernel.source,
                     kernel.orig_config, kernel.boot)
    elif target == "test":
        r.say(f"[prepare 1/4] the lp test kernel from linux-source-6.1 {old_v}")
        tarball = source_tarball(old_v)
        kernel = testkernel.build_test_kernel("lp", jobs=r.jobs, tarball=tarball,
                                              verbose=r.verbose, out=r.out)
        r.say("[prepare 2/4] its own tree to prebuild")
        ksrc, orig = testkernel.prebuild_tree(kernel, f"corpus-{old_v}", tarball, out=r.out)
        tgt = Target("test", kernel.release, f"test-lp-{kernel.build.name}", ksrc, orig,
                     kernel.boot)
    else:
        raise UserError(f"unknown target {target!r} (have: debian, test)")
    r.say(f"[prepare 3/4] pristine source trees {old_v} and {new_v}")
    old_src, new_src = source_tree(old_v), source_tree(new_v)
    r.say("[prepare 4/4] targeted prebuild")
    res = r.run([*r.create_argv(), "--prebuild", f"--config={tgt.orig_config}", tgt.source])
    if res.returncode != 0:
        raise UserError(f"prebuild failed: {error_line(res.stdout + res.stderr)}")
    r.seconds["prepare"] = time.monotonic() - t0
    return tgt, old_src, new_src


def source_tarball(version: str) -> Path:
    """Debian's ``linux-source-6.1.tar.xz`` of package ``version``, kept unpacked in the cache
    (``debian/<version>/x/linux-source-6.1/``) for the test kernel's build."""
    pkgs = debian.Packages(release="", version=version, image="", headers="",
                           source="linux-source-6.1", dbg=None)
    with locked(f"debian-{version.replace(':', '%3a')}"):
        debs = debian.download(pkgs, [pkgs.source])
        tree = debian.unpack(debs[pkgs.source],
                             debian.debian_cache(version) / "x" / pkgs.source)
    return tree / "usr/src/linux-source-6.1.tar.xz"


def builtin(r: Run, kernel: Target) -> frozenset[str]:
    """The .c sources compiled into the image: ``make -n vmlinux modules`` on the target.

    make -n lists only objects that are out of date, so the output is taken
    once, before any create builds objects in the tree, and kept in
    ``$KSPLICE_CACHE/corpus/make-n-<target key>.txt`` for every later run on
    that target.
    """
    dry = cache_root() / "corpus" / f"make-n-{kernel.key}.txt"
    if not dry.is_file():
        argv = deps.dry_run_argv(kernel.source, target_make_vars(kernel.orig_config))
        res = r.run(argv)
        if "-D__KERNEL__" not in res.stdout:
            raise UserError(f"make -n listed nothing: {error_line(res.stderr)}")
        write_atomic(dry, res.stdout)
    return corpus.builtin_sources(dry.read_text(), str(kernel.source))


def cut(r: Run, kernel: Target, old_src: Path, new_src: Path,
        only: Sequence[str] | None = None) -> list[corpus.Case]:
    """Every case of the pair (``only``: just these paths), patches written to work/patches."""
    t0 = time.monotonic()
    r.say("[cut 1/3] make -n: which sources the image compiles")
    built = builtin(r, kernel)
    if only is None:
        r.say(f"[cut 2/3] diff -rq {old_src} {new_src}")
        paths = corpus.changed_files(old_src, new_src)
    else:
        paths = list(only)
    r.say(f"[cut 3/3] classify {len(paths)} changed files")
    cases, patches = corpus.cut(old_src, new_src, paths, built)
    (r.work / "patches").mkdir(exist_ok=True)
    for name, text in patches.items():
        write_atomic(r.work / "patches" / f"{name}.patch", text)
    r.seconds["cut"] = time.monotonic() - t0
    return cases


_BUILD_LOG = re.compile(r"break the kernel build: .*\(make exited \d+; log: (\S+)\)")
COMPANION_ROUNDS = 3
# A header side reaching more objects is not built: a pre and a post build of
# hundreds of objects per case would dwarf the rest of the run.
COMPANION_MAX_OBJECTS = 40


@dataclass(frozen=True)
class Trees:
    """The pair's two source trees and the headers that differ between them."""

    old: Path
    new: Path
    headers: Sequence[str]
    sources: Sequence[str] = ()     # the changed .c files the target builds


def _companions(trees: Trees, names: Sequence[str]) -> tuple[dict[str, str], bool]:
    """Header path -> ``-p1`` patch of its hunks that name one of ``names`` (none: left out),
    and whether those hunks change a data layout (ksplice-create refuses that before building).
    """
    out, layout = {}, False
    for h in trees.headers:
        a, b = trees.old / h, trees.new / h
        old = a.read_text(errors="replace") if a.is_file() else ""
        new = b.read_text(errors="replace") if b.is_file() else ""
        part = corpus.companion_text(old, new, names)
        if part != old:
            out[h] = corpus.unified(h, old, part)
            layout |= bool(datalayout.layout_changes(old, part))
    return out, layout


def reach(kernel: Target, touched: Sequence[str]) -> int | None:
    """How many objects of the target's targeted prebuild a patch to ``touched`` can change
    (:func:`ksplice_tasks.tree.deps.affected_objects`); None when that cannot be told."""
    try:
        units, scan = prebuild.load_inventory(state_layout(kernel.orig_config))
    except UserError:
        return None
    objects, _why = deps.affected_objects(units, scan, touched)
    return None if objects is None else len(objects)


def _create_one(r: Run, kernel: Target, patch: Path, out: Path) -> tuple[str, str]:
    """One ``ksplice-create --patch``: (its output, the tarball written or "")."""
    res = r.run([*r.create_argv(), f"--patch={patch}", f"--config={kernel.orig_config}",
                 kernel.source], cwd=out)
    m = _TARBALL.search(res.stdout)
    return res.stdout + res.stderr, (str(out / m.group(1)) if res.returncode == 0 and m else "")


def _with_companions(r: Run, kernel: Target, c: corpus.Case, trees: Trees, out: Path,
                     text: str) -> tuple[str, str, str]:
    """Create ``c`` again with the header hunks its failed build's errors ask for.

    ``text`` is the failed create's output.  Returns the last create's output,
    its tarball ("" if none) and, when a header side is over the budget, the
    reason it was not built ("" otherwise); sets ``c.companions``.
    """
    missing: list[str] = []
    tarball = ""
    for _ in range(COMPANION_ROUNDS):
        m = _BUILD_LOG.search(text)
        log = Path(m.group(1)) if m else None
        if tarball or log is None or not log.is_file():
            break
        more = [n for n in corpus.missing_names(log.read_text(errors="replace"))
                if n not in missing]
        if not more:
            break
        missing += more
        extra, layout = _companions(trees, missing)
        if not extra:
            break
        c.companions = sorted(extra)
        n = None if layout else reach(kernel, [c.path, *c.companions])
        if not layout and (n is None or n > COMPANION_MAX_OBJECTS):
            return text, "", (f"create: {corpus.OVER_BUDGET}: {', '.join(c.companions)} "
                              f"reach {'?' if n is None else n} objects")
        r.say(f"  needs {', '.join(more)}: again with hunks of {', '.join(c.companions)}")
        patch = r.work / "patches" / (c.name + ".companion.patch")
        write_atomic(patch, (r.work / "patches" / (c.name + ".patch")).read_text()
                     + "".join(extra[h] for h in c.companions))
        text, tarball = _create_one(r, kernel, patch, out)
    return text, tarball, ""


# ksplice-create's refusal of new code that calls what neither the running kernel
# nor the update defines (stages/kmod.py check_resolvable).
_NOT_DEFINED = re.compile(r"refers to (\S+), which neither the running kernel")


def _definer(trees: Trees, c: corpus.Case, name: str) -> tuple[str, str, str] | None:
    """(path, old text, new text) of the changed ``.c`` file that newly defines ``name``."""
    for src in trees.sources:
        if src == c.path:
            continue
        a, b = trees.old / src, trees.new / src
        old = a.read_text(errors="replace") if a.is_file() else ""
        new = b.read_text(errors="replace") if b.is_file() else ""
        if corpus.defines_function(new, name) and not corpus.defines_function(old, name):
            return src, old, new
    return None


def _with_definition(r: Run, kernel: Target, c: corpus.Case, trees: Trees, out: Path,
                     text: str) -> tuple[str, str]:
    """Create ``c`` again with the hunks of the file that defines what its new code calls.

    ``text`` is the refused create's output: the fix adds a function in
    another ``.c`` file of the release (the per-file cut split it in two).
    The hunks of that file naming the function are added, once.  Returns the
    create's output and its tarball ("" if none); adds the file to
    ``c.companions``.
    """
    m = _NOT_DEFINED.search(text)
    if m is None:
        return text, ""
    name = m.group(1)
    found = _definer(trees, c, name)
    if found is None:
        return text, ""
    src, old, new = found
    base = r.work / "patches" / (c.name + (".companion.patch" if c.companions else ".patch"))
    c.companions = [*c.companions, src]
    r.say(f"  needs {name}: again with its definition's hunks of {src}")
    patch = r.work / "patches" / (c.name + ".companion.patch")
    write_atomic(patch, base.read_text()
                 + corpus.unified(src, old, corpus.companion_text(old, new, [name])))
    return _create_one(r, kernel, patch, out)


def create(r: Run, kernel: Target, cases: Sequence[corpus.Case],
           trees: Trees | None = None) -> None:
    """``ksplice-create --patch`` of each case against the target; sets created/tarball/reason.

    With ``trees``, a case whose patch breaks the build (it needs the header
    side of its fix, which the per-file cut left out) is tried again with the
    hunks of the pair's changed headers that name what the compiler says is
    missing (:func:`corpus.missing_names`), up to COMPANION_ROUNDS times;
    the headers taken are in ``companions``.  A case that then is refused
    for a data-layout change is a data case: its header side changes a
    layout.  A header side that reaches more than COMPANION_MAX_OBJECTS
    objects is not built (the reason says so; :data:`corpus.OVER_BUDGET`).
    A case refused because its new code calls a function that another
    changed ``.c`` file of the release adds (``trees.sources``) is tried
    again with that file's hunks naming the function.
    """
    t0 = time.monotonic()
    out = r.work / "updates"
    out.mkdir(exist_ok=True)
    (r.work / "logs").mkdir(exist_ok=True)
    for i, c in enumerate(cases, 1):
        r.say(f"[create {i}/{len(cases)}] {c.path} ({c.kind})")
        t1 = time.monotonic()
        patch = r.work / "patches" / (c.name + ".patch")
        text, tarball = _create_one(r, kernel, patch, out)
        skipped = ""
        if not tarball and trees is not None:
            text, tarball, skipped = _with_companions(r, kernel, c, trees, out, text)
        if not tarball and not skipped and trees is not None:
            text, tarball = _with_definition(r, kernel, c, trees, out, text)
        c.create_seconds = round(time.monotonic() - t1, 1)
        write_atomic(r.work / "logs" / f"{c.name}.create.log", text)
        c.created = bool(tarball)
        if c.created:
            c.tarball = tarball
        else:
            c.reason = skipped or "create: " + error_line(text)
            if c.companions and "data layout change" in c.reason and c.kind == "code":
                c.kind, c.why = "data", "its header side changes a data layout"
        r.say(f"  {'created' if c.created else 'refused'} in {c.create_seconds:.0f} s"
              + ("" if c.created else f": {c.reason}"))
    r.seconds["create"] = time.monotonic() - t0


def boot(r: Run, kernel: Target, cases: Sequence[corpus.Case]) -> str:
    """One boot of the shipped image with every created update; sets applied/undone/reason/log.

    The guest runs :func:`corpus.guest_main` (this checkout, over 9p).
    Returns the serial output (also written to work/guest.log).
    """
    t0 = time.monotonic()
    todo = [c for c in cases if c.created]
    if not todo:
        return ""
    manifest = r.work / "manifest.json"
    write_atomic(manifest, json.dumps([[c.name, c.tarball] for c in todo]))
    r.say(f"[boot 1/1] {kernel.release} with {len(todo)} updates")
    script = (f"export PYTHONPATH={REPO} TMPDIR=/run\ndmesg -n 1\n"
              f"chroot /host {sys.executable} -m ksplice_tasks.testing.corpus guest {manifest}\n")
    res = kernel.boot(script, hostfs=True, timeout=120 + 30 * len(todo))
    write_atomic(r.work / "guest.log", res.output)
    results, crashed = corpus.parse_guest(res.guest_output)
    for c in todo:
        got = results.get(c.name)
        if got is None:
            c.reason = ("the guest died in this case" if c.name == crashed
                        else "not run (the guest stopped earlier)")
            continue
        c.applied, c.undone, c.log = got["applied"], got["undone"], got["log"]
        c.reason = got["reason"] or ("kernel log: " + got["log"][0] if got["log"] else "")
        if got["runpre_failed"] and "no match" in c.reason:
            c.reason += f" [run-pre failed: {', '.join(got['runpre_failed'])}]"
    r.seconds["boot"] = time.monotonic() - t0
    return res.output


def report(r: Run, all_cases: Sequence[corpus.Case], cases: Sequence[corpus.Case],
           meta: dict) -> str:
    """The markdown report (table, totals, wall seconds), written as report.md, report.json and
    report-<commit>.{md,json} in the workdir; returns the markdown."""
    tot = corpus.totals(cases, all_cases)
    text = "\n".join([f"# corpus {meta.get('pair')} on {meta.get('target')} "
                      f"(commit {meta.get('commit', '?')[:12]})", "",
                      *corpus.table(cases), "", "## totals", "", "```",
                      json.dumps(tot, indent=1), "```", "", "## wall seconds", "", "```",
                      json.dumps(meta.get("seconds", {}), indent=1), "```", ""])
    data = corpus.to_json(cases, all_cases, meta)
    tag = meta.get("commit", "")[:12]
    for stem in ("report", *([f"report-{tag}"] if tag else [])):
        write_atomic(r.work / f"{stem}.md", text)
        write_atomic(r.work / f"{stem}.json", data)
    return text


def commit() -> str:
    """This checkout's git commit (with ``+dirty`` when its tracked files differ), or ``?``."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD"],
                           check=False).returncode
    return (head or "?") + ("+dirty" if dirty == 1 else "")
