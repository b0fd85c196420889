# SPDX-License-Identifier: GPL-2.0-only
"""A corpus of real fixes: two Debian ``linux-source-6.1`` trees cut into per-file cases.

Debian's source package carries no upstream commit boundaries, so the cut is
**one case per changed ``.c`` file, with all of that file's hunks**.  A
stable backport touches one file in the great majority of cases, and keeping
a file's hunks together keeps a new helper with its caller (a per-function
cut would make patches that do not compile).  The functions each case
touches are listed with it.

Each case gets a kind (:func:`classify`):

- ``code``: a change inside function bodies (or a new function, macro or
  prototype): what an update should apply;
- ``data``: a data-layout change as ksplice-create refuses it
  (:mod:`ksplice_tasks.tree.datalayout`: a changed ``struct``/``union``, or a
  size taken from another type) or a changed initializer of existing data: an
  expected refusal at create. A new type, or a changed ``enum``, is not data;
- ``init``: every changed function is ``__init``/``__exit`` code: an expected
  refusal (nothing in the running kernel to patch);
- ``noop``: only comments or white space differ: an expected refusal;
- ``header``: a changed header (not measured: it reaches many objects);
- ``notbuilt``: a ``.c`` file the target config does not compile into the
  image (not in the object inventory, or only in a module);
- ``other``: any other changed file (assembler, Makefile, ...).

The sample order (:func:`sample`) is stable: cases sorted by the SHA-256 of
their path, so ``--limit N`` always takes the same cases of a pair.

The guest side (:func:`guest_main`, ``python -m ksplice_tasks.testing.corpus
guest MANIFEST``) runs in the booted kernel: for each update it applies,
checks (stage ``applied``, and at every patch site of the primary's
``patches`` file a ``jmp rel32`` to the replacement, read from /proc/kcore),
reverses (``before=`` equals ``now=``), re-applies, reverses, and after each
step looks for WARNING/BUG/Oops in the kernel log.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import posixpath
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ksplice_tasks.testing import kcore
from ksplice_tasks.tree import datalayout
from ksplice_tasks.tree.csource import strip_c

KINDS = ("code", "data", "init", "noop", "header", "notbuilt", "other")
BUILT_KINDS = ("code", "data", "init", "noop")      # the kinds a run builds
EXPECTED_REFUSALS = ("data", "init", "noop")

PAIRS = {"170-176": ("6.1.170-3", "6.1.176-1", "6.1.0-47-amd64"),
         "176-187": ("6.1.176-1", "6.1.187-1", "6.1.0-50-amd64")}

_IDENT = re.compile(r"[A-Za-z_]\w*")
_TYPE_DEF = re.compile(r"^(?:typedef\s+)?(?:struct|union|enum)\b[^=(]*\{\s*$")
_INIT_MARK = re.compile(r"\b__(?:init|exit|ref|meminit)(?:data|const)?\b")
_ANNOTATION = re.compile(r"\b__[a-z_]+\b")
BAD_LOG = re.compile(r"WARNING|BUG|Oops|general protection")
JMP32 = 0xE9


# -- C text ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A top-level block of a C file in kernel style; lines are 0-based, ``end`` inclusive.

    ``kind`` is ``function`` (a body whose ``{`` stands alone at column 0),
    ``type`` (``struct x {`` ... ``};``) or ``initializer`` (``... = {``).
    ``head`` is the text from the declaration's first line to the ``{``.
    """

    kind: str
    name: str
    start: int
    end: int
    head: str


def _head_start(lines: Sequence[str], brace: int) -> int:
    """The first line of the declaration that ends at line ``brace`` (its ``{``)."""
    k = brace
    while k > 0:
        prev = lines[k - 1].rstrip()
        if (not prev or prev.endswith((";", "}", "*/")) or prev.startswith("#")
                or prev.lstrip().startswith(("*", "/*", "//"))):
            break
        k -= 1
    return k


