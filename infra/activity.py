"""What is going on on an instance, asked in one shell command over its Host: the runs whose agent is
alive (their jobs markers, "RUN_ID PID RUN_DIR", under each remote dir) and the autostop watcher's
state file (infra/autostop.py writes it every poll). `status` and `train` both ask through here.

    res = host.exec(activity_command(["~/mnist-launch"], "~/.mnist-launch/autostop.json"), timeout=15)
    run_ids, watcher = parse_activity(res.stdout)     # (["run-1"], {"idle_seconds": 0.0, ...})
"""

from __future__ import annotations

import json
import shlex
from typing import Any, Iterable, Optional

STATE_MARK = "--mnist-launch-autostop-state--"


def sh_path(path: str) -> str:
    """A path on the host quoted for sh; a leading ~/ becomes "$HOME"/ (a quoted ~ would not expand)."""
    if path == "~":
        return '"$HOME"'
    return shlex.quote(path) if not path.startswith("~/") else '"$HOME"/' + shlex.quote(path[2:])


def jobs_command(remote_dir: str = "~/mnist-launch") -> str:
    """A shell line listing the active runs (their markers whose agent is alive) under ``remote_dir``."""
    d = sh_path(remote_dir)
    return (f"for f in {d}/jobs/*; do [ -f \"$f\" ] || continue; read id pid dir < \"$f\"; "
            "kill -0 \"$pid\" 2>/dev/null && echo \"$id\"; done; true")


def activity_command(remote_dirs: Iterable[str], state_file: str) -> str:
    """One shell line: the active runs under each of ``remote_dirs``, then STATE_MARK, the host's clock
    and the watcher's ``state_file`` (nothing after the clock when there is none). Always exits 0."""
    return ("; ".join(jobs_command(d) for d in sorted(set(remote_dirs)))
            + f"; echo {STATE_MARK}; date +%s; cat {sh_path(state_file)} 2>/dev/null; true")


def parse_activity(stdout: str) -> tuple[list[str], Optional[dict[str, Any]]]:
    """The answer of activity_command: run ids, then the mark, the host's clock and the
    watcher's state JSON. A state not rewritten for several polls is a dead watcher: no idle time."""
    jobs_out, _, rest = stdout.partition(STATE_MARK)
    clock, _, state_out = rest.strip().partition("\n")
    watcher: Optional[dict[str, Any]]
    try:
        loaded = json.loads(state_out) if state_out.strip() else None
        watcher = loaded if isinstance(loaded, dict) else None
        if (watcher is not None
                and float(clock) - float(watcher.get("updated_at", 0)) > 3 * float(watcher.get("poll_s", 30)) + 60):
            watcher = {**watcher, "idle_seconds": None, "stale": True}
    except (ValueError, TypeError):
        watcher = None
    return sorted(set(jobs_out.split())), watcher
