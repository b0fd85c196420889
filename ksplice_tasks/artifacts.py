# SPDX-License-Identifier: GPL-2.0-only
"""The records handed from task to task: plain, typed data with one JSON form each.

Lower rooms produce them (the object passes) and higher ones consume them
(the table encoder, the collect stage), so they live here, below both.

Each record is written as a JSON object holding its dataclass fields plus
``"artifact"`` (the record's kind) and ``"version"``. :class:`Codec` is the
one reader and writer: loading refuses a missing, unknown or mistyped field,
another kind or another version with :class:`ArtifactError`, naming the
field. :meth:`Codec.schema` derives a JSON Schema from the same field types.
"""

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

KIND_KEY = "artifact"
VERSION_KEY = "version"


class ArtifactError(ValueError):
    """A record file that is not what its reader expects (kind, version or fields)."""


# -- the records ---------------------------------------------------------------------


@dataclass(frozen=True)
class RelocRecord:
    """A relocation taken out of an object, to be resolved at load time.

    ``symbol`` is the name the running kernel knows the target by (for an
    anonymous target, the name of the section it lies in); the field is
    ``size`` bytes at ``offset`` in output section ``section``, inside
    function ``function`` when it is code.  The value to store is
    ``S + addend`` (minus the field's address when ``pcrel``).  ``local`` is
    True when the target is defined in the object itself with local binding
    (a static symbol, or a section): then another object may have a target
    of the same name, and the tables give it the object's label
    (:func:`ksplice_tasks.names.symbol_label`).
    """

    symbol: str
    section: str
    offset: int
    pcrel: bool
    addend: int
    size: int
    type: int
    signed: bool
    function: str = ""
    local: bool = False


@dataclass(frozen=True)
class SiteRecord:
    """A spot of helper code that the kernel rewrites at boot, from the pre object's tables.

    ``kind`` is one of :data:`ksplice_tasks.obj.objmanip.SITE_KINDS`; the
    instruction is ``length`` bytes at ``offset`` in output section
    ``section``.  ``reg`` is the register of a retpoline site (0-15), and
    ``target`` the offset in ``section`` a jump label, a plain branch or an
    alternative's replacement jumps to (-1 when it jumps elsewhere).  An
    alternative's variant also has ``feature`` (cpuid word with the
    ``ALTINSTR_FLAG_INV`` bit), ``template`` (its final bytes, hex),
    ``repl_len``, the ``symbol`` + ``addend`` its 5-byte call/jmp reaches,
    and ``flags`` (:data:`ksplice_tasks.obj.bootpatch.ALT_ORIGINAL`, ``ALT_UNSUPPORTED``).
    """

    section: str
    offset: int
    kind: str
    length: int
    reg: int = 0
    target: int = -1
    feature: int = 0
    template: str = ""
    repl_len: int = 0
    symbol: str = ""
    addend: int = 0
    flags: int = 0


@dataclass(frozen=True)
class SizeRecord:
    """A function's name, size (bytes) and section, for the sizes table.

    ``local``: the function has local binding (``static``) in its object.
    """

    name: str
    size: int
    section: str
    local: bool = False


@dataclass(frozen=True)
class DiffRecord:
    """``diff.json``: what objdiff found in one changed object (post object's names).

    ``pre``/``post`` are the object's tree-relative path, ``source`` its
    source file (from Kbuild's ``.cmd``; None when unknown). ``keep`` is
    what keep-primary keeps (changed and new functions); ``empty`` means
    nothing is to be kept (say, only ``__LINE__`` constants changed).
    """

    pre: str
    post: str
    source: str | None
    changed: list[str]
    new: list[str]
    removed: list[str]
    line_only: list[str]
    sections: list[str]
    section_indices: list[int]
    new_data: list[str]
    renames: dict[str, str]
    keep: list[str]
    empty: bool


