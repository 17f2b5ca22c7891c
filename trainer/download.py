"""Fetch the MNIST files that a data folder lacks, from a list of mirrors, each verified before it counts.

Each missing file is streamed to a private ``NAME.*.part`` beside its final name, checked — a whole gzip
stream whose content has the canonical IDX file's size and SHA-256 — and only then renamed to ``NAME``
(``os.replace``). A short read, an HTTP error, a refused connection or a corrupt file moves on to the
next mirror; a file no mirror gives whole is never left behind, not even as a ``.part``. Names are
fixed here, never taken from a server, and nothing else in the folder is touched.

Checking the content rather than the ``.gz`` bytes accepts any gzip encoding of exactly the canonical
files: the mirrors' own ``.gz`` (torchvision lists their MD5s) and a re-compressed copy alike.

    fetched = fetch_missing(Path("data"), ["https://ossci-datasets.s3.amazonaws.com/mnist/"])
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional, Protocol

from core.errors import DataError

# torchvision.datasets.MNIST.mirrors (tests/unit/test_download.py keeps the two lists equal; torchvision
# itself is not imported here: it brings torch, which the launcher does not load to check a folder)
DEFAULT_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")


@dataclass(frozen=True)
class Canonical:
    name: str  # the file as the mirrors serve it, and as it is saved
    size: int  # bytes of the IDX content (uncompressed)
    sha256: str  # of the IDX content
    md5: str  # of the IDX content, as LeCun's page and the shared copy's README give it


CANONICAL = {
    "train_images": Canonical("train-images-idx3-ubyte.gz", 47040016,
                              "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                              "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": Canonical("train-labels-idx1-ubyte.gz", 60008,
                              "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                              "a25bea736e30d166cdddb491f175f624"),
    "test_images": Canonical("t10k-images-idx3-ubyte.gz", 7840016,
                             "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                             "2646ac647ad5339dbf082846283269ea"),
    "test_labels": Canonical("t10k-labels-idx1-ubyte.gz", 10008,
                             "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                             "27ae3e4e09519cfbb04c329615203637"),
}
CHUNK = 1 << 16
TIMEOUT_S = 30  # per connect and per read: a stalled mirror is left for the next


class Progress(Protocol):
    """What a download reports: the launcher draws a bar on a terminal, else one line a file."""

    def start(self, name: str, url: str, total: Optional[int]) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def done(self, name: str, url: str, nbytes: int, seconds: float) -> None: ...

    def failed(self, name: str, url: str, why: str) -> None: ...


class LineProgress:
    """One compact line per file (and per mirror that failed) on a stream: logs stay readable."""

    def __init__(self, stream: Optional[IO[str]] = None) -> None:
        self.stream = stream or sys.stderr

    def start(self, name: str, url: str, total: Optional[int]) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def done(self, name: str, url: str, nbytes: int, seconds: float) -> None:
        print(done_line(name, url, nbytes, seconds), file=self.stream, flush=True)

    def failed(self, name: str, url: str, why: str) -> None:
        print(failed_line(url, why), file=self.stream, flush=True)


def done_line(name: str, url: str, nbytes: int, seconds: float) -> str:
    size = f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.1f} kB"
    return f"data: downloaded {name} ({size}) from {url} in {seconds:.1f}s, sha256 verified"


def failed_line(url: str, why: str) -> str:
    return f"data: {url}: {why}"


class _Bad(Exception):
    """This mirror did not give the file; ``unreachable`` when it never answered at all."""

    def __init__(self, why: str, unreachable: bool = False) -> None:
        super().__init__(why)
        self.unreachable = unreachable


def fetch_missing(folder: Path, missing: list[str], mirrors: list[str] | tuple[str, ...],
                  progress: Optional[Progress] = None, looked: str = "") -> list[str]:
    """Download each of ``missing`` (keys of CANONICAL) into ``folder``; the names saved, in order.
    Raises DataError in one line when a file could not be had from any mirror (what was saved stays);
    ``looked`` (the folders searched) goes into that line when no mirror could be reached at all."""
    progress = progress or LineProgress()
    created = _make_folder(folder)
    saved: list[str] = []
    dead: set[str] = set()
    try:
        for i, key in enumerate(missing):
            failures = _fetch_one(folder, CANONICAL[key], mirrors, progress, dead)
            if failures is None:
                saved.append(CANONICAL[key].name)
                continue
            tried = "; ".join(f"{m}: {bad}" for m, bad in failures)
            if all(bad.unreachable for _, bad in failures):  # no network: where we looked, how to get the files
                names = ", ".join(CANONICAL[k].name for k in missing[i:])
                raise DataError(f"MNIST files missing ({names}); looked in {looked or folder}; no mirror reachable "
                                f"({tried}) — {how_to_get(folder)}")
            raise DataError(f"{CANONICAL[key].name}: no mirror gave the canonical file ({tried}) — try again later, "
                            f"or {how_to_get(folder)}")
    except BaseException:
        if created is not None and not saved:
            _remove_empty(created, folder)  # nothing came: leave no folder we made
        raise
    return saved


def _fetch_one(folder: Path, want: Canonical, mirrors: list[str] | tuple[str, ...], progress: Progress,
               dead: set[str]) -> Optional[list[tuple[str, _Bad]]]:
    """Try each mirror in turn (but those ``dead`` for an earlier file); None once one gave the file, else why
    each failed. A mirror's failure is reported once another gave the file: when none does, the error says it."""
    if not mirrors:
        raise DataError("no MNIST mirrors to download from — set MNIST_LAUNCH_DATA_MIRRORS or data.mirrors, "
                        "or unset them for torchvision's")
    failures: list[tuple[str, _Bad]] = []
    for mirror in [m for m in mirrors if m not in dead] or mirrors:
        url = mirror.rstrip("/") + "/" + want.name
        try:
            nbytes, seconds = _download(url, folder, want, progress)
        except _Bad as bad:
            failures.append((mirror, bad))
            if bad.unreachable:
                dead.add(mirror)  # no use asking it for the next file (a dropped connection costs a timeout)
            continue
        for earlier, why in failures:
            progress.failed(want.name, earlier.rstrip("/") + "/" + want.name, f"{why} — used the next mirror")
        progress.done(want.name, url, nbytes, seconds)
        return None
    return failures