def blocks(text: str) -> list[Block]:
    """The top-level functions, type definitions and initializers of ``text`` (kernel style).

    A block opens at a line that starts at column 0 with its ``{`` at the end
    (or a line that is just ``{`` for a function) and closes at the next line
    that starts with ``}``.  Good enough for the kernel's own style
    (Documentation/process/coding-style.rst, section 3); not a C parser.
    """
    lines = text.splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        opens = line == "{" or (line.endswith("{") and line[:1] not in ("", " ", "\t", "#")
                                and not line.startswith(("}", "/", "*")))
        if not opens:
            i += 1
            continue
        start = _head_start(lines, i) if line == "{" else i
        end = i + 1
        while end < len(lines) and not lines[end].startswith("}"):
            end += 1
        head = " ".join(x.strip() for x in lines[start:i + 1])
        if line == "{" or (")" in line and "=" not in line):
            kind, name = "function", function_name(head)
        elif "=" in head:
            idents = [x for x in _IDENT.findall(re.sub(r"\[[^]]*\]|\([^)]*\)", " ",
                                                       head.split("=")[0]))
                      if not x.startswith("__")]
            kind, name = "initializer", idents[-1] if idents else "?"
        elif _TYPE_DEF.match(head):
            kind, name = "type", head.rstrip("{").strip()
        else:
            kind, name = "other", head
        out.append(Block(kind, name, start, min(end, len(lines) - 1), head))
        i = end + 1
    return out


# Attribute macros that follow or precede a declarator with their own parentheses
# (include/linux/compiler_types.h, compiler_attributes.h): not the function's name.
ATTRIBUTE_MACROS = frozenset({
    "__must_hold", "__acquires", "__releases", "__cond_acquires", "__printf", "__scanf",
    "__attribute__", "__section", "__aligned", "__alloc_size", "__malloc", "__diagnose_as",
    "__no_sanitize_or_inline", "__counted_by"})


def function_name(head: str) -> str:
    """The name in a function's declaration: the last identifier followed by ``(`` at
    parenthesis depth 0 that is not an attribute macro (ATTRIBUTE_MACROS):
    ``__printf(2, 3) int foo(...)`` -> ``foo``; ``?`` when none."""
    depth, name = 0, "?"
    for m in re.finditer(r"[A-Za-z_]\w*\s*\(|[()]", head):
        tok = m.group(0)
        if tok == ")":
            depth -= 1
        elif tok == "(":
            depth += 1
        else:
            if depth == 0 and tok.rstrip("( \t") not in ATTRIBUTE_MACROS:
                name = tok.rstrip("( \t")
            depth += 1
    return name


def _block_at(bs: Sequence[Block], line: int) -> Block | None:
    for b in bs:
        if b.start <= line <= b.end:
            return b
    return None


@dataclass(frozen=True)
class Classification:
    """A changed ``.c`` file's kind, the functions it touches, and why (one phrase)."""

    kind: str
    functions: tuple[str, ...]
    why: str


def _strip_annotations(lines: Sequence[str]) -> str:
    """C text with every ``__word`` token (sparse and section annotations) and comment dropped."""
    return strip_c(_ANNOTATION.sub("", "\n".join(lines)))


# ``static int limit = 4;``: one line defining a scalar with its initial value, at
# column 0 as kernel style puts file-scope definitions (a body's statements are indented,
# also in a function whose ``{`` the block scan missed)
_SCALAR_DEF = re.compile(r"^(?!(?:return|typedef|extern)\b)[A-Za-z_][^=()\[\]{};]*?"
                         r"\b([A-Za-z_]\w*)\s*=\s*([^;{]+);\s*$")


def _scalar_values(lines: Sequence[str], bs: Sequence[Block]) -> dict[str, str]:
    """Name -> initial value of each one-line file-scope scalar definition."""
    out = {}
    for k, line in enumerate(lines):
        m = _SCALAR_DEF.match(line)
        if m and _block_at(bs, k) is None:
            out[m.group(1)] = strip_c(m.group(2))
    return out


def _changed_values(a: Sequence[str], ablocks: Sequence[Block], b: Sequence[str],
                    bblocks: Sequence[Block]) -> list[str]:
    """File-scope scalars defined on both sides with different initial values.

    A declaration that moved, gained an annotation or lost its initializer
    is not one: ksplice-create compares the data itself, and refuses a
    changed initial value of data the running kernel holds.
    """
    old, new = _scalar_values(a, ablocks), _scalar_values(b, bblocks)
    return sorted(n for n in old.keys() & new.keys() if old[n] != new[n])


