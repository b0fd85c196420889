# SPDX-License-Identifier: GPL-2.0-only
"""The update id and the ksplice-<id>.tar.gz the user ships.

The id is derived from what makes an update what it is: the patch, the
options it is applied with, and the running kernel's .config and System.map.
The same inputs give the same id, so reruns and the doit targets are stable;
any other patch or kernel gives another one.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

from ksplice_tasks import artifacts, symbolmap
from ksplice_tasks.errors import UserError
from ksplice_tasks.files import atomic_path
from ksplice_tasks.names import ID_CHARS, module_files, package_dir, tarball_name
from ksplice_tasks.stages.inputs import Settings, check_output_dir
from ksplice_tasks.stages.layout import CreateLayout

ID_VERSION = b"ksplice-py update id 1\0"


def update_id(patch: bytes, patch_opts: Sequence[str], config: bytes, system_map: bytes) -> str:
    """8 characters from [a-z0-9]: base 36 of a SHA-256 over the inputs."""
    h = hashlib.sha256(ID_VERSION)
    for part in (patch, "\0".join(patch_opts).encode(), config, system_map):
        h.update(hashlib.sha256(part).digest())
    n = int.from_bytes(h.digest(), "big")
    chars = []
    for _ in range(8):
        n, r = divmod(n, 36)
        chars.append(ID_CHARS[r])
    return "".join(chars)


def settings_id(s: Settings, patch: Path) -> str:
    """The id of ``patch`` applied with ``s``'s options to ``s``'s running kernel.

    Reads the patch, ORIG_CONFIG's .config and the symbol file (``s.map_file``;
    a kallsyms is hashed normalised, so the id is the same on every boot).
    OSError if one is missing, UserError for a bad kallsyms.
    """
    return update_id(patch.read_bytes(), s.patch_opts, (s.orig / ".config").read_bytes(),
                     symbolmap.map_bytes(s.map_file))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def _add_tree(tar: tarfile.TarFile, arcdir: str, root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            _add_bytes(tar, f"{arcdir}/{path.relative_to(root)}", path.read_bytes())


# Tests only (tests/hostile/test_kill.py): with this variable set to a path,
# pack creates that file and sleeps up to 60 s with the tarball half written,
# so a test can kill ksplice-create inside the tarball write.
HOLD_ENV = "KSPLICE_TEST_HOLD_TARBALL"


def _hold_for_tests() -> None:
    hold = os.environ.get(HOLD_ENV)
    if hold:
        Path(hold).touch()
        time.sleep(60)


def pack(out: Path, uid: str, patch: Path, primary: Path, helper: Path,
         debug: Sequence[tuple[str, Path]]) -> Path:
    """ksplice-<id>/{patch, <primary>, <helper>, debug/...} into ``out``, atomically.

    ``debug`` pairs a name under ``debug/`` with a file or a directory (taken
    whole); missing ones are left out. Entries carry mtime 0 and mode 0644,
    so the same inputs give the same members.
    """
    top = package_dir(uid)
    with atomic_path(out) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for d in (top, f"{top}/debug"):
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
            _add_bytes(tar, f"{top}/patch", patch.read_bytes())
            _hold_for_tests()
            _add_bytes(tar, f"{top}/{primary.name}", primary.read_bytes())
            _add_bytes(tar, f"{top}/{helper.name}", helper.read_bytes())
            for name, path in debug:
                if path.is_dir():
                    _add_tree(tar, f"{top}/debug/{name}", path)
                elif path.is_file():
                    _add_bytes(tar, f"{top}/debug/{name}", path.read_bytes())
        os.chmod(tmp, 0o644)
    return out


def debug_files(work: CreateLayout, objects: Sequence[str], kmodsrc: Sequence[str]
                ) -> list[tuple[str, Path]]:
    """What an update's ``debug/`` holds, as :func:`pack` takes it.

    ``objects`` are the changed objects (tree-relative), ``kmodsrc`` the
    module source file names copied into the module directory.
    """
    return [("collect", work.collect),
            *((f"kmodsrc/{n}", work.kmod / n) for n in (*kmodsrc, work.modcommon.name)),
            *((f"objects/{work.object(r).dir.name}", work.object(r).dir) for r in objects),
            ("post-build.json", work.post_build)]


def built_tarball(outdir: Path, work: CreateLayout) -> Path | None:
    """The tarball the last module build's update id names in ``outdir``; None before one."""
    try:
        rec = artifacts.MODULES.read(work.modules)
    except (OSError, ValueError):
        return None
    return outdir / tarball_name(rec.update_id)


def tarball_is_written(outdir: Path, work: CreateLayout) -> bool:
    """doit uptodate: the tarball of the modules last built is in ``outdir``."""
    path = built_tarball(outdir, work)
    return path is not None and path.is_file()


def write_tarball(outdir: Path, work: CreateLayout, patch: Path, kmodsrc: Sequence[str]
                  ) -> Path:
    """Pack the built modules (``work.modules``) and ``patch`` into ``outdir``.

    The changed objects come from ``work.post_build``; ``kmodsrc`` names the
    module sources to add to ``debug/``. Prints where the tarball went and
    returns its path. Raises ArtifactError (ValueError) if a record is bad,
    OSError if an input file is missing, UserError (one line, naming the
    tarball) when ``outdir`` cannot take it (read-only, full); nothing is left
    there then (:func:`ksplice_tasks.files.atomic_path`).
    """
    check_output_dir(outdir)  # again: it may have gone since validation
    mods = artifacts.MODULES.read(work.modules)
    built = artifacts.POST_BUILD.read(work.post_build)
    primary, helper = (work.kmod / n for n in module_files(mods.update_id))
    out = outdir / tarball_name(mods.update_id)
    try:
        pack(out, mods.update_id, patch, primary, helper,
             debug_files(work, built.changed, kmodsrc))
    except OSError as e:
        if e.filename is not None and Path(e.filename).parent != outdir:
            raise  # a missing input: not the output directory's fault
        raise UserError(f"cannot write the update tarball {out}: "
                        f"{e.strerror or type(e).__name__}") from e
    where = f" (in {out.parent})" if out.parent != Path.cwd() else ""
    print(f"Ksplice update tarball written to {out.name}{where}", flush=True)
    return out
