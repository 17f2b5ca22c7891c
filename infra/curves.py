"""The agent draws ``curves.png`` from the run's epoch events, so the training process never imports matplotlib.

Drawing in the trainer cost its main rank 1.2 s to import matplotlib plus ~0.3 s a drawing, on the path
from the command to the first step and from the last epoch to the run's end (2-core dev machine). The
agent has a core to spare while the trainer imports torch: it imports matplotlib then, in a thread (with
its fonts and the run's config), and draws after an epoch at most every ``every`` seconds, the last
planned epoch as soon as it arrives (while the trainer saves and exits), and once more when the run
stops if anything is new, before its ``run_end`` (so a finished run's folder, and the store's copy,
always hold the final curves).

    painter = CurvePainter(run_dir)   # starts the warm-up
    painter.poll()                    # in the agent's loop: new epochs drawn when due
    painter.poll(final=True)          # when the trainer has exited
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Optional

from trainer.events import EVENTS_FILE, parse_events

CURVES_FILE = "curves.png"
CURVES_EVERY_S = 60.0  # while a run trains, curves.png is redrawn at most this often; always when it stops


class CurvePainter:
    """Follows ``events.jsonl`` from its start (a resumed run's curves show every attempt's epochs) and keeps
    one record per epoch, the newest: an epoch a resumed attempt trained again replaces the old one."""

    def __init__(self, run_dir: Path, every: float = CURVES_EVERY_S) -> None:
        self.run_dir, self.every = run_dir, every
        self.offset = 0
        self.history: dict[int, dict] = {}
        self.drawn: Optional[list[dict]] = None
        self.drawn_at = time.monotonic()  # the first drawing comes `every` seconds into the run
        self.error: Optional[str] = None
        self.test_size: Optional[int] = None  # from the start event: where an error of 0 is drawn
        # (target, claim, the last planned epoch) from config.yaml
        self.plan: Optional[tuple[Optional[float], Optional[float], int]] = None
        threading.Thread(target=self._warm_up, name="curves-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        """What the first drawing would pay, paid now beside the trainer's start: matplotlib, its fonts, the config."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            import trainer.curves  # noqa: F401

            fig = Figure(figsize=(1, 1))
            fig.text(0.5, 0.5, "0.1%")
            FigureCanvasAgg(fig).draw()
            self._plan()
        except Exception:  # drawing will say why, later
            pass

    def poll(self, final: bool = False) -> bool:
        """Read new epoch events; draw if something changed and a drawing is due. True if it drew."""
        self._read()
        history = [self.history[e] for e in sorted(self.history)]
        if not history or history == self.drawn:
            return False
        last = self._plan()[2]
        # the last planned epoch is drawn as it arrives, while the trainer saves and exits: run_end then waits on
        # nothing (a run that stops earlier, on its target or a signal, is drawn at the end)
        if not final and time.monotonic() - self.drawn_at < self.every and max(self.history) < last:
            return False
        from trainer.curves import MNIST_TEST_SIZE, write_curves

        try:
            target, claim, _ = self._plan()
            write_curves(history, self.run_dir / CURVES_FILE, target, claim, self.test_size or MNIST_TEST_SIZE)
        except Exception as err:  # a drawing never fails the run; agent.log says why, once
            msg = f"agent: could not draw {CURVES_FILE}: {type(err).__name__}: {err}"
            if msg != self.error:
                print(msg, file=sys.stderr, flush=True)
            self.error = msg
            return False
        self.drawn, self.drawn_at = history, time.monotonic()
        return True

    def _plan(self) -> tuple[Optional[float], Optional[float], int]:
        """The run's train.target_accuracy and its model's claimed accuracy (dashed lines), and its last epoch."""
        if self.plan is None:
            from core.config import MODEL_CLAIMS, config_from_yaml

            try:
                cfg = config_from_yaml((self.run_dir / "config.yaml").read_text(), str(self.run_dir / "config.yaml"))
                self.plan = (cfg.train.target_accuracy, MODEL_CLAIMS.get(cfg.model), cfg.train.epochs)
            except Exception:  # no readable config: curves without those lines, drawn when the run stops
                self.plan = (None, None, 0)
        return self.plan

    def _read(self) -> None:
        try:
            with open(self.run_dir / EVENTS_FILE, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        events, self.offset = parse_events(chunk, self.offset)
        for ev in events:
            if ev.get("type") == "start" and isinstance(ev.get("test_size"), int):
                self.test_size = ev["test_size"]
            if ev.get("type") == "epoch" and isinstance(ev.get("epoch"), int):
                self.history[ev["epoch"]] = {k: v for k, v in ev.items()
                                             if k not in ("type", "time", "best", "best_test_accuracy")}
