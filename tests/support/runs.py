"""Following a local run to its end, and reading its events."""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path

# an epoch row of the live view ("  3   0.1234   97.50% ..."): group 1 is the epoch
EPOCH_ROW = re.compile(r"^\s+(\d+)\s+\d+\.\d{4}\s+\d+\.\d\d%", re.M)


# the shared 2-process run's settings (tests/conftest.py two_process_run, on mnist_2k)
TWO_PROCESS = ["train.epochs=2", "train.batch_size=64", "train.keep_checkpoints=1"]


def run_to_end(run, timeout=240):
    """Follow ``run`` (a started local run) until it ends: (its run_end event, what the view printed)."""
    from rich.console import Console

    from launcher.live import RunView, follow_run

    out = io.StringIO()
    view = RunView(Console(file=out, width=120), live=False)
    end = follow_run(run.host, str(run.run_dir), view, poll=0.1, offset=run.events_offset)
    return end, out.getvalue()


def events_of(run_dir):
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def wait_until(pred, what: str, timeout: float = 300):
    """``pred()``'s first truthy value, polled every 0.1 s; fail with ``what`` after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not (found := pred()):
        assert time.monotonic() < deadline, f"{what} after {timeout}s"
        time.sleep(0.1)
    return found


def has_event(run_dir, pred) -> bool:
    """Whether the run's events.jsonl holds a whole event that ``pred`` accepts."""
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return False
    return any(pred(json.loads(line)) for line in path.read_text().splitlines() if line.endswith("}"))


def process_tree(pid):
    """``pid`` and every process below it, each with its command line (read from /proc while it runs)."""
    from infra.agent import descendants

    tree = {}
    for p in [pid, *descendants(pid)]:
        try:
            tree[p] = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            pass  # gone meanwhile
    return tree


def is_rank(argv):
    """A training process started by torchrun (`python -u -m trainer ...`), not `accelerate launch` itself."""
    return any(pair == (b"-m", b"trainer") for pair in itertools.pairwise(argv)) \
        and not any(b"accelerate" in a for a in argv)