def classify(old: str, new: str) -> Classification:
    """The kind of the change from ``old`` to ``new`` (one C file's text); see the module doc.

    Precedence: noop, then data (any changed type or initializer), then init
    (every touched function or initializer is ``__init``/``__exit``/``__initdata``/
    ``__initconst``), else code.  A top-level declaration that only gains or loses
    ``__word`` annotations (``__rcu``, ``__read_mostly``) is not a change.
    """
    if strip_c(old) == strip_c(new):
        return Classification("noop", (), "only comments or white space differ")
    a, b = old.splitlines(), new.splitlines()
    ablocks, bblocks = blocks(old), blocks(new)
    funcs: dict[str, bool] = {}       # name -> is __init/__exit
    # ksplice-create's own refusal (post_patch): a changed struct/union, or a size taken
    # from another type; a new type is not data
    data = [f"layout: {c.what}" for c in datalayout.layout_changes(old, new)]
    counted = False
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        if not strip_c("\n".join(a[i1:i2])) and not strip_c("\n".join(b[j1:j2])):
            continue  # a comment or blank lines only
        if (tag == "replace" and all(_block_at(ablocks, k) is None for k in range(i1, i2))
                and _strip_annotations(a[i1:i2]) == _strip_annotations(b[j1:j2])):
            continue  # a top-level declaration gained or lost __rcu, __read_mostly, ...
        counted = True
        hits: list[tuple[Block | None, str]] = []
        for k in range(i1, i2):
            hits.append((_block_at(ablocks, k), a[k]))
        for k in range(j1, j2):
            hits.append((_block_at(bblocks, k), b[k]))
        for blk, text in hits:
            if not strip_c(text):
                continue
            if blk is None:
                continue  # file-scope lines: initial values are compared below
            if blk.kind == "function":
                funcs[blk.name] = funcs.get(blk.name, True) and bool(_INIT_MARK.search(blk.head))
            elif blk.kind == "type":
                pass  # data only when datalayout says so (above)
            elif blk.kind == "initializer" and _INIT_MARK.search(blk.head):
                funcs[f"{blk.name} (init data)"] = True
            elif blk.kind == "initializer":
                data.append(f"initializer of {blk.name}")
    data += [f"initial value of {n}" for n in _changed_values(a, ablocks, b, bblocks)]
    names = tuple(sorted(funcs))
    if not counted:
        return Classification("noop", (), "only comments, white space or __annotations differ")
    if data:
        return Classification("data", names, sorted(set(data))[0])
    if funcs and all(funcs.values()):
        return Classification("init", names, "only __init/__exit functions change")
    if not funcs:
        return Classification("code", (), "top-level declarations or macros only")
    return Classification("code", names, f"{len(names)} function(s)")


# -- the corpus ----------------------------------------------------------------------------


@dataclass
class Case:
    """One case: a changed file of the newer tree, its kind, and what became of it."""

    path: str
    kind: str
    functions: list[str] = field(default_factory=list)
    why: str = ""
    created: bool | None = None
    applied: bool | None = None
    undone: bool | None = None
    reason: str = ""
    tarball: str = ""
    create_seconds: float = 0.0
    log: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)   # changed headers it includes
    companions: list[str] = field(default_factory=list)  # files whose hunks it needed

    @property
    def name(self) -> str:
        return self.path.replace("/", "_").removesuffix(".c")


def file_kind(path: str, built: frozenset[str]) -> str | None:
    """The kind a changed file has before its text is read: header, notbuilt, other or None.

    ``built`` is the set of ``.c`` sources compiled into the image.  None
    means a built ``.c`` file, to be classified by its text.
    """
    if path.endswith(".h"):
        return "header"
    if not path.endswith(".c"):
        return "other"
    if path not in built:
        return "notbuilt"
    return None


def sample_key(path: str) -> str:
    """The stable sample order: the SHA-256 of the path (the same cases every run)."""
    return hashlib.sha256(path.encode()).hexdigest()


def sample(cases: Iterable[Case], limit: int | None) -> list[Case]:
    """The cases a run builds, in sample order: the first ``limit`` code fixes (all with
    None) and every expected-refusal case (data, init, noop: a handful per pair)."""
    ordered = sorted((c for c in cases if c.kind in BUILT_KINDS), key=lambda c: sample_key(c.path))
    if limit is None:
        return ordered
    codes = {id(c) for c in [c for c in ordered if c.kind == "code"][:limit]}
    return [c for c in ordered if id(c) in codes or c.kind in EXPECTED_REFUSALS]


