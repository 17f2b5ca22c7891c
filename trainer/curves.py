"""Curves that show what matters near 99%: test error on a log scale, the claim, the best epoch, the LR.

Accuracy from 60% to 100% leaves 98.5% -> 99.5% a flat line at the top; error (100 - accuracy) on a
log axis gives each halving of the error the same height. Pure functions of a run's epoch records
(summary.json's ``history``, or its ``epoch`` events) and a few numbers, so any process can draw them:
the agent (infra/curves.py, beside training), `runs --compare` on a laptop. matplotlib comes in when a figure is drawn
(its Figure and the Agg canvas only, no pyplot and its global state): importing this module costs nothing.

    write_curves(summary["history"], Path("curves.png"), target=0.995, claim=0.994)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MNIST_TEST_SIZE = 10_000  # the test set's images: one misclassified image is 0.01% error
CLAIM_COLOR, TARGET_COLOR = "0.25", "tab:green"


@dataclass
class Run:
    """One run's curve in an overlay: its epoch records, and the accuracies it is held to (fractions)."""

    label: str
    history: list[dict]
    claim: Optional[float] = None  # the recipe's claimed test accuracy (core.config.MODEL_CLAIMS)
    target: Optional[float] = None  # train.target_accuracy: the run stops once it reaches it
    test_size: int = MNIST_TEST_SIZE


def error_floor(test_size: int = MNIST_TEST_SIZE) -> float:
    """Where an error of 0 is drawn on the log axis (%): half of one image, below any error a run can have."""
    return 50.0 / max(1, test_size)


def error_pct(accuracy: float, floor: float) -> float:
    """Error in % (100 - accuracy), at least ``floor``: a log axis has no 0."""
    return max(100.0 * (1.0 - accuracy), floor)


def best_record(history: list[dict]) -> Optional[dict]:
    """The epoch with the highest test accuracy, the first of equals (as the trainer keeps its best)."""
    return max(history, key=lambda h: h["test_accuracy"], default=None)


def curves_figure(history: list[dict], target: Optional[float] = None, claim: Optional[float] = None,
                  test_size: int = MNIST_TEST_SIZE) -> "Figure":
    """One run: loss (left); train and test error with the claim, the target and the best epoch (right);
    the learning rate under it."""
    fig = _figure((11, 5.5))
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1), width_ratios=(1, 1.35))
    loss = fig.add_subplot(grid[:, 0])
    err = fig.add_subplot(grid[0, 1])
    lr = fig.add_subplot(grid[1, 1], sharex=err)
    epochs = [h["epoch"] for h in history]
    loss.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train")
    loss.plot(epochs, [h["test_loss"] for h in history], "o-", ms=3, label="test")
    loss.set(title="loss", xlabel="epoch")
    _epoch_axis(loss, epochs)
    floor = error_floor(test_size)
    err.plot(epochs, [error_pct(h["train_accuracy"], floor) for h in history], "o-", ms=3, color="C0",
             label="train", alpha=0.6)
    err.plot(epochs, [error_pct(h["test_accuracy"], floor) for h in history], "o-", ms=3, color="C1", label="test")
    best = best_record(history)
    if best is not None:
        final = history[-1]["test_accuracy"]
        err.set_title(f"test error: best {_pct(1 - best['test_accuracy'])} (epoch {best['epoch']}), "
                      f"final {_pct(1 - final)}")
    run = Run("", history, claim, target, test_size)
    _mark_best(err, run, "C1", lr)
    _bar_lines(err, [run])
    _error_axis(err, [run])
    _lr_panel(lr, [run])
    for ax in (loss, err):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.09, top=0.94, wspace=0.18, hspace=0.08)
    return fig


def write_curves(history: list[dict], path: Path, target: Optional[float] = None, claim: Optional[float] = None,
                 test_size: int = MNIST_TEST_SIZE) -> None:
    """``curves.png`` of one run (``curves_figure``), replaced whole: a reader never sees half a PNG."""
    save_figure(curves_figure(history, target, claim, test_size), path)


def overlay_figure(runs: list[Run]) -> "Figure":
    """Several runs: test error per run on a log scale, each run's best epoch, the claims and targets (one
    line for a value the runs share, one per run where they differ), the learning rates under it."""
    fig = _figure((9, 6))
    err, lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    for i, run in enumerate(runs):
        h = run.history
        floor = error_floor(run.test_size)
        err.plot([e["epoch"] for e in h], [error_pct(e["test_accuracy"], floor) for e in h], "o-", ms=3,
                 color=f"C{i}", label=run.label)
        _mark_best(err, run, f"C{i}")
    _bar_lines(err, runs)
    _error_axis(err, runs)
    _lr_panel(lr, runs)
    err.set_title("test error")
    err.grid(alpha=0.3)
    err.legend(fontsize=8)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.08, top=0.95, hspace=0.08)
    return fig


