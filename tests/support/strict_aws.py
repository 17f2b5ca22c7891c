"""AWS as strict as the real one, in front of moto: a small HTTP proxy on 127.0.0.1 that injects faults.

moto answers at once and consistently, never throttles, and answers 404 for a missing S3 key where
real S3 answers 403 to a caller that may not list it. Real AWS does all of that, so this proxy does
too. It sits in front of moto's ThreadedMotoServer and every process reaches it through
``AWS_ENDPOINT_URL`` (the CLI subprocesses, the agent behind sshd), so each sees the same world.

    proxy = StrictAWS(moto_url)                                  # http://127.0.0.1:PORT
    proxy.fail("DescribeInstances", "InvalidInstanceID.NotFound", times=2, after="RunInstances",
               when=by_id("InstanceId"))                         # eventual consistency
    proxy.fail("RunInstances", "RequestLimitExceeded", times=1)  # throttling
    proxy.fail("AuthorizeSecurityGroupIngress", "InvalidGroup.NotFound", seconds=2, after="CreateSecurityGroup")
    proxy.missing_keys_403 = True                                # S3 without s3:ListBucket on the key
    proxy.injected[("RunInstances", "RequestLimitExceeded")]     # how many it answered

Operations are named as AWS names them: the form field ``Action`` (EC2, IAM, STS), the last part of
``X-Amz-Target`` (SSM and other JSON APIs), or, for S3, from the method and path (``GetObject``,
``HeadObject``, ``PutObject``, ``ListObjectsV2``, ...). Signatures stay valid: requests are relayed
byte for byte with their own Host header, so moto's access control (when on) checks them as signed.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional
from urllib.parse import parse_qs, urlsplit

Params = dict[str, str]

# the HTTP status AWS gives each error (400 unless listed)
STATUS = {"RequestLimitExceeded": 503, "SlowDown": 503, "ServiceUnavailable": 503, "AccessDenied": 403,
          "InternalError": 500}
MESSAGES = {
    "RequestLimitExceeded": "Request limit exceeded.",
    "Throttling": "Rate exceeded",
    "ThrottlingException": "Rate exceeded",
    "InvalidInstanceID.NotFound": "The instance ID does not exist",
    "InvalidGroup.NotFound": "The security group does not exist",
    "InvalidKeyPair.NotFound": "The key pair does not exist",
    "AccessDenied": "Access Denied",
}
# RunInstances refusing an instance profile IAM made a moment ago, in AWS's own words
PROFILE_REFUSAL = ("InvalidParameterValue",
                   "Value (mnist-launch) for parameter iamInstanceProfile.name is invalid. "
                   "Invalid IAM Instance Profile name")


def by_id(param: str) -> Callable[[Params], bool]:
    """Only requests naming a resource by id (``InstanceId.1=...``, ``GroupId=...``): a filtered
    Describe* never answers NotFound on AWS, it leaves the unseen resource out."""
    return lambda p: any(k == param or k.startswith(param + ".") for k in p)


@dataclass
class Fault:
    op: str
    code: str
    message: str
    times: Optional[int]  # answer the first N matching calls (None: any number within ``seconds``)
    seconds: Optional[float]  # answer for this long after the window opened
    after: Optional[str]  # the window opens at the first answered call of this operation (None: at once)
    when: Callable[[Params], bool]
    status: int
    opened_at: Optional[float] = None
    used: int = 0

    def hits(self, op: str, params: Params, now: float) -> bool:
        if op != self.op or self.opened_at is None or not self.when(params):
            return False
        if self.times is not None and self.used >= self.times:
            return False
        if self.seconds is not None and now - self.opened_at > self.seconds:
            return False
        return True


@dataclass
class Request:
    method: str
    path: str
    query: Params
    headers: dict
    body: bytes
    service: str
    op: str
    params: Params = field(default_factory=dict)


class StrictAWS:
    """The proxy. ``url`` is what AWS_ENDPOINT_URL points at; ``stop()`` ends it."""

    def __init__(self, upstream: str) -> None:
        up = urlsplit(upstream)
        self.upstream = (up.hostname or "127.0.0.1", up.port or 80)
        self.faults: list[Fault] = []
        self.missing_keys_403 = False  # S3: a missing key answers 403 AccessDenied, as without s3:ListBucket
        self.denied_buckets: set[str] = set()  # S3: every request on these answers 403 (no access at all)
        self.calls: Counter = Counter()  # op -> requests seen
        self.injected: Counter = Counter()  # (op, code) -> answered by the proxy instead of moto
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a) -> None:  # quiet
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the schedule ----------------------------------------------------------------------------

    def fail(self, op: str, code: str, *, times: Optional[int] = None, seconds: Optional[float] = None,
             after: Optional[str] = None, when: Optional[Callable[[Params], bool]] = None,
             message: Optional[str] = None, status: Optional[int] = None) -> Fault:
        """Answer ``code`` to ``op``: for its first ``times`` calls, or for ``seconds`` — counted from the
        first call of ``after`` (a create whose result is not yet seen), else from now."""
        if times is None and seconds is None:
            raise ValueError("fail(): give times=N or seconds=S")
        f = Fault(op, code, message or MESSAGES.get(code, code), times, seconds, after, when or (lambda _p: True),
                  status or STATUS.get(code, 400), None if after else time.monotonic())
        with self._lock:
            self.faults.append(f)
        return f

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.calls.clear()
            self.injected.clear()
        self.missing_keys_403 = False
        self.denied_buckets.clear()

    # -- the proxy ---------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        req = self._read(h)
        now = time.monotonic()
        with self._lock:
            self.calls[req.op] += 1
            fault = next((f for f in self.faults if f.hits(req.op, req.params, now)), None)
            if fault is not None:
                fault.used += 1
                self.injected[(req.op, fault.code)] += 1
        if fault is not None:
            return self._answer_error(h, req, fault.code, fault.message, fault.status)
        if req.service == "s3" and self._bucket(req) in self.denied_buckets:
            with self._lock:
                self.injected[(req.op, "AccessDenied")] += 1
            return self._answer_error(h, req, "AccessDenied", MESSAGES["AccessDenied"], 403)
        status, reason, headers, body = self._forward(req)
        if (self.missing_keys_403 and req.service == "s3" and status == 404
                and req.op in ("GetObject", "HeadObject") and (req.method == "HEAD" or b"NoSuchKey" in body)):
            with self._lock:
                self.injected[(req.op, "AccessDenied")] += 1
            return self._answer_error(h, req, "AccessDenied", MESSAGES["AccessDenied"], 403)
        with self._lock:  # the window of a fault "after" this op opens once AWS has answered it
            for f in self.faults:
                if f.after == req.op and f.opened_at is None and status < 300:
                    f.opened_at = time.monotonic()
        self._send(h, status, reason, headers, body, req.method == "HEAD")

    def _read(self, h: BaseHTTPRequestHandler) -> Request:
        headers = {k: v for k, v in h.headers.items()}
        lower = {k.lower(): v for k, v in headers.items()}
        if lower.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body += h.rfile.read(size)
                h.rfile.readline()
        else:
            body = h.rfile.read(int(lower.get("content-length") or 0))
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        auth = lower.get("authorization", "")
        service = ""
        if "Credential=" in auth:  # Credential=AKID/DATE/REGION/SERVICE/aws4_request
            scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
            service = scope[3] if len(scope) > 3 else ""
        params: Params = dict(query)
        ctype = lower.get("content-type", "")
        if "x-www-form-urlencoded" in ctype:
            form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            params.update({k: v[0] for k, v in form.items()})
        if "x-amz-target" in lower:
            op = lower["x-amz-target"].rsplit(".", 1)[-1]
            try:
                params.update({k: str(v) for k, v in json.loads(body or b"{}").items()})
            except (ValueError, AttributeError):
                pass
        elif "Action" in params:
            op = params["Action"]
        else:
            service = service or "s3"
            op = _s3_op(h.command, parts.path, query)
        return Request(h.command, h.path, query, headers, body, service, op, params)

    @staticmethod
    def _bucket(req: Request) -> str:
        return urlsplit(req.path).path.lstrip("/").split("/", 1)[0]

    def _forward(self, req: Request) -> tuple[int, str, list, bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            headers = {k: v for k, v in req.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            headers["Content-Length"] = str(len(req.body))
            conn.request(req.method, req.path, body=req.body if req.body or req.method in ("PUT", "POST") else None,
                         headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, resp.reason, resp.getheaders(), body
        finally:
            conn.close()

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, reason: str, headers: list, body: bytes, head: bool) -> None:
        h.send_response(status, reason)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                h.send_header(k, v)
        # a HEAD answer keeps the object's length; any other carries exactly its body
        length = next((v for k, v in headers if k.lower() == "content-length"), None) if head else None
        h.send_header("Content-Length", length if length is not None else str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _answer_error(self, h: BaseHTTPRequestHandler, req: Request, code: str, message: str, status: int) -> None:
        rid = uuid.uuid4().hex
        if "x-amz-target" in {k.lower() for k in req.headers}:  # JSON protocols (SSM, ...)
            body = json.dumps({"__type": code, "message": message}).encode()
            headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", code),
                       ("x-amzn-RequestId", rid)]
        elif req.service == "ec2":
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
                    f"<Message>{_xml(message)}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>").encode()
            headers = [("Content-Type", "text/xml;charset=UTF-8")]
        elif req.service == "s3":
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{_xml(message)}'
                    f"</Message><RequestId>{rid}</RequestId></Error>").encode()
            headers = [("Content-Type", "application/xml"), ("x-amz-request-id", rid)]
        else:  # IAM, STS and the other query protocols
            body = (f'<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{_xml(message)}</Message>'
                    f"</Error><RequestId>{rid}</RequestId></ErrorResponse>").encode()
            headers = [("Content-Type", "text/xml")]
        reason = {400: "Bad Request", 403: "Forbidden", 500: "Internal Server Error", 503: "Service Unavailable"}
        self._send(h, status, reason.get(status, "Error"), headers, body, req.method == "HEAD")


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _s3_op(method: str, path: str, query: Params) -> str:
    key = path.lstrip("/").partition("/")[2]
    if not key:
        if method == "GET":
            return ("ListObjectsV2" if query.get("list-type") == "2"
                    else "ListObjects" if path.strip("/") else "ListBuckets")
        return {"PUT": "CreateBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket",
                "POST": "DeleteObjects" if "delete" in query else "PostBucket"}.get(method, method)
    if method == "PUT":
        return "UploadPart" if "partNumber" in query else "PutObject"
    if method == "POST":
        return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    return {"GET": "GetObject", "HEAD": "HeadObject"}.get(method, method)


# the light schedule every remote e2e session can run under: one throttle and one NotFound of each kind
def light_schedule(proxy: StrictAWS) -> None:
    proxy.fail("RunInstances", "RequestLimitExceeded", times=1)
    proxy.fail("DescribeInstances", "InvalidInstanceID.NotFound", times=1, after="RunInstances",
               when=by_id("InstanceId"))
    proxy.fail("AuthorizeSecurityGroupIngress", "InvalidGroup.NotFound", times=1, after="CreateSecurityGroup")
    proxy.fail("RunInstances", PROFILE_REFUSAL[0], message=PROFILE_REFUSAL[1], times=1,
               after="AddRoleToInstanceProfile")


def every_fault(proxy: StrictAWS) -> None:
    """What a first `up` on a real account may meet, all at once."""
    proxy.fail("AuthorizeSecurityGroupIngress", "InvalidGroup.NotFound", times=2, after="CreateSecurityGroup")
    proxy.fail("PutRolePolicy", "NoSuchEntity", times=1, after="CreateRole")
    proxy.fail("RunInstances", "InvalidGroup.NotFound", times=1, after="CreateSecurityGroup")
    proxy.fail("RunInstances", PROFILE_REFUSAL[0], message=PROFILE_REFUSAL[1], times=2,
               after="AddRoleToInstanceProfile")
    proxy.fail("DescribeInstances", "InvalidInstanceID.NotFound", times=2, after="RunInstances",
               when=by_id("InstanceId"))
    proxy.fail("DescribeInstanceStatus", "InvalidInstanceID.NotFound", times=1, after="RunInstances")
    proxy.fail("DescribeVpcs", "RequestLimitExceeded", times=1)
    proxy.fail("CreateSecurityGroup", "RequestLimitExceeded", times=1)
    proxy.fail("CreateRole", "Throttling", times=1)
    proxy.fail("GetParameter", "ThrottlingException", times=1)