@dataclass(frozen=True)
class ObjectRecords:
    """``records.json``: one object's passes, what collect links and tabulates.

    ``tag`` is the object's symbol tag (:func:`ksplice_tasks.names.object_tag`).
    The relocation and size lists are empty when ``empty``. ``primary_sha256``
    and ``helper_sha256`` are the SHA-256 of the objects the passes wrote: the
    record is collect's file dependency, so new code with the same relocations
    and sizes (another string, another constant) must still change it.
    """

    object: str
    tag: str
    changed: list[str]
    new: list[str]
    renames: dict[str, str]
    empty: bool
    primary_relocs: list[RelocRecord] = field(default_factory=list)
    helper_relocs: list[RelocRecord] = field(default_factory=list)
    primary_sizes: list[SizeRecord] = field(default_factory=list)
    helper_sizes: list[SizeRecord] = field(default_factory=list)
    helper_sites: list[SiteRecord] = field(default_factory=list)
    primary_sha256: str = ""
    helper_sha256: str = ""


@dataclass(frozen=True)
class PatchRecord:
    """``post-patch.json``: the patch the post tree holds.

    ``files`` maps each tree-relative path the patch touches to the SHA-256
    of its patched content (None: the patch deletes it). ``update_id`` is
    derived from the patch, its options and ORIG_CONFIG.
    """

    applied_ns: int
    patch_sha256: str | None
    patch_opts: list[str]
    files: dict[str, str | None]
    update_id: str


@dataclass(frozen=True)
class PostBuild:
    """``post-build.json``: what the post build rebuilt and which objects changed.

    ``mode`` is ``objects`` (``make`` of the ``targets``), ``full``, or
    ``targeted`` (a targeted prebuild: the ``targets`` were built in the pre
    tree too); ``seconds`` is make's wall time.
    """

    mode: str
    targets: list[str]
    changed: list[str]
    seconds: float
    returncode: int


@dataclass(frozen=True)
class PreBuildStamp:
    """``pre-build.json``: the last pre build, and the fingerprint that skips the next.

    ``fingerprint`` covers the ``inputs`` files the build read or wrote
    (listed in ``pre-inputs.json``); ``finished`` is a Unix time in seconds.
    ``mode`` is ``full`` or ``targeted``; a targeted build's inventory and
    include index were written in ``index_format`` (their codecs' versions).
    """

    ksrc: str
    inputs: int
    fingerprint: str
    returncode: int
    objects_compiled: int
    objects_total: int
    seconds: float
    finished: float
    mode: str = "full"
    index_format: int = 0


@dataclass(frozen=True)
class ObjectInventory:
    """``inventory.json``: every object the target's config builds, from ``make -n``.

    Written by a targeted prebuild (:mod:`ksplice_tasks.tree.deps`).
    ``objects`` maps a tree-relative object to ``(source, include-set index,
    forced-include-set index)``; the sets are lists of tree-relative paths
    (``-I``/``-iquote`` directories, ``-include`` files), shared by many objects.
    """

    objects: dict[str, tuple[str, int, int]]
    include_sets: list[list[str]]
    forced_sets: list[list[str]]


@dataclass(frozen=True)
class IncludeIndex:
    """``includes.json``: the ``#include`` lines of the pre tree's C, header and asm files.

    ``files`` lists every scanned file (tree-relative). Include line ``i`` is
    ``#include "name[i]"`` (``quoted[i]``) or ``<name[i]>`` in file
    ``files[includer[i]]``: three columns, which load fast (500,000 lines on
    Debian's tree).
    """

    files: list[str]
    includer: list[int]
    name: list[str]
    quoted: list[bool]


@dataclass(frozen=True)
class ModulesRecord:
    """``modules.json``: the built update modules (file names in the module directory).

    The SHA-256 of each module makes the record change whenever a module does.
    """

    update_id: str
    primary: str
    helper: str
    primary_sha256: str
    helper_sha256: str


