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
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ksplice_tasks.stages.inputs import Settings

ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
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
    return update_id(patch.read_bytes(), s.patch_opts, (s.orig / ".config").read_bytes(),
                     (s.orig / "System.map").read_bytes())


def tarball_name(uid: str) -> str:
    return f"ksplice-{uid}.tar.gz"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def _add_tree(tar: tarfile.TarFile, arcdir: str, root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            _add_bytes(tar, f"{arcdir}/{path.relative_to(root)}", path.read_bytes())


def pack(out: Path, uid: str, patch: Path, primary: Path, helper: Path,
         debug: Sequence[tuple[str, Path]]) -> Path:
    """ksplice-<id>/{patch, ksplice-<id>.ko, ksplice-<id>-helper.ko, debug/...}, atomically."""
    top = f"ksplice-{uid}"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for d in (top, f"{top}/debug"):
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
            _add_bytes(tar, f"{top}/patch", patch.read_bytes())
            _add_bytes(tar, f"{top}/{primary.name}", primary.read_bytes())
            _add_bytes(tar, f"{top}/{helper.name}", helper.read_bytes())
            for name, path in debug:
                if path.is_dir():
                    _add_tree(tar, f"{top}/debug/{name}", path)
                elif path.is_file():
                    _add_bytes(tar, f"{top}/debug/{name}", path.read_bytes())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    return out
