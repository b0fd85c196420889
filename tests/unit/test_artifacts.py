# SPDX-License-Identifier: GPL-2.0-only
"""Each record handed between tasks has one JSON form: it round-trips, and a bad one is refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from ksplice_tasks import artifacts
from ksplice_tasks.artifacts import ArtifactError, Codec
from ksplice_tasks.encode import ksplice_tables as md
from ksplice_tasks.stages.collect import TABLES

RELOC = artifacts.RelocRecord("jiffies", ".text.f____0a1b2c3d_post", 7, True, -4, 4, 2, True,
                              "f____0a1b2c3d_post")
SIZE = artifacts.SizeRecord("f____0a1b2c3d_post", 42, ".text.f____0a1b2c3d_post")

EXAMPLES: list[tuple[Codec, Any]] = [
    (artifacts.DIFF, artifacts.DiffRecord(
        pre="fs/proc/loadavg.o", post="fs/proc/loadavg.o", source="fs/proc/loadavg.c",
        changed=["loadavg_proc_show"], new=["helper"], removed=[], line_only=["x"],
        sections=[".text.loadavg_proc_show"], section_indices=[4], new_data=[],
        renames={"f.isra.0": "f"}, keep=["helper", "loadavg_proc_show"], empty=False)),
    (artifacts.RECORDS, artifacts.ObjectRecords(
        object="fs/proc/loadavg.o", tag="0a1b2c3d", changed=["f"], new=[], renames={},
        empty=False, primary_relocs=[RELOC], helper_relocs=[], primary_sizes=[SIZE],
        helper_sizes=[SIZE])),
    (artifacts.POST_PATCH, artifacts.PatchRecord(
        applied_ns=1_700_000_000_000_000_000, patch_sha256="ab" * 32, patch_opts=["-p1"],
        files={"fs/a.c": "cd" * 32, "fs/gone.c": None}, update_id="abcd1234")),
    (artifacts.POST_BUILD, artifacts.PostBuild("objects", ["fs/a.o"], ["fs/a.o"], 1.25, 0)),
    (artifacts.PRE_BUILD, artifacts.PreBuildStamp("/k", 9000, "f" * 32, 2, 40, 900, 61.5,
                                                  1.7e9, "targeted")),
    (artifacts.INVENTORY, artifacts.ObjectInventory(
        {"fs/proc/loadavg.o": ("fs/proc/loadavg.c", 0, 0)}, [["include", "arch/x86/include"]],
        [["include/linux/kconfig.h"]])),
    (artifacts.INCLUDES, artifacts.IncludeIndex(
        ["fs/proc/loadavg.c", "fs/proc/internal.h"], [0, 1], ["internal.h", "linux/proc_fs.h"],
        [True, False])),
    (artifacts.MODULES, artifacts.ModulesRecord("abcd1234", "ksplice-abcd1234.ko",
                                                "ksplice-abcd1234-helper.ko", "0" * 64,
                                                "1" * 64)),
    (artifacts.DEBIAN_TARGET, artifacts.DebianTarget(
        release="6.1.0-57-amd64", flavour="amd64", package_version="6.1.192-3",
        packages={"linux-image-6.1.0-57-amd64-unsigned": "6.1.192-3"}, source="linux",
        orig_config="linux/ksplice", image="image", vmlinuz="image/boot/vmlinuz-6.1.0-57-amd64",
        modules="image/lib/modules/6.1.0-57-amd64", system_map=None)),
    (TABLES, md.ModuleTables(
        relocs=[md.RelocInput("jiffies", ".text.f", 1, True, -4, 4, ".text.f_global", 2, True)],
        sizes=[md.SizeInput("f", 10, "f____x_post_global")],
        patches=[md.PatchInput("f", "f____x_post_global")],
        imports=[md.ImportInput("text_poke")],
        sites=[md.SiteInput(".text.f_global", 9, "return", 5)])),
]
IDS = [codec.kind for codec, _ in EXAMPLES]


@pytest.mark.parametrize(("codec", "record"), EXAMPLES, ids=IDS)
def test_round_trip(codec: Codec, record: Any, tmp_path: Path) -> None:
    text = codec.dumps(record)
    data = json.loads(text)
    assert data["artifact"] == codec.kind and data["version"] == codec.version
    assert codec.loads(text) == record
    path = tmp_path / "r.json"
    path.write_text(text)
    assert codec.read(path) == record


@pytest.mark.parametrize(("codec", "record"), EXAMPLES, ids=IDS)
def test_every_field_is_required_and_nothing_else_allowed(codec: Codec, record: Any) -> None:
    """Fields without a default are required; one with a default may be absent (older records)."""
    data = codec.dump(record)
    for f in dataclasses.fields(codec.cls):
        partial = {k: v for k, v in data.items() if k != f.name}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            with pytest.raises(ArtifactError, match=f"missing field.*{f.name}"):
                codec.load(partial, "x.json")
        else:
            default = (f.default if f.default is not dataclasses.MISSING
                       else f.default_factory())  # type: ignore[misc]
            assert getattr(codec.load(partial, "x.json"), f.name) == default
    with pytest.raises(ArtifactError, match="unknown field.*surprise"):
        codec.load({**data, "surprise": 1})


@pytest.mark.parametrize(("codec", "record"), EXAMPLES, ids=IDS)
def test_a_mistyped_field_is_named(codec: Codec, record: Any) -> None:
    data = codec.dump(record)
    first = dataclasses.fields(codec.cls)[0].name
    with pytest.raises(ArtifactError) as e:
        codec.load({**data, first: {"not": "this"}}, "dir/r.json")
    assert str(e.value).startswith(f"dir/r.json: bad {codec.kind} record: {first}")
    assert "\n" not in str(e.value)


def test_nested_errors_name_the_path() -> None:
    codec, record = EXAMPLES[1]
    data = codec.dump(record)
    data["primary_relocs"][0]["offset"] = "7"
    with pytest.raises(ArtifactError, match=r"primary_relocs\[0\]\.offset: expected an integer, "
                                            r"got str"):
        codec.load(data)
    data = codec.dump(record)
    data["empty"] = 0
    with pytest.raises(ArtifactError, match="empty: expected a boolean, got int"):
        codec.load(data)
    data = codec.dump(record)
    del data["primary_sizes"][0]["section"]
    with pytest.raises(ArtifactError, match=r"primary_sizes\[0\]: missing field\(s\) section"):
        codec.load(data)


def test_kind_version_and_json_are_checked() -> None:
    codec, record = EXAMPLES[3]
    data = codec.dump(record)
    with pytest.raises(ArtifactError, match="not a post-build record"):
        codec.load({**data, "artifact": "post-patch"})
    with pytest.raises(ArtifactError, match="not a post-build record"):
        artifacts.POST_BUILD.load({k: v for k, v in data.items() if k != "artifact"})
    with pytest.raises(ArtifactError, match="version 2, this ksplice-py reads version 1"):
        codec.load({**data, "version": 2})
    with pytest.raises(ArtifactError, match="not JSON"):
        codec.loads("{", "p.json")
    with pytest.raises(ArtifactError, match="not a JSON object"):
        codec.load([1, 2])
    with pytest.raises(TypeError):
        codec.dump(EXAMPLES[0][1])


def _matches(schema: dict, value: Any) -> bool:
    """A small JSON Schema check: the keywords Codec.schema emits."""
    if "const" in schema:
        return value == schema["const"]
    if "anyOf" in schema:
        return any(_matches(s, value) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind is None:
        return True
    checks = {"null": lambda v: v is None, "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "string": lambda v: isinstance(v, str), "array": lambda v: isinstance(v, list),
              "object": lambda v: isinstance(v, dict)}
    if not checks[kind](value):
        return False
    if kind == "array" and "prefixItems" in schema:
        places = schema["prefixItems"]
        return len(value) == len(places) and all(
            _matches(p, v) for p, v in zip(places, value, strict=True))
    if kind == "array":
        return all(_matches(schema["items"], v) for v in value)
    if kind == "object":
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", [])):
            return False
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                if not _matches(props[k], v):
                    return False
            elif extra is False or (isinstance(extra, dict) and not _matches(extra, v)):
                return False
    return True


@pytest.mark.parametrize(("codec", "record"), EXAMPLES, ids=IDS)
def test_schema_follows_the_dataclass(codec: Codec, record: Any) -> None:
    schema = codec.schema()
    fields = [f.name for f in dataclasses.fields(codec.cls)]
    required = [f.name for f in dataclasses.fields(codec.cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    assert schema["title"] == codec.kind
    assert schema["required"] == ["artifact", "version", *required]
    assert list(schema["properties"]) == ["artifact", "version", *fields]
    assert schema["additionalProperties"] is False
    assert _matches(schema, codec.dump(record))
    for name in fields:  # a list of objects fits none of the records' fields
        assert not _matches(schema, {**codec.dump(record), name: [{"x": 1}]}), name
    if required:
        assert not _matches(schema, {k: v for k, v in codec.dump(record).items()
                                     if k != required[-1]})
    json.dumps(schema)
