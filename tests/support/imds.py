"""An instance-metadata service on 127.0.0.1 (IMDSv2, or v1 only) whose spot notices a test switches on."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NOTICE = {"action": "terminate", "time": "2026-11-23T13:00:00Z"}
REBALANCE = {"noticeTime": "2026-11-23T12:58:00Z"}


class FakeIMDS:
    """IMDSv2 (or v1 only): token PUTs, then notices the test switches on."""

    def __init__(self, v1_only: bool = False) -> None:
        self.action = None
        self.rebalance = None
        self.v1_only = v1_only
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body=b""):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                fake.requests.append(("PUT", self.path))
                if fake.v1_only or self.path != "/latest/api/token":
                    return self._send(403)
                if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._send(400)
                self._send(200, b"tok-123")

            def do_GET(self):
                fake.requests.append(("GET", self.path))
                if not fake.v1_only and self.headers.get("X-aws-ec2-metadata-token") != "tok-123":
                    return self._send(401)
                doc = {"/latest/meta-data/spot/instance-action": fake.action,
                       "/latest/meta-data/events/recommendations/rebalance": fake.rebalance}.get(self.path)
                if doc is None:
                    return self._send(404)
                self._send(200, json.dumps(doc).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
