"""Bring a run back onto a fresh host from its store: what `--resume` needs, nothing half-made.

A replacement instance (spot reclaimed, instance gone) has none of the run's files. The agent,
started with ``--restore``, calls ``restore_run`` before training: the run's config and history
come from the store, and so does the newest checkpoint whose every file the store manifest vouches
for (infra/store.py: ``latest_stored_checkpoint``). ``events.jsonl`` is cut back to that
checkpoint, so the resumed attempt appends the epochs after it and a follower sees each once.

    ckpt = restore_run(open_store("s3://bucket/mnist"), "model3-...", Path("runs/model3-..."))
"""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import RunError
from infra.safepath import UnsafePathError, safe_join
from infra.store import CHECKPOINTS, MARKER, ArtifactStore, latest_stored_checkpoint

RUN_FILES = ("config.yaml", "meta.json", "events.jsonl", "train.log", "model.safetensors")


def _fetch(store: ArtifactStore, run_id: str, name: str, dest: Path) -> bool:
    """Copy one object of the run to ``dest`` through a .part file; False when the store has none."""
    data = b""
    offset = 0
    while True:  # read_from is the one ranged read both stores have
        chunk = store.read_from(run_id, name, offset, 8 << 20)
        if not chunk:
            break
        data += chunk
        offset += len(chunk)
    if not data and store.size_of(run_id, name) is None:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.is_symlink():  # never written through: the .part is ours to replace
        part.unlink()
    part.write_bytes(data)
    part.replace(dest)
    return True


def _target(root: Path, name: str, run_id: str, store: ArtifactStore) -> Path:
    try:
        return safe_join(root, name)
    except UnsafePathError as err:
        raise RunError(f"run '{run_id}' in {store.uri}: refusing to restore {err} — the checkpoint manifest holds "
                       "a crafted or corrupt name; resume from another run or start again") from None


def events_until(text: str, epoch: int, step: int = 0) -> str:
    """The events up to and including the checkpoint of ``epoch`` (at ``step`` for a mid-epoch one):
    what the resumed attempt continues."""
    lines = text.splitlines(keepends=True)
    cut = 0
    for i, line in enumerate(lines):
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            break  # a torn last line
        if ev.get("type") == "checkpoint" and ev.get("epoch") == epoch and (ev.get("step") or 0) == step:
            cut = i + 1
    return "".join(lines[:cut])


def restore_run(store: ArtifactStore, run_id: str, run_dir: Path) -> dict:
    """Fill ``run_dir`` from the store so the trainer can ``--resume``; returns the checkpoint used."""
    ckpt = latest_stored_checkpoint(store, run_id)
    if ckpt is None:
        raise RunError(f"run '{run_id}' has no complete checkpoint in {store.uri} to resume from — start a new run")
    # the manifest's names came from the store: each is checked before anything is written
    folder = _target(run_dir, f"{CHECKPOINTS}/{ckpt['name']}", run_id, store)
    targets = {rel: _target(folder, rel, run_id, store) for rel in ckpt["files"]}
    config = _target(run_dir, "config.yaml", run_id, store)
    # a config.yaml already here is this attempt's, written by the launcher (a --resume's --set applied)
    if (store.size_of(run_id, "config.yaml") is None
            or not (config.is_file() or _fetch(store, run_id, "config.yaml", config))):
        raise RunError(f"run '{run_id}': config.yaml is missing from {store.uri} — start a new run")
    for name in RUN_FILES[1:]:
        _fetch(store, run_id, name, _target(run_dir, name, run_id, store))
    events = run_dir / "events.jsonl"
    if events.is_file():
        events.write_text(events_until(events.read_text(), ckpt["epoch"], ckpt.get("step") or 0))
    for rel, meta in ckpt["files"].items():
        _fetch(store, run_id, f"{CHECKPOINTS}/{ckpt['name']}/{rel}", targets[rel])
        if targets[rel].stat().st_size != meta["size"]:
            raise RunError(f"{CHECKPOINTS}/{ckpt['name']}/{rel} changed in {store.uri} "
                           "while it was fetched — try again")
    from infra.manifest import file_sha256

    bad = [rel for rel, meta in ckpt["files"].items() if file_sha256(str(folder / rel)) != meta["sha256"]]
    if bad:
        raise RunError(f"checkpoint {ckpt['name']} of '{run_id}' fails its sha256 ({', '.join(bad)}) — "
                       "it was changed in the store; resume from an older one or start again")
    # the trainer's own marker, written last, as the trainer writes it
    marker = {"epoch": ckpt["epoch"], "files": sorted(ckpt["files"]), "best": False}
    if ckpt.get("step"):
        marker.update(step=ckpt["step"], processes=ckpt.get("processes"))
    _target(folder, MARKER, run_id, store).write_text(json.dumps(marker))
    return ckpt