def unified(path: str, old: str, new: str) -> str:
    """A ``-p1`` patch of one file (``a/path``, ``b/path``), three lines of context."""
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 f"a/{path}", f"b/{path}", n=3)
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


# gcc quotes names with U+2018/U+2019 under a UTF-8 locale, with ' otherwise
_QUOTED = re.compile("[\u2018'`]([^\u2019'`\n]+)[\u2019']")
_TYPE_WORDS = frozenset({"struct", "union", "enum", "const", "volatile", "unsigned", "signed",
                         "int", "char", "long", "short", "void", "bool", "float", "double"})


def missing_names(build_log: str) -> list[str]:
    """The names a failed build's ``error:`` lines quote, in order: what the file lacks.

    ``‘struct task_struct’ has no member named ‘user_dumpable’`` gives
    ``user_dumpable``: a quoted type is context, not what is missing, and so
    is gcc's ``did you mean`` suggestion.
    """
    out: list[str] = []
    for line in build_log.splitlines():
        if "error:" not in line:
            continue
        msg = line.split("error:", 1)[1].split("did you mean", 1)[0]
        for quoted in _QUOTED.findall(msg):
            words = quoted.split()
            if len(words) != 1 or words[0] in _TYPE_WORDS or not _IDENT.fullmatch(words[0]):
                continue
            if words[0] not in out:
                out.append(words[0])
    return out


def companion_text(old: str, new: str, names: Iterable[str]) -> str:
    """``old`` with those changes of ``new`` applied whose lines name one of ``names``.

    The changes are difflib's line groups (the hunks of a zero-context
    diff); a group is taken when a removed or added line has one of the
    names as a whole word.  The header side of a fix whose ``.c`` side does
    not build alone: a new member, macro, declaration or inline function.
    """
    words = [re.compile(rf"\b{re.escape(n)}\b") for n in names]
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    out: list[str] = []
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in ops:
        changed = "".join(a[i1:i2] + b[j1:j2])
        take = tag != "equal" and any(w.search(changed) for w in words)
        out += b[j1:j2] if take else a[i1:i2]
    return "".join(out)


def defines_function(text: str, name: str) -> bool:
    """Whether C ``text`` has a definition head of function ``name`` at column 0.

    A line starting at column 0 that names ``name(`` and does not end in
    ``;`` (that would be a prototype or a call in a macro line).
    """
    head = re.compile(rf"^(?![\s#]).*\b{re.escape(name)}\s*\((?!.*;\s*$)", re.M)
    return bool(head.search(text))


def changed_files(old_tree: Path, new_tree: Path) -> list[str]:
    """Tree-relative paths of regular files that differ or exist in only one tree (``diff -rq``).

    Documentation, tools, samples and other architectures than x86 are skipped.
    """
    skip = ("Documentation/", "tools/", "samples/", "LICENSES/", "debian/")
    proc = subprocess.run(["diff", "-rq", "--no-dereference", str(old_tree), str(new_tree)],
                          capture_output=True, text=True, check=False)
    if proc.returncode > 1:
        raise RuntimeError(f"diff -rq failed: {proc.stderr.strip()[-300:]}")
    out = set()
    o, n = str(old_tree).rstrip("/") + "/", str(new_tree).rstrip("/") + "/"
    for line in proc.stdout.splitlines():
        m = re.match(r"^Files (\S+) and (\S+) differ$", line)
        if m:
            rel = m.group(1)[len(o):]
        else:
            m = re.match(r"^Only in (\S+?): (\S+)$", line)
            if not m:
                continue
            d = m.group(1) + "/"
            rel = (d[len(o):] if d.startswith(o) else d[len(n):]) + m.group(2)
        if rel.startswith(skip) or (rel.startswith("arch/") and not rel.startswith("arch/x86/")):
            continue
        out.add(rel)
    return sorted(out)


_COMPILE = re.compile(r"-c -o (\S+\.o) (\S+\.c)(?=[\s;']|$)")