def write_overlay(runs: list[Run], path: Path) -> None:
    save_figure(overlay_figure(runs), path)


def save_figure(fig: "Figure", path: Path, dpi: int = 100) -> None:
    """Write a PNG under a temporary name (``.tmp``: the agent's upload skips it), then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # a name of its own per process
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _figure(size: tuple[float, float]) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.4g}%"


def _mark_best(ax: "Axes", run: Run, color: str, *also: "Axes") -> None:
    """A star on the test error at the best epoch, and a dotted line through it on ``also``'s panels."""
    best = best_record(run.history)
    if best is None:
        return
    label = f"{run.label + ': ' if run.label else ''}best {_pct(best['test_accuracy'])} (epoch {best['epoch']})"
    ax.plot([best["epoch"]], [error_pct(best["test_accuracy"], error_floor(run.test_size))], "*", ms=13,
            color=color, markeredgecolor="k", gid="best", label=label)
    for other in also:
        other.axvline(best["epoch"], color=color, ls=":", lw=1)


def _bar_lines(ax: "Axes", runs: list[Run]) -> None:
    """Dashed lines at the claims' and targets' errors. A value several runs share is one line; where the runs'
    values of a kind differ, each line names its run and takes its colour; a claim equal to its target is one."""
    values: dict[str, set[float]] = {"claim": set(), "target": set()}
    at: dict[float, list[tuple[str, int]]] = {}  # accuracy -> (kind, run index) drawn there
    for i, run in enumerate(runs):
        for kind, acc in (("claim", run.claim), ("target", run.target)):
            if acc is not None:
                values[kind].add(acc)
                at.setdefault(acc, []).append((kind, i))
    floor = min((error_floor(r.test_size) for r in runs), default=error_floor())
    for acc, uses in sorted(at.items()):
        kinds = sorted({k for k, _ in uses})
        owners = sorted({i for _, i in uses})
        differ = any(len(values[k]) > 1 for k in kinds) and len(runs) > 1
        name = " = ".join(kinds)
        if differ:
            name = f"{', '.join(runs[i].label for i in owners)}: {name}"
        color = (f"C{owners[0]}" if differ and len(owners) == 1
                 else TARGET_COLOR if kinds == ["target"] else CLAIM_COLOR)
        ax.axhline(error_pct(acc, floor), ls="--", lw=1.2, color=color, gid=" = ".join(kinds),
                   label=f"{name} {_pct(acc)} (error {_pct(1 - acc)})")


def _error_axis(ax: "Axes", runs: list[Run]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(subs=tuple(float(s) for s in range(1, 10))))
    low, high = ax.get_ylim()
    # under a decade the 1-2-5 ticks are one or two: label every minor tick then
    ax.yaxis.set_minor_formatter(plain if high / low < 12 else NullFormatter())
    ylabel = "error % (100 − accuracy), log"
    clipped = [r for r in runs if any(h["test_accuracy"] >= 1 or h["train_accuracy"] >= 1 for h in r.history)]
    if clipped:
        ylabel += f"; 0 drawn at {error_floor(min(r.test_size for r in clipped)):g}"
    ax.set_ylabel(ylabel)
    ax.tick_params(labelbottom=False)


def _lr_panel(ax: "Axes", runs: list[Run]) -> None:
    """The learning rate each epoch ended with; records without one (older runs) are left out."""
    drawn: list[float] = []
    for i, run in enumerate(runs):
        points = [(h["epoch"], h["lr"]) for h in run.history if h.get("lr") is not None]
        if points:
            x, y = zip(*points)
            ax.plot(x, y, "o-", ms=2, color=f"C{i}" if len(runs) > 1 else "C2", gid="lr")
            drawn += y
    if not drawn:
        ax.text(0.5, 0.5, "learning rate not recorded", ha="center", va="center", transform=ax.transAxes,
                color="0.4")
        ax.set_yticks([])
    elif min(drawn) > 0 and max(drawn) / min(drawn) >= 10:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.01, not mathtext's 10^-2 (~1 s)
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="epoch", ylabel="lr")
    _epoch_axis(ax, [h["epoch"] for run in runs for h in run.history])
    ax.grid(alpha=0.3)


def _epoch_axis(ax: "Axes", epochs: list[int]) -> None:
    """Whole epochs on the x axis; one epoch alone sits in the middle of a unit-wide axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs and min(epochs) == max(epochs):
        ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
