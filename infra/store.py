"""ArtifactStore: where a run's artifacts live, ``<root>/runs/<run_id>/``.

``LocalStore`` is a folder (the default for ``--local``: ``./runs/<run_id>``); ``S3Store``
is ``s3://bucket/prefix`` (infra/s3.py). ``open_store`` picks one from a URI.

    store = open_store("."); store.run_dir("model3-20261122-120000-ab12")
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Protocol

from trainer.errors import RunError


class ArtifactStore(Protocol):
    uri: str

    def list_runs(self) -> list[str]: ...

    def read_text(self, run_id: str, name: str) -> Optional[str]: ...

    def put_file(self, run_id: str, name: str, local_path: Path) -> None: ...

    def download(self, run_id: str, dest: Path) -> Path: ...

    def read_from(self, run_id: str, name: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Bytes of ``name`` from ``offset`` (at most ``limit``); b'' if missing or nothing new."""
        ...


class LocalStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

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

    def download(self, run_id: str, dest: Path) -> Path:
        src = self.run_dir(run_id)
        if not src.is_dir():
            raise RunError(f"run '{run_id}' not found in {self.uri} — `mnist-launch runs` lists the runs there")
        dest = Path(dest) / run_id
        if dest.resolve() != src.resolve():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        return dest


def open_store(uri: Optional[str]) -> ArtifactStore:
    uri = uri or "."
    if uri.startswith("s3://"):
        from infra.s3 import S3Store  # boto3 only when asked for

        return S3Store(uri)
    return LocalStore(uri)
