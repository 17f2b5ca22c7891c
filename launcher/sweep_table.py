"""A sweep's two tables: the live one (a row per run) and the result (a row per setting, mean ± std over seeds).

The live rows come from each run's own status.json and events.jsonl, read from a byte offset through the same
RunFiles as ``logs``; the result from each run's summary.json, so the table says what the runs say.

    watch = SweepWatch(place, plan); rows = watch.poll(); print(results_table(results(place, plan)))
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Optional

from rich.markup import escape
from rich.table import Table

from core.runstate import STATUS_FILE, TERMINAL, parse_status
from launcher.live import pct
from launcher.sweep import Place, setting_label
from trainer.events import EVENTS_FILE, parse_events


class RunWatch:
    """One run of a sweep as the live table shows it: state, epoch, the last test accuracy, img/s."""

    def __init__(self, run: dict[str, Any]) -> None:
        self.run = run
        self.offset = 0
        self.epoch = 0
        self.epochs: Optional[int] = None
        self.test_accuracy: Optional[float] = None
        self.images_per_second: Optional[float] = None
        self.status: dict[str, Any] = {}
        self.run_ends = 0

    def poll(self, place: Place) -> dict[str, Any]:
        files = place.files(self.run)
        self.status = parse_status(files.read_text(STATUS_FILE))
        while True:
            events, self.offset = parse_events(files.read_from(EVENTS_FILE, self.offset), self.offset)
            if not events:
                break
            for ev in events:
                kind = ev.get("type")
                if kind == "start":
                    self.epochs = ev.get("epochs")
                elif kind == "step":
                    self.images_per_second = ev.get("images_per_second")
                elif kind == "epoch":
                    self.epoch, self.test_accuracy = ev.get("epoch", self.epoch), ev.get("test_accuracy")
                    self.images_per_second = ev.get("images_per_second")
                elif kind == "finished":
                    self.images_per_second = ev.get("images_per_second") or self.images_per_second
                elif kind == "run_end":
                    self.run_ends += 1
        return self.row()

    def row(self) -> dict[str, Any]:
        return {"run_id": self.run["run_id"], "setting": self.run["setting"], "seed": self.run.get("seed"),
                "node": self.run.get("node", 0), "state": self.status.get("state") or "queued",
                "reason": self.status.get("reason"), "epoch": self.epoch, "epochs": self.epochs,
                "test_accuracy": self.test_accuracy, "images_per_second": self.images_per_second}


class SweepWatch:
    def __init__(self, place: Place, plan: dict[str, Any]) -> None:
        self.place, self.plan = place, plan
        self.runs = [RunWatch(r) for r in plan["runs"]]

    def poll(self) -> list[dict[str, Any]]:
        return [w.poll(self.place) for w in self.runs]


def runs_table(plan: dict[str, Any], rows: list[dict[str, Any]], runners: list[dict[str, Any]]) -> Table:
    done = sum(r["state"] in TERMINAL for r in rows)
    ok = sum(r["state"] == "succeeded" for r in rows)
    failed = sum(r["state"] == "failed" for r in rows)
    going = [r for r in runners if r["alive"]]
    title = (f"sweep {plan['sweep_id']} · {done}/{len(rows)} done ({ok} succeeded, {failed} failed) · "
             + (f"{len(going)} runner(s) running" if going else
                "runners " + ", ".join(sorted({str(r.get("state") or "gone") for r in runners}))))
    table = Table(title=title, title_justify="left")
    multi = plan.get("nodes", 1) > 1
    for col in ("run", "setting", "seed", *(["node"] if multi else []), "state", "epoch", "test acc", "img/s"):
        table.add_column(col, justify="right" if col in ("seed", "node", "epoch", "test acc", "img/s") else "left")
    colors = {"succeeded": "green", "failed": "red", "running": "cyan", "cancelled": "yellow"}
    for r in rows:
        reason = str(r.get("reason") or "").split(" — ")[0]
        state = r["state"] + (f": {reason[:60]}" if r["state"] == "failed" and reason else "")
        c = colors.get(r["state"])
        table.add_row(r["run_id"], setting_label(r["setting"], short=True), str(r["seed"]),
                      *([str(r["node"])] if multi else []),
                      f"[{c}]{escape(state)}[/]" if c else escape(state),
                      f"{r['epoch']}/{r['epochs']}" if r["epochs"] else "-", pct(r["test_accuracy"]),
                      f"{r['images_per_second']:,.0f}" if r["images_per_second"] else "-")
    return table


def mean_std(xs: list[float]) -> dict[str, Optional[float]]:
    return {"mean": statistics.mean(xs) if xs else None, "std": statistics.stdev(xs) if len(xs) > 1 else None}


def results(place: Place, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per setting, in the plan's order, from the runs' summary.json (runs that succeeded)."""
    groups: dict[str, dict[str, Any]] = {}
    for run in plan["runs"]:
        label = setting_label(run["setting"])
        g = groups.setdefault(label, {"setting": run["setting"], "runs": [], "states": {}})
        files = place.files(run)
        state = parse_status(files.read_text(STATUS_FILE)).get("state") or "queued"
        g["states"][state] = g["states"].get(state, 0) + 1
        try:
            summary = json.loads(files.read_text("summary.json") or "null")
        except json.JSONDecodeError:
            summary = None
        if state == "succeeded" and isinstance(summary, dict):
            g["runs"].append({"run_id": run["run_id"], "seed": run.get("seed"), "summary": summary})
    out = []
    for label, g in groups.items():
        sums = [r["summary"] for r in g["runs"]]
        finals = [s["final_test_accuracy"] for s in sums]
        bar = sums[0].get("claim_accuracy") if sums else None  # the trainer's: the target, else the model's claim
        out.append({
            "setting": g["setting"], "label": label, "runs": sum(g["states"].values()), "succeeded": len(sums),
            "states": g["states"], "seeds": [r["seed"] for r in g["runs"]], "run_ids": [r["run_id"] for r in g["runs"]],
            "model": sums[0]["model"] if sums else None, "params": sums[0]["params"] if sums else None,
            "epochs": sums[0]["epochs_completed"] if sums else None, "device": sums[0].get("device") if sums else None,
            "final_test_accuracy": mean_std(finals),
            "best_test_accuracy": mean_std([s["best_test_accuracy"] for s in sums]),
            "train_seconds": mean_std([s["train_seconds"] for s in sums]),
            "per_seed_final": finals, "claim": bar,
            # every seed of the setting ran and met it; None: nothing to meet, or nothing finished
            "claim_met": (all(f >= bar for f in finals) and len(sums) == sum(g["states"].values()))
            if bar is not None and sums else None,
            "history": [s.get("history") or [] for s in sums],
        })
    return out