def how_to_get(folder: Path | str) -> str:
    return (f"run `mnist-launch data download --data-dir DIR` on a machine with internet and copy the four "
            f"*-ubyte.gz files into {folder}, set MNIST_LAUNCH_DATA_MIRRORS (or data.mirrors) to a mirror you can "
            "reach, or pass --data-dir")


def _download(url: str, folder: Path, want: Canonical, progress: Progress) -> tuple[int, float]:
    """Stream ``url`` into a private .part file, verify it, rename it to its fixed name; (bytes, seconds)."""
    start = time.monotonic()
    try:
        fd, part = tempfile.mkstemp(prefix=want.name + ".", suffix=".part", dir=folder)
    except OSError as err:
        raise DataError(f"cannot write into {folder} ({err.strerror}) — pass a --data-dir you can write to") from None
    try:
        with os.fdopen(fd, "wb") as out:
            nbytes = _stream(url, out, want, progress)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(part, 0o644)
        os.replace(part, folder / want.name)
    except OSError as err:  # this machine's disk, not the mirror
        Path(part).unlink(missing_ok=True)
        raise DataError(f"cannot write {folder / want.name} ({err.strerror or err}) — free some space or pass "
                        "another --data-dir") from None
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return nbytes, time.monotonic() - start


def _stream(url: str, out: IO[bytes], want: Canonical, progress: Progress) -> int:
    import http.client  # here, not at the top: every `train` imports this module, few download
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "mnist-launch", "Accept-Encoding": "identity"})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        err.close()
        raise _Bad(f"HTTP {err.code} {err.reason}") from None
    except http.client.HTTPException as err:  # it answered, but not in HTTP
        raise _Bad(f"bad HTTP response ({type(err).__name__})") from None
    except (urllib.error.URLError, OSError) as err:  # refused, no route, name not found, timed out
        reason = getattr(err, "reason", err)
        raise _Bad(f"unreachable ({getattr(reason, 'strerror', None) or reason})", unreachable=True) from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        progress.start(want.name, url, total)
        check = _Content(want)
        nbytes = 0
        while True:
            try:
                chunk = response.read(CHUNK)
            except (http.client.HTTPException, OSError) as err:  # the connection broke off or stalled mid-file
                raise _Bad(f"short read after {nbytes:,} bytes ({type(err).__name__})") from None
            if not chunk:
                break
            nbytes += len(chunk)
            if nbytes > check.limit:
                raise _Bad(f"more than {check.limit:,} bytes: not {want.name}")
            check.feed(chunk)
            out.write(chunk)  # a full disk is this machine's error, not the mirror's: it stops the download
            progress.advance(len(chunk))
        if total is not None and nbytes != total:
            raise _Bad(f"short read: {nbytes:,} of {total:,} bytes")
        check.finish()
    return nbytes


class _Content:
    """The IDX content inside a gzip stream, hashed while it arrives; raises _Bad on the first wrong byte count."""

    def __init__(self, want: Canonical) -> None:
        self.want = want
        self.inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip only
        self.sha = hashlib.sha256()
        self.size = 0
        self.limit = want.size + want.size // 100 + (1 << 20)  # gzip of stored blocks is a little over the content

    def feed(self, chunk: bytes) -> None:
        data = chunk
        try:
            while data:  # bounded inflation: a tiny file that expands without end stops at the content's size
                piece = self.inflate.decompress(data, CHUNK)
                self._take(piece)
                data = self.inflate.unconsumed_tail
                if self.inflate.eof and (data or self.inflate.unused_data):
                    raise _Bad("data after the end of the gzip stream")
        except zlib.error as err:
            raise _Bad(f"corrupt: not a gzip file ({err})") from None

    def _take(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.want.size:
            raise _Bad(f"corrupt: more than the {self.want.size:,} bytes of {self.want.name}")
        self.sha.update(piece)

    def finish(self) -> None:
        if not self.inflate.eof:
            raise _Bad(f"truncated: the gzip stream ends early ({self.size:,} of {self.want.size:,} bytes)")
        if self.size != self.want.size or self.sha.hexdigest() != self.want.sha256:
            raise _Bad(f"corrupt: checksum mismatch (sha256 {self.sha.hexdigest()[:12]}…, "
                       f"expected {self.want.sha256[:12]}…)")


def _make_folder(folder: Path) -> Optional[Path]:
    """Create ``folder`` (and parents) if needed; the topmost folder made, or None."""
    top = None
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        top = parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create {folder} ({err.strerror or err}) — pass a --data-dir you can write to") \
            from None
    return top


def _remove_empty(top: Path, folder: Path) -> None:
    current = folder
    while True:
        try:
            current.rmdir()
        except OSError:
            return
        if current == top:
            return
        current = current.parent


__all__ = ["CANONICAL", "DEFAULT_MIRRORS", "LineProgress", "Progress", "done_line", "failed_line", "fetch_missing",
           "how_to_get"]
