# SPDX-License-Identifier: GPL-2.0-only
"""Every name an update is known by: its id, its files, its modules, its symbols.

The update id is 8 characters from ``[a-z0-9]``. From it come the tarball
``ksplice-<id>.tar.gz`` and its top directory ``ksplice-<id>/``, the module
files ``ksplice-<id>.ko`` and ``ksplice-<id>-helper.ko``, and the names the
kernel knows the loaded modules by (``/sys/module/ksplice_<id>[_helper]``).

Inside the modules every symbol taken from a changed object carries that
object's tag and the side it came from::

    <name>____<tag>_<side>[_global]

``<tag>`` tells objects apart (functions of two files may share a name),
``<side>`` is ``pre`` (the helper: the running code, for run-pre matching)
or ``post`` (the primary: the new code), and ``_global`` marks the global
alias the globalize pass adds, which the ``.ksplice.*`` tables point at.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# -- update ids -------------------------------------------------------------------

ID_PATTERN = "[a-z0-9]{8}"
ID_RE = re.compile(rf"^{ID_PATTERN}$")
ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def is_id(text: str) -> bool:
    """True when ``text`` is a well-formed update id."""
    return bool(ID_RE.match(text))


def check_id(update_id: str) -> str:
    """Return ``update_id`` unchanged; raise ValueError unless it is 8 chars from [a-z0-9].

    Such an id is usable in module names, file names and C identifiers alike.
    """
    if not is_id(update_id):
        raise ValueError(f"update id must be 8 characters from [a-z0-9]: {update_id!r}")
    return update_id


# -- files and modules --------------------------------------------------------------

PRIMARY, HELPER = "primary", "helper"
ROLES = (PRIMARY, HELPER)


def check_role(role: str) -> str:
    """Return ``role`` unchanged; ValueError unless it is ``primary`` or ``helper``."""
    if role not in ROLES:
        raise ValueError(f"module role must be one of {ROLES}, not {role!r}")
    return role


def _role_suffix(role: str) -> str:
    return "-helper" if check_role(role) == HELPER else ""


def package_dir(update_id: str) -> str:
    """``ksplice-<id>``: the tarball's one top directory."""
    return f"ksplice-{update_id}"


def tarball_name(update_id: str) -> str:
    """``ksplice-<id>.tar.gz``: the file ksplice-create writes."""
    return f"{package_dir(update_id)}.tar.gz"


TARBALL_RE = re.compile(rf"ksplice-({ID_PATTERN})\.tar\.gz")
PACKAGE_DIR_RE = re.compile(rf"^ksplice-({ID_PATTERN})$")


def tarball_id(name: str) -> str | None:
    """The id in a tarball file name ``ksplice-<id>.tar.gz``; None for any other name."""
    m = TARBALL_RE.fullmatch(name)
    return m.group(1) if m else None


def module_file(update_id: str, role: str = PRIMARY) -> str:
    """``ksplice-<id>.ko`` (primary) or ``ksplice-<id>-helper.ko`` (helper)."""
    return f"ksplice-{update_id}{_role_suffix(role)}.ko"


def module_files(update_id: str) -> tuple[str, str]:
    """The file names of the (primary, helper) modules."""
    return module_file(update_id, PRIMARY), module_file(update_id, HELPER)


def sysfs_module(update_id: str, role: str = PRIMARY) -> str:
    """``ksplice_<id>[_helper]``: the loaded module's name (Kbuild turns '-' into '_')."""
    return module_file(update_id, role)[: -len(".ko")].replace("-", "_")


SYSFS_MODULE_RE = re.compile(rf"^ksplice_({ID_PATTERN})$")


def sysfs_module_id(name: str) -> str | None:
    """The id of a loaded primary module's name ``ksplice_<id>``; None for anything else."""
    m = SYSFS_MODULE_RE.match(name)
    return m.group(1) if m else None


# -- per-object symbol names --------------------------------------------------------

TAG_SEP = "____"
PRE, POST = "pre", "post"
SIDES = (PRE, POST)
GLOBAL_SUFFIX = "_global"
# The name may itself contain "____" or end in "_post"; the last separator wins.
_TAGGED_RE = re.compile(r"^(?P<name>.+)____(?P<tag>[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*?)"
                        r"_(?P<side>pre|post)(?P<glob>_global)?$")


def object_tag(rel: str) -> str:
    """The tag of an object at tree-relative path ``rel``: 8 hex digits of its SHA-256.

    It comes from the path, not from the update id, so that a new patch does
    not rename (and redo) the objects it leaves alone.
    """
    return hashlib.sha256(rel.encode()).hexdigest()[:8]


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"symbol side must be 'pre' or 'post', not {side!r}")


def tag_infix(tag: str) -> str:
    """``____<tag>``: what the object passes append to a name before the side."""
    return TAG_SEP + tag


def side_suffix(side: str) -> str:
    """``_pre`` or ``_post``."""
    _check_side(side)
    return "_" + side


def symbol_suffix(tag: str, side: str) -> str:
    """``____<tag>_<side>``: the ending of every symbol one object's side contributes."""
    return tag_infix(tag) + side_suffix(side)


@dataclass(frozen=True)
class TaggedName:
    """A parsed ``<name>____<tag>_<side>[_global]``."""

    name: str
    tag: str
    side: str
    is_global: bool = False

    def __post_init__(self) -> None:
        _check_side(self.side)
        if not self.name or not self.tag:
            raise ValueError(f"a tagged symbol needs a name and a tag: {self!r}")

    def __str__(self) -> str:
        return tagged_name(self.name, self.tag, self.side, is_global=self.is_global)

    def globalized(self) -> TaggedName:
        """The same symbol's ``_global`` alias."""
        return TaggedName(self.name, self.tag, self.side, True)


def tagged_name(name: str, tag: str, side: str, *, is_global: bool = False) -> str:
    """``foo`` -> ``foo____<tag>_<side>`` (``..._global`` for the global alias)."""
    return name + symbol_suffix(tag, side) + (GLOBAL_SUFFIX if is_global else "")


def parse_tagged(symbol: str) -> TaggedName | None:
    """Split a per-object symbol name; None when ``symbol`` is not one."""
    m = _TAGGED_RE.match(symbol)
    if not m:
        return None
    return TaggedName(m.group("name"), m.group("tag"), m.group("side"), bool(m.group("glob")))


def symbol_label(name: str, tag: str, local: bool) -> str:
    """Ksplice's label of a symbol: what tells it apart in the update's tables.

    A global symbol (or one the object only refers to) is known by its
    System.map ``name`` alone.  A symbol of local binding is only unique in
    its object: two objects may each have a ``static`` function of one name,
    and System.map lists both (e.g. an out-of-line copy of a header's static
    inline function).  Its label is ``<name>____<tag>``, so that the kernel
    side keeps one running address per label (kmodsrc/runpre.c).
    """
    return name + tag_infix(tag) if local else name


def global_alias(symbol: str) -> str:
    """The globalize pass's alias of ``symbol`` (a name or a section name)."""
    return symbol + GLOBAL_SUFFIX


def kernel_name(symbol: str, tag: str, side: str) -> str:
    """``f____<tag>_<side>`` -> ``f``, the name the running kernel knows.

    A symbol of another object or side (or no tagged symbol at all) is
    returned unchanged.
    """
    parsed = parse_tagged(symbol)
    if parsed is None or parsed.is_global or parsed.tag != tag or parsed.side != side:
        return symbol
    return parsed.name
