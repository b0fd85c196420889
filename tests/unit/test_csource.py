# SPDX-License-Identifier: GPL-2.0-only
"""The C lexical spans both source scans share (tree/csource.py)."""

from __future__ import annotations

from ksplice_tasks.tree.csource import blank_comments, lexical_spans, strip_c


def test_spans_kinds_and_bounds() -> None:
    text = 'a /* b { */ c "d\\"}" \'e\' // f\n"open\nz'
    spans = [(k, text[s:e]) for k, s, e in lexical_spans(text)]
    assert spans == [("comment", "/* b { */"), ("literal", '"d\\"}"'), ("literal", "'e'"),
                     ("comment", "// f"), ("open_literal", '"open')]


def test_a_comment_opener_inside_a_literal_is_text() -> None:
    assert [k for k, _, _ in lexical_spans('s = "/*"; x; /* c */')] == ["literal", "comment"]


def test_blank_keeps_offsets_lines_and_quotes() -> None:
    text = 'struct a { /* {\n } */ int x; }; char *s = "{ ; }";\n"open {\n'
    out = blank_comments(text)
    assert len(out) == len(text) and out.count("\n") == text.count("\n")
    assert out.count("{") == 1 and out.count("}") == 1
    assert '"     "' in out and out.endswith('"      \n')


def test_strip_keeps_literals_whole_and_drops_space() -> None:
    assert strip_c('x = "/* a */";  // c\n') == 'x="/* a */";'
    assert strip_c("a /* b */ c") == "ac"
    assert strip_c('p("a  b" ,\n  1)') == 'p("a  b",1)'
