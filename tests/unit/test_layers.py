# SPDX-License-Identifier: GPL-2.0-only
"""The package's rooms import only downward, as ARCHITECTURE.md draws them."""

from __future__ import annotations

import ast
from pathlib import Path

import ksplice_tasks

PKG = Path(ksplice_tasks.__file__).resolve().parent

# room -> the rooms it may import (itself always included).
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "obj": {"base"},
    "tree": {"base"},
    "encode": {"base"},
    "stages": {"base", "obj", "tree", "encode"},
    "target": {"base", "encode"},
    "distro": {"base"},
    "front": {"base", "obj", "tree", "encode", "stages", "target", "distro"},
    "testing": {"base", "obj", "tree", "encode", "stages", "target", "distro", "front"},
}
FRONT = {"graph", "cli", "reporter"}


def room_of(module: str) -> str:
    """``ksplice_tasks.obj.objdiff`` -> ``obj``; top-level modules are base or front."""
    parts = module.split(".")[1:]
    if not parts:
        return "base"
    if parts[0] in ALLOWED:
        return parts[0]
    return "front" if parts[0] in FRONT else "base"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every ksplice_tasks module a file imports, relative imports resolved."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ksplice_tasks")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("ksplice_tasks"):
                continue
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names
                    if (PKG.parent / f"{base}.{a.name}".replace(".", "/")).with_suffix(".py")
                    .is_file() or (PKG.parent / f"{base}.{a.name}".replace(".", "/")).is_dir()}
    return out


def test_rooms_import_only_downward() -> None:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        me = room_of(module_name(path))
        for mod in imports_of(path):
            other = room_of(mod)
            if other != me and other not in ALLOWED[me] and mod != "ksplice_tasks":
                bad.append(f"{module_name(path)} ({me}) imports {mod} ({other})")
    assert not bad, "\n".join(bad)


def test_every_module_is_in_a_known_room() -> None:
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).parts
        assert len(rel) == 1 or rel[0] in ALLOWED, path


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule can fail: an obj module importing a stage is caught."""
    assert room_of("ksplice_tasks.stages.extract") == "stages"
    assert "stages" not in ALLOWED[room_of("ksplice_tasks.obj.objdiff")]
    assert room_of("ksplice_tasks.graph") == "front"
    assert room_of("ksplice_tasks.errors") == "base"
    assert room_of("ksplice_tasks.distro.debian") == "distro"
    assert ALLOWED["distro"] == {"base"}
