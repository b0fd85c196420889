# SPDX-License-Identifier: GPL-2.0-only
"""The lexical spans of C source text: comments and string/character literals.

C11 §6.4.9 (comments) and §6.4.4.4, §6.4.5 (character constants, string
literals).  Source scans of patched files (the data-layout check, the
corpus harness's no-op test) must not read a brace, a ``sizeof`` or a
keyword inside a comment or a literal; this module finds where those are.
A literal ends at its closing quote or, unterminated, at the end of its line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

SpanKind = Literal["comment", "literal", "open_literal"]


def lexical_spans(text: str) -> Iterator[tuple[SpanKind, int, int]]:
    """``(kind, start, end)`` of each comment and literal of ``text``, in order.

    ``end`` is exclusive; a literal's span includes its quotes.  A literal
    its line ends before the closing quote is an ``open_literal``, its span
    up to the newline; an unterminated ``/*`` runs to the end of the text.
    """
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            yield "comment", i, end
        elif c == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            yield "comment", i, end
        elif c in "\"'":
            end = i + 1
            while end < n and text[end] != c and text[end] != "\n":
                end += 2 if text[end] == "\\" else 1
            end = min(end, n)
            if end < n and text[end] == c:
                end += 1
                yield "literal", i, end
            else:
                yield "open_literal", i, end
        else:
            i += 1
            continue
        i = end


def blank_comments(text: str) -> str:
    """``text`` with comments and string/char literals' contents turned into spaces.

    Newlines are kept, so offsets and line numbers stay those of ``text``;
    a literal keeps its quotes.
    """
    out = list(text)
    for kind, start, end in lexical_spans(text):
        if kind != "comment":
            start, end = start + 1, end - (kind == "literal")
        for k in range(start, end):
            if out[k] != "\n":
                out[k] = " "
    return "".join(out)


def strip_c(text: str) -> str:
    """``text`` without C comments and without any white space (string literals kept whole).

    Two files with equal results differ only in comments or layout: a no-op
    change.  (``a b`` and ``ab`` compare equal; no real patch is that.)
    """
    out: list[str] = []
    pos = 0
    for kind, start, end in lexical_spans(text):
        out.append("".join(text[pos:start].split()))
        if kind != "comment":
            out.append(text[start:end])
        pos = end
    out.append("".join(text[pos:].split()))
    return "".join(out)
