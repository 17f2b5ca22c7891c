"""The launcher's data step: before a run starts, its MNIST folder is made whole on this machine.

Files the folder lacks are downloaded (trainer/download.py: mirrors tried in order, each file verified
and renamed into place) from ``data.mirrors``, else MNIST_LAUNCH_DATA_MIRRORS, else torchvision's
mirrors; then the four files are checked. A cloud run does this on the laptop too, which then ships
the folder (infra/datasync.py). Progress goes to stderr: a bar on a terminal, one line a file otherwise.

    counts = ensure_mnist("data", mirrors_for(cfg))  # {"train_images": 60000, ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from rich.console import Console

from core import settings
from core.config import Config
from trainer.data import check_dir, find
from trainer.download import DEFAULT_MIRRORS, LineProgress, done_line, failed_line, fetch_missing

if TYPE_CHECKING:
    from rich.progress import TaskID


def mirrors_for(cfg: Optional[Config]) -> list[str]:
    """Where missing files come from: data.mirrors, else MNIST_LAUNCH_DATA_MIRRORS, else torchvision's."""
    return list((cfg.data.mirrors if cfg else None) or settings.data_mirrors() or DEFAULT_MIRRORS)


def ensure_mnist(data_dir: str | Path, mirrors: list[str], console: Optional[Console] = None) -> dict[str, int]:
    """Download what ``data_dir`` lacks, then check the four files; their counts. DataError in one line."""
    _found, missing, looked = find(data_dir)
    if missing:
        console = console or Console(stderr=True)
        if console.is_terminal:
            with BarProgress(console) as bar:
                fetch_missing(Path(data_dir).expanduser(), missing, mirrors, bar, looked)
        else:
            fetch_missing(Path(data_dir).expanduser(), missing, mirrors, LineProgress(console.file), looked)
    return check_dir(data_dir)


class BarProgress:
    """trainer.download.Progress as a rich bar per file (bytes, speed), and a line when each ends."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            console=console, transient=True)
        self.task: Optional["TaskID"] = None

    def __enter__(self) -> "BarProgress":
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def start(self, name: str, url: str, total: Optional[int]) -> None:
        self.task = self.bar.add_task(name, total=total)

    def advance(self, nbytes: int) -> None:
        if self.task is not None:
            self.bar.advance(self.task, nbytes)

    def _end(self, line: str) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        self.bar.console.print(line, markup=False, highlight=False)

    def done(self, name: str, url: str, nbytes: int, seconds: float) -> None:
        self._end(done_line(name, url, nbytes, seconds))

    def failed(self, name: str, url: str, why: str) -> None:
        self._end(failed_line(url, why))
