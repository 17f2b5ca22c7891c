"""MNIST_LAUNCH_HOME (default ~/.mnist-launch): the launcher's local state, only a cache.

AWS tags are the truth; this folder holds the generated SSH key, pinned host keys and a
per-cluster cache (region, identity). Deleting it loses nothing that cannot be found again.

    key = ensure_default_key()  # ~/.mnist-launch/id_ed25519, mode 0600
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core import settings
from infra.safepath import safe_join
from infra.store import check_run_id


def launch_home() -> Path:
    home = Path(settings.launch_home()).expanduser()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home


def known_hosts_path() -> Path:
    return launch_home() / "known_hosts"


def default_key_path() -> Path:
    return launch_home() / "id_ed25519"


def ensure_default_key() -> Path:
    """The launcher's own ed25519 key, generated once (private half 0600, never leaves here)."""
    path = default_key_path()
    if path.exists():
        return path
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    # O_EXCL: two launchers racing never overwrite a key an instance may already trust
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    path.with_suffix(".pub").write_text(public.decode() + " mnist-launch\n")
    return path


def _cache_file(name: str) -> Path:
    d = launch_home() / "clusters"
    d.mkdir(mode=0o700, exist_ok=True)
    return safe_join(d, f"{name}.json")  # a cluster name never leads out of the folder (names are checked earlier too)


def read_cluster_cache(name: str) -> dict:
    try:
        return json.loads(_cache_file(name).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def write_cluster_cache(name: str, data: dict) -> None:
    _cache_file(name).write_text(json.dumps(data, indent=1, sort_keys=True))


def drop_cluster_cache(name: Optional[str]) -> None:
    if name:
        _cache_file(name).unlink(missing_ok=True)


def _run_file(run_id: str) -> Path:
    d = launch_home() / "runs"
    d.mkdir(mode=0o700, exist_ok=True)
    return d / f"{check_run_id(run_id)}.json"


def read_run_record(run_id: str) -> dict:
    """Where a cloud run started from this machine lives (cluster, instance, folder there, store)."""
    try:
        return json.loads(_run_file(run_id).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def write_run_record(run_id: str, data: dict) -> None:
    _run_file(run_id).write_text(json.dumps(data, indent=1, sort_keys=True))


def remote_dirs_of(instance_id: str) -> set[str]:
    """The launch.remote_dir of every run this machine started on ``instance_id``."""
    d = launch_home() / "runs"
    out: set[str] = set()
    for f in d.glob("*.json") if d.is_dir() else []:
        try:
            rec = json.loads(f.read_text())
        except ValueError:
            continue
        if rec.get("instance_id") == instance_id and rec.get("remote_dir"):
            out.add(rec["remote_dir"])
    return out
