"""What the cluster commands show and ask: rich consoles (progress on stderr, tables on stdout), a
phase spinner with its elapsed time, and the yes/no question the CLI layer passes in (``Confirm``).

    with phase(err_console(), "status checks") as tick:
        tick("2/2")
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console

# a yes/no question and its default answer -> the answer; the CLI passes one in when there is a
# terminal to ask on, the commands never ask by themselves
Confirm = Callable[[str, bool], bool]


def err_console() -> Console:
    # progress and notes go to stderr, so `status --json` output stays machine-readable
    return Console(stderr=True, highlight=False, soft_wrap=True)


def out_console() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    # piped into grep or a file: never fold instance ids to fit an imaginary 80 columns
    return console if console.is_terminal else Console(highlight=False, soft_wrap=True, width=200)


@contextmanager
def phase(console: Console, label: str) -> Iterator[Callable[[str], None]]:
    """A spinner with elapsed time while waiting, then one ✓ line with the total."""
    start = time.monotonic()
    with console.status(f"{label}…") as status:
        def tick(detail: str = "") -> None:
            status.update(f"{label}… {time.monotonic() - start:.0f}s {detail}".rstrip())

        yield tick
    console.print(f"[green]✓[/] {label} ({time.monotonic() - start:.0f}s)")
