"""Compare runs: their settings and results side by side, and one overlay of test-accuracy curves.

Only settings that differ between the runs are listed (plus the model), so the table shows
what changed and what it did.

    rows, png = compare_runs(["a", "b"], store=None, out=Path("compare.png"))  # or store="s3://bucket/mnist"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import yaml

from infra.store import RunFiles
from launcher.orchestrator import _epochs_from_lines, open_run, record_from


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
        columns.append({"run_id": rec["run_id"], "settings": {k: c.get(k) for k in ["model", *differing]},
                        "results": rec, "history": _history(f)})
    _plot(columns, out)
    return differing, columns, out


def _plot(columns: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for col in columns:
        h = col["history"]
        if h:
            ax.plot([e["epoch"] for e in h], [100 * e["test_accuracy"] for e in h], "o-", ms=3, label=col["run_id"])
    ax.set(title="test accuracy", xlabel="epoch", ylabel="%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
