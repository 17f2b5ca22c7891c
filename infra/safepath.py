"""Is this name, which came from somewhere else, safe to write under this folder? One answer for all.

Names of files to write often come from outside: S3 keys (`results`, restoring a checkpoint), a
checkpoint manifest, a tar stream, a store folder. Before anything is written, each name is
checked: relative, no ``..``, no empty or ``.`` parts, no control characters, and — on the real
filesystem — not resolving through a symlink to somewhere outside the destination. Standard
library only; imports nothing of this project, so infra/ and the trainer side may use it.

    target = safe_join(Path("results/run1"), "checkpoints/epoch_001/model.safetensors")
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


class UnsafePathError(ValueError):
    """A name that would land outside its destination (or cannot be written safely)."""


def check_name(name: str) -> tuple[str, ...]:
    """The parts of a relative ``/``-separated name; UnsafePathError for anything that is not one."""
    shown = repr(name)[:120]
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"{shown}: an empty name")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnsafePathError(f"{shown}: control characters in a file name")
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[0].isalpha() and name[1] == ":"):
        raise UnsafePathError(f"{shown}: an absolute name")
    parts = tuple(name.replace("\\", "/").split("/"))
    if ".." in parts:
        raise UnsafePathError(f"{shown}: '..' would leave the destination")
    parts = tuple(p for p in parts if p not in ("", "."))  # "a//b", "./a", "a/" are still inside
    if not parts:
        raise UnsafePathError(f"{shown}: names no file")
    return parts


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def safe_join(root: PathLike, name: str) -> Path:
    """``root / name`` after checking ``name`` (see ``check_name``) and that the result, with every
    symlink that exists on the way resolved, is still inside ``root``. Nothing is created."""
    parts = check_name(name)
    real_root = os.path.realpath(root)
    target = os.path.join(real_root, *parts)
    if not _within(os.path.realpath(target), real_root):
        raise UnsafePathError(f"{name!r}: resolves through a symlink to outside {root}")
    return Path(root).joinpath(*parts)


def check_tar_member(root: PathLike, member: tarfile.TarInfo) -> Path:
    """Where ``member`` of a tar stream would land under ``root``; UnsafePathError if outside, through
    a symlink, or a device/fifo. Symlink members may point anywhere (a workdir may link to a dataset
    elsewhere): what is refused is writing *through* one, which ``safe_join`` sees once it exists."""
    target = safe_join(root, member.name)
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafePathError(f"{member.name!r}: a device or fifo")
    if member.islnk():  # a hard link to a file outside would make that file writable from inside
        safe_join(root, member.linkname)
    return target


def safe_members(tar: tarfile.TarFile, root: PathLike) -> Iterator[tarfile.TarInfo]:
    """The members of ``tar``, each checked just before it is extracted (so a symlink an earlier
    member made is seen by the later ones)."""
    for member in tar:
        check_tar_member(root, member)
        yield member


__all__ = ["UnsafePathError", "check_name", "check_tar_member", "safe_join", "safe_members"]
