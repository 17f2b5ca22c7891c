"""The live view: events.jsonl rendered with rich, read from a byte offset.

The same renderer serves a live ``train``, ``logs RUN_ID`` and ``logs --follow``: it reads
complete lines from an offset, so a follower that reconnects resumes exactly where it was.

    follow_run(host, run_dir, view)  # returns the run_end event (or None if detached)
    follow_files(StoreRun(open_store("s3://bucket/mnist"), run_id), view)  # the same, from a store
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from core.runstate import ACTIVE, TERMINAL, RunState, parse_status
from infra.host import Host
from infra.store import HostRun, RunFiles
from trainer.events import EVENTS_FILE, parse_events


def pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _batch(ev: dict) -> str:
    """The batch as the start event has it: global, and each process's share when there are several."""
    if "per_process_batch" not in ev:  # a run started before the batch was global
        return ""
    share = f" ({ev['per_process_batch']} a process)" if ev["num_processes"] > 1 else ""
    return f"batch {ev['batch_size']}{share} · "


class RunView:
    """Turns events into rich output: progress bars, one metrics row per epoch, a summary panel."""

    def __init__(self, console: Console, live: bool = True) -> None:
        self.console = console
        self.progress: Optional[Progress] = None
        self.live = live and console.is_terminal
        self.epoch_task: Optional[TaskID] = None
        self.step_task: Optional[TaskID] = None
        self.end: Optional[dict] = None
        self.finished: Optional[dict] = None
        self.header_done = False

    def _start_progress(self, epochs: int, steps: int, start_epoch: int) -> None:
        if not self.live or self.progress is not None:
            return
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console, transient=True,
        )
        self.progress.start()
        self.epoch_task = self.progress.add_task("epochs", total=epochs, completed=start_epoch - 1, info="")
        self.step_task = self.progress.add_task(f"epoch {start_epoch}", total=steps, info="")

    def print(self, *args, **kwargs) -> None:
        (self.progress.console if self.progress else self.console).print(*args, **kwargs)

    def handle(self, ev: dict) -> None:
        kind = ev.get("type")
        if kind == "start":
            resumed = f", resumed at epoch {ev['start_epoch']}" if ev.get("resumed") else ""
            chosen = " (auto)" if ev.get("mixed_precision_requested") == "auto" else ""
            # two lines, each short enough for an 80-column terminal
            self.print(f"[bold]{ev['model']}[/] {ev['params']:,} params · "
                       f"{ev['train_size']:,} train / {ev['test_size']:,} test images{resumed}")
            nodes = f" on {ev['nodes']} nodes" if (ev.get("nodes") or 1) > 1 else ""
            self.print(f"{ev['num_processes']} process(es){nodes} on {ev['device_name']} · {_batch(ev)}"
                       f"mixed precision {ev['mixed_precision']}{chosen}")
            if ev.get("summary") and not ev.get("resumed"):
                self.print(summary_table(ev["summary"]))
            self._header()
            self._start_progress(ev["epochs"], ev["steps_per_epoch"], ev.get("start_epoch", 1))
        elif kind == "step" and self.progress is not None and self.step_task is not None:
            self.progress.update(self.step_task, description=f"epoch {ev['epoch']}", completed=ev["step"],
                                 total=ev["steps"],
                                 info=f"loss {ev['loss']:.4f} · {ev['images_per_second']:,.0f} img/s")
        elif kind == "epoch":
            best = " *" if ev.get("best") else ""
            self.print(
                f"{ev['epoch']:>5}  {ev['train_loss']:>10.4f}  {pct(ev['train_accuracy']):>9}  "
                f"{ev['test_loss']:>9.4f}  {pct(ev['test_accuracy']):>8}{best:<2}  {ev['lr']:>9.2e}  "
                f"{ev['images_per_second']:>9,.0f}  {ev['seconds']:>6.1f}s"
            )
            if self.progress is not None and self.epoch_task is not None and self.step_task is not None:
                self.progress.update(self.epoch_task, completed=ev["epoch"])
                self.progress.reset(self.step_task, description=f"epoch {ev['epoch'] + 1}")
        elif kind == "restored":
            self.print(f"[yellow]restored[/] from {ev.get('store')} at {ev.get('checkpoint')} "
                       f"(epoch {ev.get('epoch')})")
        elif kind == "finished":
            self.finished = ev
        elif kind == "run_end":
            self.end = ev
            self.stop()
            self._final(ev)

    def _header(self) -> None:
        if not self.header_done:
            self.print("[dim]epoch  train loss  train acc  test loss  test acc        lr      img/s   time[/]")
            self.header_done = True

    def _final(self, end: dict) -> None:
        f = self.finished
        if end.get("state") == "succeeded" and f:
            grid = Table.grid(padding=(0, 2))
            grid.add_row("run", str(f.get("run_id")))
            grid.add_row("model", f"{f['model']} ({f['params']:,} params)")
            grid.add_row("epochs", f"{f['epochs_completed']}/{f['epochs']} ({f['stop_reason']})")
            grid.add_row("final test accuracy", pct(f.get("final_test_accuracy")))
            grid.add_row("best test accuracy", f"{pct(f.get('best_test_accuracy'))} (epoch {f.get('best_epoch')})")
            grid.add_row("train time", f"{f['train_seconds']:.1f}s · {f.get('images_per_second') or 0:,.0f} img/s")
            grid.add_row("device", f"{f['device']} × {f['num_processes']} · {f['mixed_precision']}")
            self.console.print(Panel(grid, title="finished", border_style="green", expand=False))
        elif end.get("state") == "cancelled":
            self.console.print(f"[yellow]cancelled[/]: {escape(str(end.get('reason')))}")
        else:  # a reason quotes logs: '[/path/pair.cc:545]' is text, not markup
            self.console.print(f"[red]{end.get('state')}[/]: {escape(str(end.get('reason')))}")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def summary_table(rows: list[dict]) -> Table:
    """torchsummary's table, as the seeds print it: layer, output shape, parameters."""
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="dim")
    table.add_column("Layer (type)")
    table.add_column("Output Shape")
    table.add_column("Param #", justify="right")
    for r in rows:
        table.add_row(r["layer"], str(r["output_shape"]), f"{r['params']:,}")
    return table


