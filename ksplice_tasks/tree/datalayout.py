# SPDX-License-Identifier: GPL-2.0-only
"""Data-layout changes in a patched C file: refused before anything is built.

A live update replaces code; the objects the running kernel already holds
keep the layout it allocated them with. New code that reads a changed
layout reads past or beside what is there. Two source-level facts mark such
a patch, both read from a file's text before and after the patch (pre and
post tree), so the check costs a scan of the touched files (milliseconds)
and runs where the patch is applied, before any build:

- **A changed struct or union definition** (:func:`changed_types`): a
  definition at file scope (brace depth 0) whose members, compared without
  comments and white space, differ before and after. ``.c`` and ``.h`` files
  alike; ``typedef struct { ... } name;`` is named by its typedef, and a
  ``static struct { ... } var;`` by its variable. Not a change: a new
  definition (no object of it exists yet), a removed one, a comment-only
  edit, and a type defined inside a function body (its objects live in that
  function's frame, and a changed function is already checked for being on
  a stack when the update applies). ``enum`` is not checked: a changed
  enumerator changes the constants in the code, which the object comparison
  sees like any other code change. A file-scope type used only for local
  variables is still refused: the text cannot tell where its objects live
  (another file may allocate one, or keep a pointer). Members under ``#ifdef`` count whatever
  the config says (the directive lines are part of the compared text): a
  change the config compiles out is refused too. That is conservative, not
  wrong.
- **A size that now comes from another type** (:func:`changed_sizes`): a
  changed region of lines where a ``sizeof(struct A)`` goes and a
  ``sizeof(struct B)`` comes. A type's size in kernel code is the size of an
  allocation or a copy; when it is taken from another type, objects the
  running kernel allocated with the old size are read with the new one.
  Debian 6.1.176's net/core/net-procfs.c fix is the case: ``proc_create_net``
  of ``ptype`` passes ``sizeof(struct ptype_iter_state)`` (a new type) instead
  of ``sizeof(struct seq_net_private)`` as the seq files' private size
  (fs/proc/proc_net.c ``proc_create_net_data``: ``p->state_size``), and the
  new ``ptype_seq_*`` functions write ``iter->dev`` past the end of every
  private area opened before the update. ``sizeof`` of an expression
  (``sizeof(*p)``) is not compared: changing which variable is measured is
  an ordinary code fix.

Why source and not DWARF: the pre and post objects of a debug-info config
carry every type, but reading them means building first (the refusal would
come minutes later) and walking DWARF with pyelftools, which takes seconds
for a large object; a type that no compiled object uses would not be seen at
all. The text is at hand when the patch is applied. The price is that this
is a kernel-style scanner, not a C parser: a definition hidden in a macro is
not seen.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass

from ksplice_tasks.tree.csource import blank_comments

_DEF_HEAD = re.compile(
    r"\b(struct|union)\s+((?:__\w+(?:\([^()]*(?:\([^()]*\))*[^()]*\))?\s+)*)([A-Za-z_]\w*)?\s*\{")
_TYPE_SIZEOF = re.compile(r"\bsizeof\s*\(\s*((?:struct|union)\s+[A-Za-z_]\w*)\s*\)")
_IDENT = re.compile(r"[A-Za-z_]\w*")


@dataclass(frozen=True)
class TypeDef:
    """One file-scope struct/union definition: ``name`` (``struct foo``, or ``struct (anonymous)
    bar`` when named by the typedef or variable ``bar``), ``line`` (1-based, of its ``{``) and
    ``members``: the text between its braces plus what follows up to ``;`` or ``=`` (attributes
    such as ``__packed``), without comments or white space."""

    name: str
    line: int
    members: str


def _hide_directives(text: str) -> str:
    """Preprocessor lines (with their ``\\`` continuations) with braces and semicolons masked,
    so a ``#define`` holding ``{`` does not open a block; the directive text itself is kept."""
    lines = text.split("\n")
    inside = False
    for k, line in enumerate(lines):
        if inside or line.lstrip().startswith("#"):
            lines[k] = line.replace("{", "@").replace("}", "@").replace(";", "@")
            inside = line.rstrip().endswith("\\")
    return "\n".join(lines)


def _squash(text: str) -> str:
    return "".join(text.split())


def type_defs(text: str) -> list[TypeDef]:
    """The file-scope struct/union definitions of C ``text``, in file order (kernel style).

    A definition opens at ``struct NAME {`` (or ``union``, or nameless) at
    brace depth 0 and ends at its matching ``}``; the name of a nameless one
    is the first identifier after the ``}`` (a typedef's or variable's name),
    ``?`` when none. Definitions inside function bodies or other definitions
    are not listed (the outer one's members hold them).
    """
    src = _hide_directives(blank_comments(text))
    out: list[TypeDef] = []
    depth, i, n = 0, 0, len(src)
    while i < n:
        c = src[i]
        if c == "{":
            m = _head_at(src, i) if depth == 0 else None
            if m:
                close = _matching(src, i)
                tail_end = min(x for x in (src.find(";", close), src.find("=", close), n)
                               if x >= 0)
                tail = src[close + 1:tail_end]
                name = m.group(3)
                if name is None:
                    idents = [x for x in _IDENT.findall(tail) if not x.startswith("__")]
                    name = f"(anonymous) {idents[0] if idents else '?'}"
                line = src.count("\n", 0, i) + 1
                out.append(TypeDef(f"{m.group(1)} {name}", line,
                                   _squash(src[i + 1:close]) + "}" + _squash(tail)))
                i = close + 1
                continue
            depth += 1
        elif c == "}":
            depth = max(0, depth - 1)
        i += 1
    return out


def _head_at(src: str, brace: int) -> re.Match | None:
    """The ``struct NAME {`` head whose ``{`` is at ``brace``, searched back to the last
    ``;`` or ``}``; None when that ``{`` opens something else (a function, an initializer)."""
    start = max(0, src.rfind(";", 0, brace), src.rfind("}", 0, brace))
    for m in _DEF_HEAD.finditer(src, start, brace + 1):
        if m.end() == brace + 1:
            return m
    return None


def _matching(src: str, i: int) -> int:
    """The index of the ``}`` that closes the ``{`` at ``i`` (end of text when unclosed)."""
    depth = 0
    for k in range(i, len(src)):
        if src[k] == "{":
            depth += 1
        elif src[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    return len(src) - 1


@dataclass(frozen=True)
class LayoutChange:
    """A data-layout change found in one file: ``what`` names the type (or the sizes),
    ``line`` is the 1-based line in the patched (post) file."""

    what: str
    line: int


def changed_types(pre: str, post: str) -> list[LayoutChange]:
    """The file-scope struct/union definitions present before and after whose members differ.

    Definitions are matched by name and order of appearance (a type defined
    twice under ``#ifdef`` branches is compared branch by branch).
    """
    before: dict[str, list[TypeDef]] = {}
    for d in type_defs(pre):
        before.setdefault(d.name, []).append(d)
    seen: dict[str, int] = {}
    out: list[LayoutChange] = []
    for d in type_defs(post):
        k = seen.get(d.name, 0)
        seen[d.name] = k + 1
        olds = before.get(d.name, [])
        if k < len(olds) and olds[k].members != d.members:
            out.append(LayoutChange(d.name, d.line))
    return out


def changed_sizes(pre: str, post: str) -> list[LayoutChange]:
    """Changed regions where a ``sizeof(struct A)`` goes and a ``sizeof(struct B)`` comes.

    Lines are compared without comments; ``what`` reads
    ``sizeof(struct A) becomes sizeof(struct B)``.
    """
    gone_any = Counter(" ".join(x.split()) for x in _TYPE_SIZEOF.findall(pre))
    come_any = Counter(" ".join(x.split()) for x in _TYPE_SIZEOF.findall(post))
    if not (gone_any - come_any and come_any - gone_any):
        return []  # no type is measured less often while another is measured more
    a = blank_comments(pre).split("\n")
    b = blank_comments(post).split("\n")
    out: list[LayoutChange] = []
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag != "replace":
            continue
        gone = {" ".join(x.split()) for x in _TYPE_SIZEOF.findall("\n".join(a[i1:i2]))}
        come = {" ".join(x.split()) for x in _TYPE_SIZEOF.findall("\n".join(b[j1:j2]))}
        if gone - come and come - gone:
            line = next(j for j in range(j1, j2) if _TYPE_SIZEOF.search(b[j])) + 1
            out.append(LayoutChange(f"sizeof({sorted(gone - come)[0]}) becomes "
                                    f"sizeof({sorted(come - gone)[0]})", line))
    return out


def layout_changes(pre: str, post: str) -> list[LayoutChange]:
    """:func:`changed_types` then :func:`changed_sizes` of one file's pre and post text."""
    return changed_types(pre, post) + changed_sizes(pre, post)


REASON = "a live update cannot change the layout of data the running kernel holds"


def refusal(rel: str, change: LayoutChange) -> str:
    """The one-line refusal for ``change`` in tree-relative file ``rel``."""
    if change.what.startswith("sizeof("):
        return f"data layout change: {change.what} ({rel}:{change.line}); {REASON}"
    return f"data layout change: {change.what} ({rel}:{change.line}) changes; {REASON}"