@dataclass(frozen=True)
class DebianTarget:
    """``debian-target.json``: a target directory made from Debian's packages (distro.debian).

    ``release`` is the target's ``uname -r`` (``6.1.0-57-amd64``) and
    ``package_version`` the one Debian package version of its image, headers and
    source (``6.1.192-3``); ``packages`` maps each downloaded package to its
    version. The paths are relative to the directory holding the record:
    ``source`` the source tree, ``orig_config`` ORIG_CONFIG in it, ``image``
    the unpacked image package, ``vmlinuz`` and ``modules`` in it, and
    ``system_map`` the real System.map (None without the -dbg package).
    """

    release: str
    flavour: str
    package_version: str
    packages: dict[str, str]
    source: str
    orig_config: str
    image: str
    vmlinuz: str
    modules: str
    system_map: str | None


# -- one JSON form per record ------------------------------------------------------------


@dataclass(frozen=True)
class Codec(Generic[T]):
    """The JSON form of one dataclass: ``dump``, strict ``load``, and its JSON ``schema``.

    ``cls`` may be any dataclass whose fields are JSON-able: str, int, float,
    bool, None, unions with None, lists, tuples, sequences, string-keyed
    dicts and nested dataclasses.
    """

    cls: type[T]
    kind: str
    version: int = 1

    def dump(self, obj: T) -> dict[str, Any]:
        """The record as a JSON-ready dict, with its kind and version first."""
        if type(obj) is not self.cls:
            raise TypeError(f"{self.kind}: expected {self.cls.__name__}, got "
                            f"{type(obj).__name__}")
        return {KIND_KEY: self.kind, VERSION_KEY: self.version, **_encode(obj)}

    def dumps(self, obj: T) -> str:
        """The record as JSON text (sorted keys, one space indent, final newline)."""
        return json.dumps(self.dump(obj), indent=1, sort_keys=True) + "\n"

    def load(self, data: object, where: str = "") -> T:
        """The record from a parsed JSON value; ArtifactError names what is wrong."""
        prefix = f"{where}: " if where else ""
        if not isinstance(data, dict):
            raise ArtifactError(f"{prefix}not a {self.kind} record (not a JSON object)")
        if data.get(KIND_KEY) != self.kind:
            raise ArtifactError(f"{prefix}not a {self.kind} record "
                                f"({KIND_KEY} is {data.get(KIND_KEY)!r})")
        if data.get(VERSION_KEY) != self.version:
            raise ArtifactError(f"{prefix}{self.kind} record version "
                                f"{data.get(VERSION_KEY)!r}, this ksplice-py reads "
                                f"version {self.version}")
        body = {k: v for k, v in data.items() if k not in (KIND_KEY, VERSION_KEY)}
        try:
            return _decode(self.cls, body, "")
        except ArtifactError as e:
            raise ArtifactError(f"{prefix}bad {self.kind} record: {e}") from None

    def loads(self, text: str, where: str = "") -> T:
        """The record from JSON text."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ArtifactError(f"{where + ': ' if where else ''}not JSON: {e}") from None
        return self.load(data, where)

    def read(self, path: Path) -> T:
        """The record in file ``path``; OSError if unreadable, ArtifactError if wrong."""
        return self.loads(path.read_text(), str(path))

    def schema(self) -> dict[str, Any]:
        """A JSON Schema (draft 2020-12) of the record's JSON form."""
        top = _schema(self.cls)
        top["properties"] = {KIND_KEY: {"const": self.kind},
                             VERSION_KEY: {"const": self.version}, **top["properties"]}
        top["required"] = [KIND_KEY, VERSION_KEY, *top["required"]]
        return {"$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": self.kind, **top}


DIFF = Codec(DiffRecord, "objdiff")
RECORDS = Codec(ObjectRecords, "object-records")
POST_PATCH = Codec(PatchRecord, "post-patch")
POST_BUILD = Codec(PostBuild, "post-build")
PRE_BUILD = Codec(PreBuildStamp, "pre-build")
INVENTORY = Codec(ObjectInventory, "object-inventory")
INCLUDES = Codec(IncludeIndex, "include-index")
MODULES = Codec(ModulesRecord, "modules")
DEBIAN_TARGET = Codec(DebianTarget, "debian-target")


