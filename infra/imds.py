"""A tiny EC2 instance-metadata (IMDSv2) client for spot interruption and rebalance notices.

Standard library only. The endpoint comes from ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (the AWS
SDKs' variable; default ``http://169.254.169.254``). Where nothing answers (a laptop, a
container, ``AWS_EC2_METADATA_DISABLED=true``) the client gives up for good after the first
try, so local runs are never slowed by polling.

    imds = IMDS()
    imds.instance_action()   # None, or {"action": "terminate", "time": "2026-11-23T13:00:00Z"}
    imds.rebalance()         # None, or {"noticeTime": "..."}
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Optional

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
TOKEN_TTL = 21600  # seconds; renewed well before it runs out


class IMDS:
    def __init__(self, endpoint: Optional[str] = None, timeout: float = 0.5) -> None:
        endpoint = endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_ENDPOINT
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self.disabled = os.environ.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true"
        self.answered = False  # once IMDS has answered, a later failure is transient, not "no IMDS here"
        self._token: Optional[str] = None
        self._token_at = 0.0
        self._v1 = False  # the token PUT was refused (IMDSv1 only): plain GETs

    def _open(self, req: urllib.request.Request):
        return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 (our own endpoint)

    def _token_header(self) -> dict[str, str]:
        if self._v1:
            return {}
        if self._token is None or time.monotonic() - self._token_at > TOKEN_TTL / 2:
            req = urllib.request.Request(self.endpoint + TOKEN_PATH, method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)})
            try:
                with self._open(req) as resp:
                    self._token = resp.read().decode().strip()
                    self._token_at = time.monotonic()
            except urllib.error.HTTPError as err:
                self.answered = True
                if err.code in (403, 404, 405):  # no IMDSv2 here: fall back to v1 GETs
                    self._v1 = True
                    return {}
                raise
        return {"X-aws-ec2-metadata-token": self._token}

    def get(self, path: str) -> Optional[str]:
        """The body at ``path``; None for 404 (no such notice) and, quietly, when IMDS is unreachable.
        A first try that reaches nothing disables the client for good."""
        if self.disabled:
            return None
        try:
            headers = self._token_header()
            req = urllib.request.Request(self.endpoint + path, headers=headers)
            try:
                with self._open(req) as resp:
                    self.answered = True
                    return resp.read().decode()
            except urllib.error.HTTPError as err:
                self.answered = True
                if err.code == 401:  # token expired or revoked: a fresh one next call
                    self._token = None
                return None
        except urllib.error.HTTPError:
            return None
        except (OSError, ValueError):  # refused, timed out, unresolvable: no IMDS (or a blip once it answered)
            if not self.answered:
                self.disabled = True
            return None

    def _json(self, path: str) -> Optional[dict]:
        body = self.get(path)
        if body is None:
            return None
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            return {"raw": body[:200]}
        return data if isinstance(data, dict) else {"raw": body[:200]}

    def instance_action(self) -> Optional[dict]:
        """The spot interruption notice (``{"action": "terminate"|"stop"|"hibernate", "time": ...}``) or None."""
        return self._json(ACTION_PATH)

    def rebalance(self) -> Optional[dict]:
        """The rebalance recommendation (``{"noticeTime": ...}``) or None."""
        return self._json(REBALANCE_PATH)