def read_status(files: RunFiles) -> dict:
    """The run's status.json, or {} while there is none (or it is being replaced)."""
    return parse_status(files.read_text("status.json"))


def agent_gone(files: RunFiles) -> Optional[dict]:
    """A run_end stand-in when no run_end is coming: the agent died without one (kill -9, reboot),
    or, for a store's copy, status.json says the run is over (its run_end may never be uploaded)."""
    status = read_status(files)
    if status.get("state") in TERMINAL:
        if files.mirrored:
            return {"type": "run_end", "state": status["state"], "exit_code": status.get("exit_code"),
                    "reason": status.get("reason")}
        return None  # it did finish: its run_end is in the file, read it
    # before the agent writes its pid, the pid it was spawned with (a launcher that knows it) stands in
    pid = status.get("agent_pid") or files.spawn_pid
    if pid and files.is_alive(int(pid)) is False:
        if files.instance_lost():  # a cloud run's source asks EC2 why
            return {"type": "run_end", "state": RunState.LOST.value,
                    "reason": "the instance is gone, and its agent with it"}
        return {"type": "run_end", "state": RunState.FAILED.value,
                "reason": "the agent stopped without finishing (killed?)"}
    return None


def _restarted(files: RunFiles, end: dict) -> bool:
    status = read_status(files)
    if status.get("state") not in ACTIVE:
        return False
    if files.mirrored:  # a copy uploaded before the run_end says "running" too: only a newer one counts
        return (status.get("updated_at") or 0) > (end.get("time") or float("inf"))
    return True


def follow_run(host: Host, run_dir: str, view: RunView, follow: bool = True, poll: float = 0.25,
               offset: int = 0, on_offset: Optional[Callable[[int], None]] = None) -> Optional[dict]:
    """``follow_files`` for a run folder on ``host`` (a live ``train``)."""
    return follow_files(HostRun(host, run_dir), view, follow=follow, offset=offset, on_offset=on_offset,
                        poll=(poll, poll))


def follow_files(files: RunFiles, view: RunView, follow: bool = True, offset: int = 0,
                 on_offset: Optional[Callable[[int], None]] = None,
                 poll: Optional[tuple[float, float]] = None) -> Optional[dict]:
    """Render events from ``offset`` until run_end (``follow``) or the end of the file (not).

    Only complete lines are consumed, so no event is shown twice or skipped. While nothing new
    arrives the wait doubles from ``poll[0]`` to ``poll[1]`` (default: the source's own).
    """
    first, longest = poll or files.poll
    wait = first
    # a folder is cheap to read: ask about the agent ~every 2 s; a store's copy on every idle read
    check_every = 1 if files.mirrored else 8
    idle_checks = 0
    pending_end: Optional[dict] = None  # a store's terminal status.json, seen once: wait one more read
    try:
        while True:
            chunk = files.read_from(EVENTS_FILE, offset)
            events, offset = parse_events(chunk, offset)
            for ev in events:
                view.end = None  # events after a run_end belong to a resumed attempt
                view.handle(ev)
            if on_offset:
                on_offset(offset)
            if view.end is not None:
                if follow and _restarted(files, view.end):
                    view.end = None  # a resumed attempt follows this run_end: keep going
                else:
                    return view.end
            if not events:
                if not follow:
                    return None
                idle_checks += 1
                if idle_checks % check_every == 0:
                    gone = agent_gone(files)
                    if gone is not None and files.mirrored and pending_end is None:
                        pending_end = gone  # status.json is written before run_end: give its upload a poll
                    elif gone is not None:
                        # one last read: the agent may have written run_end just before exiting
                        events, offset = parse_events(files.read_from(EVENTS_FILE, offset), offset)
                        for ev in events:
                            view.handle(ev)
                        if view.end is None:
                            view.handle(gone)
                        return view.end
                time.sleep(wait)
                wait = min(wait * 2, longest)
            else:
                idle_checks = 0
                wait = first
    finally:
        view.stop()
