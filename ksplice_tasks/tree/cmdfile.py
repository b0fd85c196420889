# SPDX-License-Identifier: GPL-2.0-only
"""Kbuild's ``.cmd`` files: how each object was built, from what source and headers.

For an object ``dir/name.o`` Kbuild writes ``dir/.name.o.cmd``::

    cmd_dir/name.o := gcc ... -c -o dir/name.o dir/name.c; ./tools/objtool/objtool ...
    source_dir/name.o := dir/name.c
    deps_dir/name.o := \\
      include/linux/kconfig.h \\
        $(wildcard include/config/FOO) \\
      ...

(Linux 6.3 and later spell the first line ``savedcmd_``.) This module is the
one reader of them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_SOURCE_RE = re.compile(rb"^source_(\S+) := (\S+)$", re.M)
_COMMAND_RE = re.compile(rb"^(?:saved)?cmd_(\S+) := (.*)$", re.M)


@dataclass(frozen=True)
class CmdFile:
    """One parsed ``.cmd`` file.

    ``object`` and ``source`` are as Kbuild wrote them (relative to the
    build directory, or absolute for an O= build's sources); ``deps`` are the
    headers and other files the compiler read (``$(wildcard ...)`` entries
    left out); ``command`` is the shell command line Kbuild ran. Each is
    None (or empty) when the file does not say.
    """

    object: str | None
    source: str | None
    deps: frozenset[str] = field(default_factory=frozenset)
    command: str | None = None

    def commands(self) -> list[list[str]]:
        """The command line as argument lists, one per ``;``-separated command.

        Quotes are honoured as the shell would (``-DX='"a;b"'`` stays one
        argument); an empty list when there is no command.
        """
        if not self.command:
            return []
        lexer = shlex.shlex(self.command, posix=True, punctuation_chars=";")
        lexer.whitespace_split = True
        out: list[list[str]] = [[]]
        for token in lexer:
            if token and set(token) == {";"}:
                out.append([])
            else:
                out[-1].append(token)
        return [argv for argv in out if argv]


def parse(data: bytes) -> CmdFile:
    """A ``.cmd`` file's contents, parsed.

    Only a file with a ``source_`` line (a compiled object) names an object,
    a source and deps; a link step's file has just its command.
    """
    command = None
    cm = _COMMAND_RE.search(data)
    if cm:
        command = cm.group(2).decode(errors="replace").strip()
    m = _SOURCE_RE.search(data)
    if not m:
        return CmdFile(None, None, frozenset(), command)
    obj, source = m.group(1).decode(), m.group(2).decode()
    deps: set[str] = set()
    marker = b"deps_" + m.group(1) + b" := \\\n"
    start = data.find(marker)
    if start >= 0:
        for line in data[start + len(marker):].splitlines():
            word = line.strip().rstrip(b"\\").strip()
            if not word or not line.startswith(b" "):
                break
            if not word.startswith(b"$("):
                deps.add(word.decode(errors="replace"))
    return CmdFile(obj, source, frozenset(deps), command)


def is_object_cmd(name: str) -> bool:
    """True for the file name of an object's ``.cmd`` file (``.name.o.cmd``)."""
    return name.startswith(".") and name.endswith(".o.cmd")


def cmd_path(tree: Path, obj: str) -> Path:
    """Where Kbuild keeps the ``.cmd`` file of ``obj`` (relative to ``tree``)."""
    rel = Path(obj)
    return tree / rel.parent / f".{rel.name}.cmd"


def read(tree: Path, obj: str) -> CmdFile | None:
    """The parsed ``.cmd`` file of ``obj`` in ``tree``; None when there is none."""
    try:
        return parse(cmd_path(tree, obj).read_bytes())
    except FileNotFoundError:
        return None