def builtin_sources(dry_run: str, tree: str) -> frozenset[str]:
    """The ``.c`` sources compiled into the image, from ``make -n vmlinux modules`` output.

    A module's objects are compiled with ``-DMODULE`` (scripts/Makefile.lib,
    ``modkern_cflags`` takes ``KBUILD_CFLAGS_MODULE`` for ``part-of-module``);
    a compile line without it is built in.  Host programs (no
    ``-D__KERNEL__``) are skipped.  A source compiled both ways counts as
    built in.
    """
    out = set()
    for line in dry_run.splitlines():
        if "-D__KERNEL__" not in line or " -DMODULE " in line:
            continue
        for _obj, src in _COMPILE.findall(line):
            if src.startswith(tree + "/"):
                src = src[len(tree) + 1:]
            out.add(src.removeprefix("./"))
    return frozenset(out)


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*([<"])([^>"\n]+)[>"]', re.M)
INCLUDE_ROOTS = ("include", "arch/x86/include", "include/uapi", "arch/x86/include/uapi")


def changed_includes(text: str, path: str, changed: frozenset[str]) -> list[str]:
    """The headers of ``changed`` that C file ``path`` (its ``text``) includes directly.

    ``<x.h>`` is looked up under the kernel's include roots (INCLUDE_ROOTS),
    ``"x.h"`` beside the file as well.  Such a case may not build alone: the
    cut has no commit boundaries to pair a file with its header change.
    """
    out = []
    for kind, name in _INCLUDE.findall(text):
        cands = [f"{root}/{name}" for root in INCLUDE_ROOTS]
        if kind == '"':
            cands.insert(0, posixpath.normpath(posixpath.join(posixpath.dirname(path), name)))
        out += [c for c in cands if c in changed and c not in out]
    return out


def cut(old_tree: Path, new_tree: Path, paths: Iterable[str],
        built: frozenset[str]) -> tuple[list[Case], dict[str, str]]:
    """The cases of the changed ``paths``, and case name -> patch text for the built ``.c`` ones."""
    cases, patches = [], {}
    paths = list(paths)
    headers = frozenset(p for p in paths if p.endswith(".h"))
    for path in paths:
        kind = file_kind(path, built)
        if kind is not None:
            cases.append(Case(path, kind, why={"header": "a header (reaches many objects)",
                                               "notbuilt": "not compiled into the image",
                                               "other": "not a C file"}[kind]))
            continue
        a, b = old_tree / path, new_tree / path
        old = a.read_text(errors="replace") if a.is_file() else ""
        new = b.read_text(errors="replace") if b.is_file() else ""
        cl = classify(old, new)
        case = Case(path, cl.kind, list(cl.functions), cl.why,
                    headers=changed_includes(new, path, headers))
        cases.append(case)
        patches[case.name] = unified(path, old, new)
    return cases, patches


# -- the report ------------------------------------------------------------------------------


def _mark(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "NO")


def table(cases: Sequence[Case]) -> list[str]:
    """The markdown table: case, kind, created, applied, undone, reason."""
    rows = ["| case | kind | created | applied | undone | reason |",
            "|---|---|---|---|---|---|"]
    for c in cases:
        reason = c.reason or c.why
        if c.companions:
            reason += f" [with hunks of {', '.join(c.companions)}]"
        elif c.created is False and c.headers:
            reason += f" [includes changed {', '.join(c.headers)}]"
        reason = reason.replace("|", "/")[:220]
        rows.append(f"| {c.path} | {c.kind} | {_mark(c.created)} | {_mark(c.applied)} | "
                    f"{_mark(c.undone)} | {reason} |")
    return rows


NO_OBJECT_CHANGE = "create: no change in the object (the config compiles it out, or const/ONCE)"
INIT_ONLY = "create: only __init/__exit code changes (nothing running to patch)"
BUILD_ALONE = "create: does not build alone (needs a companion change the cut lacks)"
OVER_BUDGET = "the header side it needs reaches more objects than the harness builds"
NOT_A_FIX = (NO_OBJECT_CHANGE, INIT_ONLY, BUILD_ALONE, "create: " + OVER_BUDGET)


def reason_group(reason: str) -> str:
    """A reason with its particulars dropped, to group a run's reasons by cause.

    The create refusals that say nothing about live patching get fixed names
    (NOT_A_FIX): no change in the object, only ``__init``/``__exit`` code
    changed, a patch that does not build without a change the per-file cut
    left out (nor with the header hunks found for it), and one whose header
    side reaches more objects than the harness builds (OVER_BUDGET); they
    are not counted as code fixes in ``code_fixes``.
    """
    if "only __init/__exit code changed" in reason:
        return INIT_ONLY
    if "No changes detected" in reason:
        return NO_OBJECT_CHANGE
    if "break the kernel build" in reason:
        return BUILD_ALONE
    if OVER_BUDGET in reason:
        return "create: " + OVER_BUDGET
    text = re.sub(r"0x[0-9a-f]+|\b[0-9a-f]{8,}\b", "#", reason)
    text = re.sub(r"update \w{8}", "update #", text)
    return text[:100]


def totals(cases: Sequence[Case], all_cases: Sequence[Case]) -> dict:
    """Counts per kind over the whole cut, created/applied/undone per kind of the run, the
    reasons grouped (:func:`reason_group`), and ``code_fixes``: the code cases less those
    whose refusal is not about live patching (NOT_A_FIX), with how many applied and undid."""
    out: dict = {"cut": {k: sum(c.kind == k for c in all_cases) for k in KINDS}, "run": {}}
    for k in BUILT_KINDS:
        mine = [c for c in cases if c.kind == k]
        if mine:
            out["run"][k] = {"cases": len(mine), "created": sum(bool(c.created) for c in mine),
                             "applied": sum(bool(c.applied) for c in mine),
                             "undone": sum(bool(c.undone) for c in mine)}
    reasons: dict[str, int] = {}
    for c in cases:
        if c.reason:
            key = reason_group(c.reason)
            reasons[key] = reasons.get(key, 0) + 1
    out["reasons"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
    code = [c for c in cases if c.kind == "code"]
    unmeasurable = [c for c in code if c.reason and reason_group(c.reason) in NOT_A_FIX]
    fixes = [c for c in code if c not in unmeasurable]
    out["code_fixes"] = {"cases": len(code), "unmeasurable": len(unmeasurable),
                         "measured": len(fixes), "created": sum(bool(c.created) for c in fixes),
                         "applied": sum(bool(c.applied) for c in fixes),
                         "undone": sum(bool(c.undone) for c in fixes)}
    out["log_lines"] = sum(len(c.log) for c in cases)
    return out


def to_json(cases: Sequence[Case], all_cases: Sequence[Case], meta: Mapping) -> str:
    return json.dumps({"meta": dict(meta), "totals": totals(cases, all_cases),
                       "cases": [asdict(c) for c in cases]}, indent=1) + "\n"


# -- the guest side ----------------------------------------------------------------------------


def jump_ok(code: bytes, site: int, repl: int) -> bool:
    """True when ``code`` (bytes at ``site``) is ``jmp rel32`` landing on ``repl``."""
    if len(code) < 5 or code[0] != JMP32:
        return False
    rel = int.from_bytes(code[1:5], "little", signed=True)
    return (site + 5 + rel) & 0xFFFFFFFFFFFFFFFF == repl


def parse_patches(text: str) -> list[dict[str, str]]:
    """The primary's ``patches`` lines: ``name key=value...`` -> dicts with ``name``."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "=" in parts[1]:
            d = {"name": parts[0]}
            d.update(p.split("=", 1) for p in parts[1:] if "=" in p)
            out.append(d)
    return out


def site_patched(row: dict[str, str], proc: Path = Path("/proc")) -> bool:
    """Is the patch site of a ``patches`` row now a jmp to its replacement?

    Read from ``proc/kcore`` (:func:`jump_ok`); a kernel without
    CONFIG_PROC_KCORE (the project's test kernels) is checked by the
    primary's own hashes of the old function instead: ``now=`` differs from
    ``before=`` (weaker: the bytes changed, not which jump they hold).
    """
    kc = proc / "kcore"
    if not kc.exists():
        return bool(row.get("before")) and row.get("before") != row.get("now")
    site, repl = int(row["site"], 16), int(row["repl"], 16)
    return jump_ok(kcore.read_kcore(kc, site, 5), site, repl)


def _guest_case(kernel, case: str, tarball: Path, workdir: Path, log_seen: list[int]) -> dict:
    from ksplice_tasks.target import apply as ap  # guest-only import

    res: dict = {"case": case, "applied": False, "undone": False, "reason": "", "log": []}

    def new_log(step: str) -> None:
        lines = subprocess.run(["dmesg"], capture_output=True, text=True,
                               check=False).stdout.splitlines()
        fresh = lines[log_seen[0]:]
        log_seen[0] = len(lines)
        res["log"] += [f"{step}: {ln}" for ln in fresh if BAD_LOG.search(ln)]

    def check_jumps(primary: str) -> str:
        rows = parse_patches(kernel.read(primary, "patches"))
        if not rows:
            return "no patches listed"
        for r in rows:
            if not site_patched(r):
                return f"{r['name']}: no jmp to the replacement at its site"
        return ""

    def restored(primary: str) -> str:
        bad = [r["name"] for r in parse_patches(kernel.read(primary, "patches"))
               if r.get("before") != r.get("now")]
        return f"not restored: {' '.join(bad)}" if bad else ""

    try:
        pkg = ap.extract_package(tarball, workdir)
    except ap.ApplyError as e:
        res["reason"] = str(e)
        return res
    primary = ap.module_name(pkg.id)
    try:
        ap.apply_package(kernel, pkg)
    except ap.ApplyError as e:
        res["reason"] = f"apply: {e}"
        new_log("apply")
        return res
    new_log("apply")
    steps = []
    try:
        bad = check_jumps(primary)
        steps.append(("check", bad))
        for op in ("reverse", "apply", "reverse"):
            try:
                kernel.write(primary, "stage", op)
            except OSError:
                steps.append((op, f"{op} aborted: {kernel.read(primary, 'abort_cause')}"))
                break
            new_log(op)
            steps.append((op, restored(primary) if op == "reverse" else check_jumps(primary)))
    finally:
        try:
            if kernel.read(primary, "stage") == "applied":
                kernel.write(primary, "stage", "reverse")
            kernel.unload(primary)
        except OSError as e:
            steps.append(("unload", f"unload: {e}"))
        new_log("unload")
    res["applied"] = not steps[0][1]
    fails = [why for _op, why in steps if why]
    res["undone"] = len(steps) == 4 and not fails   # check, reverse, apply, reverse
    res["reason"] = fails[0] if fails else ""
    return res


def guest_main(manifest: Path) -> int:
    """Run every update of ``manifest`` (a JSON list of [case, tarball]); ``@@case`` JSON lines."""
    import tempfile

    from ksplice_tasks.target import apply as ap

    kernel = ap.Kernel()
    seen = [len(subprocess.run(["dmesg"], capture_output=True, text=True,
                               check=False).stdout.splitlines())]
    for case, tarball in json.loads(manifest.read_text()):
        print(f"@@start {case}", flush=True)
        with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
            try:
                res = _guest_case(kernel, case, Path(tarball), Path(tmp), seen)
            except Exception as e:  # noqa: BLE001 -- one case's failure must not stop the rest
                res = {"case": case, "applied": False, "undone": False,
                       "reason": f"guest error: {type(e).__name__}: {e}", "log": []}
        print("@@case " + json.dumps(res), flush=True)
    return 0


def parse_guest(output: str) -> tuple[dict[str, dict], str | None]:
    """The ``@@case`` results by case, and the case that started but never finished (a crash).

    Each result gains ``runpre_failed``: the functions ksplice-apply reported
    as ``run-pre: <function>: failed`` (or ``several``) between the case's
    ``@@start`` and its result.
    """
    results, started = {}, None
    failed: list[str] = []
    for line in output.splitlines():
        if line.startswith("@@start "):
            started, failed = line[8:].strip(), []
        elif line.startswith("run-pre: "):
            parts = line[9:].split(": ")
            if len(parts) >= 2 and parts[1].split()[0] in ("failed", "several"):
                failed.append(parts[0] + ("" if parts[1].startswith("failed") else " (several)"))
        elif line.startswith("@@case "):
            try:
                r = json.loads(line[7:])
            except ValueError:
                continue
            r["runpre_failed"] = failed if r.get("case") == started else []
            results[r["case"]] = r
            if r["case"] == started:
                started = None
    return results, started


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "guest":
        sys.exit(guest_main(Path(sys.argv[2])))
    print("usage: python -m ksplice_tasks.testing.corpus guest MANIFEST.json", file=sys.stderr)
    sys.exit(2)
