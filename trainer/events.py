"""events.jsonl: the run's progress as JSON lines, appended by rank 0, read from a byte offset.

A reader only consumes complete lines, so a line being written is never half-read, and a
reader that remembers its offset resumes exactly where it stopped: no event lost or repeated.

    EventWriter(run_dir / "events.jsonl").emit("epoch", epoch=1, test_accuracy=0.98)
    events, offset = parse_events(chunk, offset)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

EVENTS_FILE = "events.jsonl"


class EventWriter:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def emit(self, type_: str, **fields: Any) -> dict:
        event = {"type": type_, "time": round(time.time(), 3), **fields}
        if self.enabled:
            line = json.dumps(event, separators=(",", ":")) + "\n"
            # one write() of a whole line with O_APPEND: readers never see a torn line
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        return event


def parse_events(chunk: bytes, offset: int) -> tuple[list[dict], int]:
    """Complete lines of ``chunk`` (read at ``offset``) -> (events, new offset after the last one)."""
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    events = []
    for line in chunk[: end + 1].splitlines():
        if line.strip():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                events.append({"type": "garbled", "raw": line[:200].decode(errors="replace")})
    return events, offset + end + 1
