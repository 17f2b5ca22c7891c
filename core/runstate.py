"""A run's state, its allowed transitions, and the one writer of ``status.json``.

    (no status.json) -> starting -> running -> succeeded | failed | cancelled | preempted | lost
    any terminal state -> starting (``--resume``, a recovery on a replacement instance)

The agent writes the file on the host that trains (tmp file + rename); the launcher writes it
through ``Host.write_text`` (the same rename on the host). Both go through ``StatusWriter``, which
refuses a transition the diagram does not have.

    status = StatusWriter.for_path(run_dir / STATUS_FILE)
    status.update(RunState.RUNNING, agent_pid=os.getpid())
"""

from __future__ import annotations

import json
import os
import time
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional, Union

from core.errors import RunError

STATUS_FILE = "status.json"


class RunState(str, Enum):
    STARTING = "starting"  # the launcher wrote the run's files and starts its agent
    RUNNING = "running"  # the agent started training
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the trainer or the agent failed (or the agent died unheard)
    CANCELLED = "cancelled"  # `mnist-launch cancel`, or a signal to the agent
    PREEMPTED = "preempted"  # a spot interruption notice: checkpointed and stopped
    LOST = "lost"  # the instance is gone, and its agent with it


ACTIVE: frozenset[str] = frozenset({RunState.STARTING.value, RunState.RUNNING.value})
# plain strings, so `status.get("state") in TERMINAL` works on what json.loads returns
TERMINAL: frozenset[str] = frozenset(s.value for s in RunState if s.value not in ACTIVE)

_ENDS = frozenset({RunState.FAILED, RunState.CANCELLED, RunState.LOST})
ALLOWED: dict[Optional[RunState], frozenset[RunState]] = {
    # no status.json yet: the launcher starts the run, or an agent started directly writes its first word
    None: frozenset({RunState.STARTING, RunState.RUNNING, RunState.FAILED}),
    RunState.STARTING: frozenset({RunState.RUNNING}) | _ENDS,
    RunState.RUNNING: frozenset({RunState.SUCCEEDED, RunState.PREEMPTED}) | _ENDS,
    **{RunState(s): frozenset({RunState.STARTING}) for s in TERMINAL},  # resumed or recovered
}


class TransitionError(RunError):
    """A state change the lifecycle does not allow (a bug or two writers racing, never user input)."""


def parse_state(value: object) -> Optional[RunState]:
    """The state in a status.json (None when there is none, or it names no state we know)."""
    try:
        return RunState(value) if value is not None else None
    except ValueError:
        return None


def is_terminal(state: object) -> bool:
    return isinstance(state, str) and state in TERMINAL


def check_transition(old: Optional[RunState], new: RunState) -> None:
    """Raise TransitionError unless ``old -> new`` is in the diagram (staying in a state always is)."""
    if old == new or new in ALLOWED[old]:
        return
    raise TransitionError(f"run state {old.value if old else 'none'} -> {new.value} is not allowed")


def parse_status(text: Optional[str]) -> dict[str, Any]:
    """A status.json's fields, or {} while there is none (or it is torn or not an object)."""
    try:
        status = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return status if isinstance(status, dict) else {}


class StatusWriter:
    """The only code that writes status.json: read it, check the transition, merge fields, write it whole."""

    def __init__(self, read: Callable[[], Optional[str]], write: Callable[[str], None]) -> None:
        self._read, self._write = read, write

    @classmethod
    def for_path(cls, path: Union[str, Path]) -> "StatusWriter":
        """A status.json on this machine, replaced atomically (a reader never sees half a file)."""
        p = Path(path)

        def read() -> Optional[str]:
            try:
                return p.read_text()
            except FileNotFoundError:
                return None

        def write(text: str) -> None:
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, p)

        return cls(read, write)

    def read(self) -> dict[str, Any]:
        return parse_status(self._read())

    def update(self, state: Optional[Union[RunState, str]] = None, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` (and ``state``, checked) into status.json; the new contents."""
        status = self.read()
        if state is not None:
            new = RunState(state)
            check_transition(parse_state(status.get("state")), new)
            status["state"] = new.value
        status.update(fields, updated_at=round(time.time(), 3))
        self._write(json.dumps(status, indent=2) + "\n")
        return status

    def start(self) -> dict[str, Any]:
        """A new attempt: only ``state`` and when, nothing of the last attempt's agent (its pid is not ours)."""
        check_transition(parse_state(self.read().get("state")), RunState.STARTING)
        status = {"state": RunState.STARTING.value, "updated_at": round(time.time(), 3)}
        self._write(json.dumps(status, indent=2) + "\n")
        return status

    def settle(self, state: Union[RunState, str], reason: Optional[str]) -> Optional[dict[str, Any]]:
        """Record an end the agent could not (it died unheard) if the run still says starting/running;
        None when the file already holds an end."""
        if self.read().get("state") not in ACTIVE:
            return None
        return self.update(state, reason=reason)