# -- the type walk both directions share ------------------------------------------------


# Item types a list of which is checked in one pass (JSON gives exactly these types).
_EXACT = (str, int, bool)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Field name -> type (evaluating string annotations costs a compile each: once per class)."""
    return typing.get_type_hints(cls)


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"not JSON-able in a record: {type(value).__name__}")


def _describe(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _decode(tp: Any, value: object, where: str) -> Any:
    here = where or "record"
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _decode(arg, value, where)
            except ArtifactError as e:
                errors.append(str(e))
        raise ArtifactError("; ".join(errors) or f"{here}: unexpected null")
    if tp is type(None):
        if value is not None:
            raise ArtifactError(f"{here}: expected null, got {_describe(value)}")
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ArtifactError(f"{here}: expected an object, got {_describe(value)}")
        hints = _hints(tp)
        fields = dataclasses.fields(tp)
        names = [f.name for f in fields]
        # A field added later with a default reads records written before it.
        missing = [f.name for f in fields if f.name not in value
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        unknown = sorted(set(value) - set(names))
        if missing:
            raise ArtifactError(f"{here}: missing field(s) {', '.join(missing)}"
                                if where else f"missing field(s) {', '.join(missing)}")
        if unknown:
            raise ArtifactError(f"{here}: unknown field(s) {', '.join(unknown)}"
                                if where else f"unknown field(s) {', '.join(unknown)}")
        return tp(**{n: _decode(hints[n], value[n], f"{where}.{n}" if where else n)
                     for n in names if n in value})
    if tp is bool:
        if not isinstance(value, bool):
            raise ArtifactError(f"{here}: expected a boolean, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArtifactError(f"{here}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArtifactError(f"{here}: expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ArtifactError(f"{here}: expected a string, got {_describe(value)}")
        return value
    if origin is tuple and typing.get_args(tp) and typing.get_args(tp)[-1] is not Ellipsis:
        args = typing.get_args(tp)  # a fixed-length tuple, tuple[str, int]: one type per place
        if not isinstance(value, list) or len(value) != len(args):
            raise ArtifactError(f"{here}: expected a list of {len(args)}, got "
                                f"{_describe(value)}")
        return tuple(_decode(a, v, f"{where}[{i}]")
                     for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list):
            raise ArtifactError(f"{here}: expected a list, got {_describe(value)}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        if item in _EXACT and all(type(v) is item for v in value):
            return tuple(value) if origin is tuple else list(value)  # fast path, same result
        items = [_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise ArtifactError(f"{here}: expected an object, got {_describe(value)}")
        args = typing.get_args(tp)
        item = args[1] if len(args) == 2 else Any
        return {k: _decode(item, v, f"{where}[{k!r}]") for k, v in value.items()}
    raise TypeError(f"{here}: no JSON form for type {tp!r}")


def _schema(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if tp is Any:
        return {}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema(a) for a in typing.get_args(tp)]}
    if tp is type(None):
        return {"type": "null"}
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        fields = dataclasses.fields(tp)
        required = [f.name for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        return {"type": "object", "properties": {f.name: _schema(hints[f.name]) for f in fields},
                "required": required, "additionalProperties": False}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in simple:
        return {"type": simple[tp]}
    if origin is tuple and typing.get_args(tp) and typing.get_args(tp)[-1] is not Ellipsis:
        args = typing.get_args(tp)
        return {"type": "array", "prefixItems": [_schema(a) for a in args],
                "minItems": len(args), "maxItems": len(args)}
    if origin in (list, tuple, Sequence):
        args = typing.get_args(tp)
        return {"type": "array", "items": _schema(args[0] if args else Any)}
    if origin in (dict, Mapping):
        args = typing.get_args(tp)
        return {"type": "object",
                "additionalProperties": _schema(args[1] if len(args) == 2 else Any)}
    raise TypeError(f"no JSON Schema for type {tp!r}")
