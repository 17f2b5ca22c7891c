"""curves.png: a run's learning curves drawn from its epoch records (``summary.json``'s ``history``).

torch-free, so any process can draw them: the agent does, next to training (infra/curves.py), which keeps
matplotlib out of the training process.

    write_curves(summary["history"], run_dir / "curves.png")
"""

from __future__ import annotations

import os
from pathlib import Path


def write_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and test: one PNG (matplotlib's Figure alone: no pyplot, whose
    import and global state a training process does not need)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["test_loss"] for h in history], "o-", label="test")
    ax1.set(title="loss", xlabel="epoch")
    ax2.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    ax2.plot(epochs, [100 * h["test_accuracy"] for h in history], "o-", label="test")
    ax2.set(title="accuracy (%)", xlabel="epoch")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.91, wspace=0.2)  # tight_layout's, fixed
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
