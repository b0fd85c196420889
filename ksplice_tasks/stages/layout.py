# SPDX-License-Identifier: GPL-2.0-only
"""Every path under the state directory ``ORIG_CONFIG/.ksplice/``, in one place.

::

    .ksplice/
      doit-db.json                 doit's dependency file
      lock                         flock of the running prebuild or create (its pid)
      pre-build.json, pre-inputs.json    the last pre build (stamp, input list)
      pre-build.unfinished.json    a pre build that has not finished (killed, failed)
      logs/<name>.log              build logs
      create/                      one create run's work (:class:`CreateLayout`)
        diffext.patch              the patch --diffext made
        post-patch.json            the patch the post tree holds
        post-build.json            what the post build changed
        objects/<key>/             per changed object (:class:`ObjectPaths`)
        collect/                   collections, tables, rmsyms.json
        kmod/                      the module build directory, modules.json

No name in the state directory contains the update id: it is only known
once the patch is (for ``--diffext``, after a task has made it).
:class:`CreateLayout` and :class:`ObjectPaths` take any directory, so a test
can drive the stage functions in a private one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ksplice_tasks.names import check_role as _role

STATE_DIRNAME = ".ksplice"


def object_key(rel: str) -> str:
    """A directory name for an object's work files: ``fs/proc/x.o`` -> ``fs__proc__x.o``."""
    return rel.replace("/", "__")


@dataclass(frozen=True)
class ObjectPaths:
    """The work files of one changed object, in directory ``dir``."""

    dir: Path

    @property
    def diff(self) -> Path:
        """objdiff's result (:data:`ksplice_tasks.artifacts.DIFF`)."""
        return self.dir / "diff.json"

    @property
    def records(self) -> Path:
        """The passes' records (:data:`ksplice_tasks.artifacts.RECORDS`)."""
        return self.dir / "records.json"

    @property
    def primary(self) -> Path:
        """keep-primary's object: the post code."""
        return self.dir / "primary.o"

    @property
    def helper(self) -> Path:
        """keep-helper's object: the pre code."""
        return self.dir / "helper.o"

    def module_object(self, role: str) -> Path:
        """The object this one contributes to the ``role`` collection."""
        return self.primary if _role(role) == "primary" else self.helper


@dataclass(frozen=True)
class CreateLayout:
    """The work of one create run, in directory ``root``."""

    root: Path

    @property
    def diffext_patch(self) -> Path:
        return self.root / "diffext.patch"

    @property
    def post_patch(self) -> Path:
        """The patch record (:data:`ksplice_tasks.artifacts.POST_PATCH`)."""
        return self.root / "post-patch.json"

    @property
    def post_build(self) -> Path:
        """The post build record (:data:`ksplice_tasks.artifacts.POST_BUILD`)."""
        return self.root / "post-build.json"

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    def object(self, rel: str) -> ObjectPaths:
        """The work files of the object at tree-relative path ``rel``."""
        return ObjectPaths(self.objects / object_key(rel))

    @property
    def collect(self) -> Path:
        return self.root / "collect"

    def collection(self, role: str) -> Path:
        """``collection.o.<role>``: the ``ld -r`` of every object's ``role`` part."""
        return self.collect / f"collection.o.{_role(role)}"

    def tables_json(self, role: str) -> Path:
        """One module's tables as JSON (collect's ``TABLES`` codec)."""
        return self.collect / f"tables.{_role(role)}.json"

    def tables_asm(self, role: str) -> Path:
        return self.collect / f"tables.{_role(role)}.s"

    def tables_obj(self, role: str) -> Path:
        return self.collect / f"tables.{_role(role)}.o"

    def linked(self, role: str) -> Path:
        """The collection with its tables linked in."""
        return self.collect / f"collection.o.{_role(role)}.linked"

    @property
    def rmsyms(self) -> Path:
        return self.collect / "rmsyms.json"

    @property
    def kmod(self) -> Path:
        """The module build directory (kmodsrc, modcommon.auto.h, collections, .ko)."""
        return self.root / "kmod"

    @property
    def modcommon(self) -> Path:
        return self.kmod / "modcommon.auto.h"

    @property
    def modules(self) -> Path:
        """The built modules' record (:data:`ksplice_tasks.artifacts.MODULES`)."""
        return self.kmod / "modules.json"


@dataclass(frozen=True)
class StateLayout:
    """ksplice's state for one ORIG_CONFIG, in directory ``root`` (``ORIG_CONFIG/.ksplice``)."""

    root: Path

    @property
    def doit_db(self) -> Path:
        return self.root / "doit-db.json"

    @property
    def pre_stamp(self) -> Path:
        """The pre build's stamp (:data:`ksplice_tasks.artifacts.PRE_BUILD`)."""
        return self.root / "pre-build.json"

    @property
    def pre_unfinished(self) -> Path:
        """A pre build that started and has not finished: why, and what it has not built."""
        return self.root / "pre-build.unfinished.json"

    @property
    def pre_inputs(self) -> Path:
        """The files the pre build read or wrote, a JSON list of tree-relative paths."""
        return self.root / "pre-inputs.json"

    @property
    def config_stamp(self) -> Path:
        """SHA-256 of ORIG's .config and of the tree's, as pre_config last installed it."""
        return self.root / "config-installed.json"

    @property
    def inventory(self) -> Path:
        """A targeted prebuild's object inventory (:data:`ksplice_tasks.artifacts.INVENTORY`)."""
        return self.root / "inventory.json"

    @property
    def includes(self) -> Path:
        """A targeted prebuild's include index (:data:`ksplice_tasks.artifacts.INCLUDES`)."""
        return self.root / "includes.json"

    @property
    def post_clean(self) -> Path:
        """Since when the post tree is known to be the snapshot
        (:func:`ksplice_tasks.tree.snapshot.mark_clean`)."""
        return self.root / "post-clean.json"

    @property
    def lock(self) -> Path:
        """Held (flock) by the one prebuild or create running on this ORIG_CONFIG."""
        return self.root / "lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, name: str) -> Path:
        """``logs/<name>.log``."""
        return self.logs / f"{name}.log"

    @property
    def create(self) -> CreateLayout:
        return CreateLayout(self.root / "create")


def state_layout(orig: Path) -> StateLayout:
    """The state directory of ORIG_CONFIG ``orig``."""
    return StateLayout(orig / STATE_DIRNAME)