def _ms(m: dict[str, Optional[float]], scale: float = 100.0, unit: str = "%") -> str:
    if m["mean"] is None:
        return "-"
    return f"{scale * m['mean']:.2f}{unit}" + (f" ± {scale * m['std']:.2f}" if m["std"] is not None else "")


def results_table(rows: list[dict[str, Any]], title: str = "") -> Table:
    table = Table(title=title or None, title_justify="left")
    for col in ("setting", "runs", "final test acc", "best test acc", "params", "train time", "claim met"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for r in rows:
        others = {k: v for k, v in r["states"].items() if k != "succeeded"}
        runs = f"{r['succeeded']}/{r['runs']}" + (" (" + ", ".join(f"{n} {k}" for k, n in others.items()) + ")"
                                                  if others else "")
        met = "-" if r["claim_met"] is None else (f"yes (≥ {100 * r['claim']:.2f}%)" if r["claim_met"]
                                                  else f"no (≥ {100 * r['claim']:.2f}%)")
        table.add_row(setting_label(r["setting"], short=True), runs, _ms(r["final_test_accuracy"]),
                      _ms(r["best_test_accuracy"]),
                      f"{r['params']:,}" if r["params"] else "-",
                      _ms(r["train_seconds"], 1.0, "s"), met)
    return table


def markdown(rows: list[dict[str, Any]], first: str = "setting") -> str:
    """The result as a Markdown table (RESULTS.md is this, a row per recipe's sweep)."""
    out = [f"| {first} | params | epochs | seeds | final test acc (mean ± std) | best test acc | per-seed final | "
           "train time / run | device | claim met (every seed, final) |",
           "| --- | ---: | ---: | ---: | --- | --- | --- | ---: | --- | --- |"]
    for r in rows:
        met = "-" if r["claim_met"] is None else ("yes" if r["claim_met"] else "no") + f" (≥ {100 * r['claim']:.2f}%)"
        seeds = f"{r['succeeded']}" + (f" of {r['runs']}" if r["runs"] != r["succeeded"] else "")
        out.append(f"| {r['label']} | {r['params'] or 0:,} | {r['epochs'] or '-'} | {seeds} | "
                   f"{_ms(r['final_test_accuracy'])} | {_ms(r['best_test_accuracy'])} | "
                   f"{', '.join(f'{100 * f:.2f}' for f in r['per_seed_final'])} | "
                   f"{_ms(r['train_seconds'], 1.0, 's')} | {r['device'] or '-'} | {met} |")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], out: Path) -> Path:
    """The test-accuracy curves overlaid, one colour per setting (a line per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(rows):
        color = f"C{i % 10}"
        for j, h in enumerate(r["history"]):
            if h:
                ax.plot([e["epoch"] for e in h], [100 * e["test_accuracy"] for e in h], "o-", ms=3, color=color,
                        alpha=0.8, label=r["label"] if j == 0 else None)
    ax.set(title="test accuracy per setting (a line per seed)", xlabel="epoch", ylabel="%")
    ax.grid(alpha=0.3)
    if any(r["history"] for r in rows):
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
