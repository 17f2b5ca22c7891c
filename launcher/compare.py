"""Compare runs: their settings and results side by side, and one overlay of their test error curves.

Only settings that differ between the runs are listed (plus the model), so the table shows
what changed and what it did.

    rows, png = compare_runs(["a", "b"], store=None, out=Path("compare.png"))  # or store="s3://bucket/mnist"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import yaml

from core.config import MODEL_CLAIMS
from infra.store import RunFiles
from launcher.orchestrator import _epochs_from_lines, open_run, record_from
from trainer.curves import MNIST_TEST_SIZE, Run, write_overlay


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _history(files: RunFiles) -> list[dict]:
    try:
        summary = files.read_text("summary.json")
        if summary is not None:
            return json.loads(summary).get("history") or []
    except json.JSONDecodeError:
        pass
    return _epochs_from_lines((files.read_text("events.jsonl") or "").splitlines())


def _read(files: RunFiles):
    def read(name: str) -> Optional[str]:
        try:
            return files.read_text(name)
        except OSError:  # missing or unreadable: the column shows what it can
            return None
    return read


def compare_runs(run_ids: list[str], store: Optional[str], out: Path) -> tuple[list[str], list[dict], Path]:
    """-> (setting keys that differ, one column per run, the PNG written). ``store``: a folder or s3://."""
    runs = [(r, open_run(r, store)) for r in run_ids]
    configs = [_flatten(yaml.safe_load(f.read_text("config.yaml") or "") or {}) for _, f in runs]
    keys = sorted({k for c in configs for k in c if not k.startswith(("launch.", "data.dir"))})
    differing = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    columns = []
    for (run_id, f), c in zip(runs, configs):
        rec = record_from(run_id, _read(f), f.where)
        # the accuracies the run is held to: its model's claim, its own train.target_accuracy
        columns.append({"run_id": rec["run_id"], "settings": {k: c.get(k) for k in ["model", *differing]},
                        "results": rec, "history": _history(f), "claim": MODEL_CLAIMS.get(str(c.get("model"))),
                        "target": c.get("train.target_accuracy"),
                        "test_size": min(MNIST_TEST_SIZE, c.get("data.test_limit") or MNIST_TEST_SIZE)})
    write_overlay(overlay_runs(columns), out)
    return differing, columns, out


def overlay_runs(columns: list[dict]) -> list[Run]:
    """compare_runs' columns as the overlay's curves (trainer/curves.py draws them as it draws curves.png)."""
    return [Run(c["run_id"], c["history"], c["claim"], c["target"], c["test_size"]) for c in columns]
