"""ArtifactStore: where a run's artifacts live, ``<root>/runs/<run_id>/``.

``LocalStore`` is a folder (the default for ``--local``: ``./runs/<run_id>``); ``S3Store``
is ``s3://bucket/prefix`` (infra/s3.py). ``open_store`` picks one from a URI.

    store = open_store("."); store.run_dir("model3-20261122-120000-ab12")

``RunFiles`` is one run's files wherever they are read from: ``HostRun`` (a run folder on a
Host, written as we read) or ``StoreRun`` (any store; on S3 a copy that lags the run by an
upload). The live view and ``logs`` read through it, so a folder and S3 render the same.

    StoreRun(open_store("s3://bucket/mnist"), run_id).read_from("events.jsonl", offset)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol

from core.errors import ConfigError, RunError
from infra.safepath import UnsafePathError, check_name, safe_join

if TYPE_CHECKING:
    from infra.host import Host


def valid_run_id(run_id: str) -> bool:
    """ASCII letters, digits, '.', '_' and '-', not starting with '.' or '-': a folder name and an S3 key
    part that needs no quoting anywhere, never an option, never '..'."""
    return (isinstance(run_id, str) and 0 < len(run_id) <= 128 and run_id.isascii()
            and all(c.isalnum() or c in "._-" for c in run_id) and run_id[0] not in ".-")


def check_run_id(run_id: str) -> str:
    """``run_id`` if valid, else one ConfigError line: every run id typed or read names a folder or a key."""
    if not valid_run_id(run_id):
        raise ConfigError(f"run id {run_id!r}: use ASCII letters, digits, '.', '_' and '-' only, "
                          "not starting with '.' or '-' — `mnist-launch runs` lists the runs")
    return run_id


class ArtifactStore(Protocol):
    uri: str

    def list_runs(self) -> list[str]: ...

    def read_text(self, run_id: str, name: str) -> Optional[str]: ...

    def put_file(self, run_id: str, name: str, local_path: Path) -> None: ...

    def put_verified(self, run_id: str, name: str, local_path: Path, sha256_hex: str) -> None:
        """put_file, then RunError unless the stored object has ``sha256_hex`` (the agent's checkpoint uploads)."""
        ...

    def size_of(self, run_id: str, name: str) -> Optional[int]:
        """The stored object's size in bytes; None if there is none."""
        ...

    def list_names(self, run_id: str, prefix: str = "") -> list[str]:
        """Names under the run (relative to its folder) starting with ``prefix``."""
        ...

    def delete_names(self, run_id: str, names: list[str]) -> None: ...

    def download(self, run_id: str, dest: Path) -> Path: ...

    def read_from(self, run_id: str, name: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Bytes of ``name`` from ``offset`` (at most ``limit``); b'' if missing or nothing new."""
        ...


class LocalStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / check_run_id(run_id)

    def list_runs(self) -> list[str]:
        runs = self.root / "runs"
        if not runs.is_dir():
            return []
        return sorted(d.name for d in runs.iterdir() if (d / "config.yaml").is_file())

    def read_text(self, run_id: str, name: str) -> Optional[str]:
        try:
            return (self.run_dir(run_id) / name).read_text()
        except FileNotFoundError:
            return None

    def read_from(self, run_id: str, name: str, offset: int, limit: int = 1 << 20) -> bytes:
        try:
            with open(self.run_dir(run_id) / name, "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""

    def put_file(self, run_id: str, name: str, local_path: Path) -> None:
        dest = self.run_dir(run_id) / name
        if Path(local_path).resolve() == dest.resolve():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(local_path, tmp)
        tmp.replace(dest)

    def put_verified(self, run_id: str, name: str, local_path: Path, sha256_hex: str) -> None:
        self.put_file(run_id, name, local_path)
        from infra.manifest import file_sha256

        if file_sha256(str(self.run_dir(run_id) / name)) != sha256_hex:
            raise RunError(f"{name} changed while it was copied to {self.uri} — it is copied again next pass")

    def size_of(self, run_id: str, name: str) -> Optional[int]:
        try:
            return (self.run_dir(run_id) / name).stat().st_size
        except FileNotFoundError:
            return None

    def list_names(self, run_id: str, prefix: str = "") -> list[str]:
        root = self.run_dir(run_id)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and p.relative_to(root).as_posix().startswith(prefix))

    def delete_names(self, run_id: str, names: list[str]) -> None:
        for n in names:
            (self.run_dir(run_id) / n).unlink(missing_ok=True)

    def download(self, run_id: str, dest: Path) -> Path:
        """Copy the run's regular files into ``dest/run_id``. A symlink in the run folder is not
        followed (it could name any file of this machine), and every name is checked before it is
        written (infra/safepath.py): nothing lands outside ``dest/run_id``."""
        src = self.run_dir(run_id)
        if not src.is_dir():
            raise RunError(f"run '{run_id}' not found in {self.uri} — `mnist-launch runs` lists the runs there")
        out = Path(dest) / run_id
        if out.resolve() == src.resolve():
            return out
        names = [(Path(dirpath) / f).relative_to(src).as_posix()
                 for dirpath, _dirs, files in os.walk(src)  # os.walk does not descend into symlinked folders
                 for f in sorted(files) if not (Path(dirpath) / f).is_symlink() and (Path(dirpath) / f).is_file()]
        for rel in names:  # all checked before the first write
            store_target(out, rel, self.uri)
        out.mkdir(parents=True, exist_ok=True)
        for rel in names:
            target = store_target(out, rel, self.uri)
            target.parent.mkdir(parents=True, exist_ok=True)
            part = store_target(out, rel + ".part", self.uri)
            shutil.copyfile(src / rel, part, follow_symlinks=False)
            part.replace(target)
        return out


def store_target(root: Path, name: str, uri: str) -> Path:
    """``root/name`` for a name that came from a store, or one RunError line saying why it is refused."""
    try:
        return safe_join(root, name)
    except UnsafePathError as err:
        raise RunError(f"{uri}: refusing to write {err} — the store holds a crafted or corrupt name; "
                       "nothing was written outside the destination") from None


CHECKPOINTS = "checkpoints"
MARKER = "checkpoint.json"  # the trainer writes it last in a checkpoint folder; the store's copy lists sizes and sha256


def latest_stored_checkpoint(store: "ArtifactStore", run_id: str) -> Optional[dict]:
    """The newest checkpoint in the store whose manifest is there and whose every file has the
    manifest's size: a half-uploaded checkpoint is never resumed from. ``{"name", "epoch", "files"}``."""
    import json

    names = set(store.list_names(run_id, CHECKPOINTS + "/"))
    best: Optional[dict] = None
    for marker in sorted(n for n in names if n.endswith("/" + MARKER)):
        folder = marker[: -len(MARKER) - 1]
        try:
            manifest = json.loads(store.read_text(run_id, marker) or "{}")
        except json.JSONDecodeError:
            continue
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            continue  # the trainer's own marker (a list) or an empty one: not a verified upload
        if not _safe_names(folder.split("/", 1)[1], files):
            continue  # a name that would be written outside the checkpoint folder: never restored from
        if any(f"{folder}/{rel}" not in names or store.size_of(run_id, f"{folder}/{rel}") != meta.get("size")
               for rel, meta in files.items()):
            continue
        position = (manifest.get("epoch", -1), manifest.get("step", 0))  # a mid-epoch one after its epoch's start
        if best is None or position > (best["epoch"], best["step"]):
            best = {"name": folder.split("/", 1)[1], "epoch": position[0], "step": position[1], "files": files,
                    "processes": manifest.get("processes")}
    return best


def _safe_names(folder: str, files: dict) -> bool:
    """A checkpoint folder is one plain name, and each file in its manifest a relative name inside it."""
    try:
        if len(check_name(folder)) != 1:
            return False
        for rel in files:
            check_name(rel)
    except UnsafePathError:
        return False
    return True


def folder_store(uri: Optional[str]) -> Optional[LocalStore]:
    """The folder store at ``uri``; None for an s3:// URI (decided from the URI alone: no boto3, no network)."""
    return None if (uri or "").startswith("s3://") else LocalStore(uri or ".")


def open_store(uri: Optional[str]) -> ArtifactStore:
    uri = uri or "."
    if uri.startswith("s3://"):
        from infra.s3 import S3Store  # boto3 only when asked for

        return S3Store(uri)
    return LocalStore(uri)


class RunFiles(Protocol):
    where: str  # for messages: the run folder or the run's URI
    mirrored: bool  # a copy that lags the run (uploads): status and events may arrive in either order
    poll: tuple[float, float]  # a follower's first and longest wait between reads (seconds)
    spawn_pid: Optional[int]  # the agent's pid as the launcher spawned it (before status.json has it); None: unknown

    def read_from(self, name: str, offset: int, limit: int = 1 << 20) -> bytes: ...

    def read_text(self, name: str) -> Optional[str]: ...

    def is_alive(self, pid: int) -> Optional[bool]:
        """Whether the run's agent still runs; None when that cannot be told from here."""
        ...

    def instance_lost(self) -> bool:
        """Whether the machine the run was on is gone for good (asked once its agent is seen dead)."""
        ...


class HostRun:
    """A run folder on a Host (this machine for --local): the files the agent writes, as it writes them."""

    mirrored = False
    poll = (0.1, 0.1)  # a local read costs microseconds: the run's end shows within 0.1 s, not 0.25
    spawn_pid: Optional[int] = None

    def __init__(self, host: "Host", run_dir: str | Path) -> None:
        self.host, self.where = host, str(run_dir)

    def read_from(self, name: str, offset: int, limit: int = 1 << 20) -> bytes:
        return self.host.read_from(f"{self.where}/{name}", offset, limit)

    def read_text(self, name: str) -> Optional[str]:
        return self.host.read_text(f"{self.where}/{name}")

    def is_alive(self, pid: int) -> Optional[bool]:
        return self.host.is_alive(pid)

    def instance_lost(self) -> bool:
        return False  # a host we can read from is there


def run_files(store: ArtifactStore, run_id: str) -> "RunFiles":
    """A run's files as a follower reads them: a folder store's run folder itself (written as we read),
    any other store's copy."""
    if isinstance(store, LocalStore):
        from infra.host import LocalHost

        return HostRun(LocalHost(), store.run_dir(run_id))
    return StoreRun(store, run_id)


class StoreRun:
    """A run in an ArtifactStore: on S3 each read is a GET (ranged from an offset), so followers back off."""

    mirrored = True
    poll = (0.5, 5.0)  # doubling while nothing new arrives: a long run costs few GETs
    spawn_pid: Optional[int] = None

    def __init__(self, store: ArtifactStore, run_id: str) -> None:
        self.store, self.run_id = store, run_id
        self.where = f"{store.uri}/runs/{run_id}"

    def read_from(self, name: str, offset: int, limit: int = 1 << 20) -> bytes:
        return self.store.read_from(self.run_id, name, offset, limit)

    def read_text(self, name: str) -> Optional[str]:
        return self.store.read_text(self.run_id, name)

    def is_alive(self, pid: int) -> Optional[bool]:
        return None  # the agent runs on another machine: its pid means nothing here

    def instance_lost(self) -> bool:
        return False  # a copy says nothing about the machine: status.json tells the end
