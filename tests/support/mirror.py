"""An MNIST mirror on 127.0.0.1: the real ``.gz`` files (a copy in a folder of the test's), and broken mirrors
beside the good one, each under its own path, so a test lists them in the order it wants them tried.

- ``/good/NAME``: the file as it is.
- ``/corrupt/NAME``: a valid gzip of the IDX content with one byte changed (only the checksum can tell).
- ``/garbled/NAME``: the ``.gz`` with bytes overwritten in the middle (the gzip stream itself breaks).
- ``/truncated/NAME``: says the whole length, sends half, closes the connection.
- ``/cut/NAME``: half the file with no length given: the gzip stream simply ends early.
- ``/missing/NAME``: 404.
- ``/oversized/NAME``: the biggest file (the train images, 47 MB inflated) under any name.

    with Mirror(folder) as m: fetch_missing(dest, ["test_labels"], [m.url("corrupt"), m.url("good")])
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

KINDS = ("good", "corrupt", "garbled", "truncated", "cut", "missing", "oversized")
BIGGEST = "train-images-idx3-ubyte.gz"


class Mirror:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        self._corrupt: dict[str, bytes] = {}
        self._lock = threading.Lock()
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                mirror.requests.append(self.path)
                kind, _, name = self.path.lstrip("/").partition("/")
                path = mirror.folder / name
                if kind not in KINDS or kind == "missing" or "/" in name or not path.is_file():
                    self.send_error(404)
                    return
                try:
                    self.send(kind, mirror.body(kind, name))
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: what a test may want
                    self.close_connection = True

            def send(self, kind: str, body: bytes) -> None:
                self.send_response(200)
                if kind == "cut":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if kind == "truncated" else body)
                if kind == "truncated":
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread: Optional[threading.Thread] = None

    def body(self, kind: str, name: str) -> bytes:
        data = (self.folder / (BIGGEST if kind == "oversized" else name)).read_bytes()
        if kind == "garbled":
            mid = len(data) // 2
            return data[:mid] + b"\x00" * 64 + data[mid + 64:]
        if kind == "corrupt":
            with self._lock:
                if name not in self._corrupt:
                    content = bytearray(gzip.decompress(data))
                    content[-1] ^= 0xFF  # the last pixel or label: header and size stay right
                    self._corrupt[name] = gzip.compress(bytes(content), compresslevel=1)
            return self._corrupt[name]
        return data

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/"

    def __enter__(self) -> "Mirror":
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
