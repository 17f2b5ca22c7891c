"""S3Store: a run's artifacts under ``s3://bucket/prefix/runs/<run_id>/<name>``.

The S3 twin of ``LocalStore`` (infra/store.py): the agent uploads files as they appear
(``upload_file``, multipart above the transfer threshold), ``runs``/``results`` list and fetch
them, and ``read_from`` reads ``events.jsonl`` from a byte offset with a ranged GET so a live
view can resume where it left off. The client comes from ``infra.aws.Clients`` (one place for
boto3 clients; boto3 itself honours ``AWS_ENDPOINT_URL``). Every failure a user can fix becomes
one ``AWSError`` line naming the bucket.

    S3Store("s3://my-bucket/mnist").put_file("model3-20261122-120000-ab12", "summary.json", Path("summary.json"))
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from core.errors import AWSError, RunError
from infra.aws import Clients, aws_errors, error_code, parse_s3_uri
from infra.store import check_run_id, store_target

# A missing key answers NoSuchKey to GET and a bare 404 to HEAD, when the caller may list the bucket.
# When it may not (s3:ListBucket on that prefix), S3 answers 403 instead, as for a key it may not read:
# then the listing tells the two apart (``S3Store._missing``).
MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
ACCESS_DENIED = {"AccessDenied", "AccessDeniedException", "AllAccessDisabled", "403", "Forbidden"}
# So a browser or `aws s3 cp -` shows text instead of offering a download.
CONTENT_TYPES = {
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".png": "image/png",
    ".log": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
}


def content_type(name: str) -> Optional[str]:
    return CONTENT_TYPES.get(PurePosixPath(name).suffix.lower())


def s3_error(err: ClientError, uri: str, bucket: str) -> Optional[AWSError]:
    """The one-line error for S3 failures with a store-specific fix; None for the generic ones."""
    code = error_code(err)
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    op = getattr(err, "operation_name", None) or "an S3 call"
    if code == "NoSuchBucket":
        return AWSError(f"bucket '{bucket}' does not exist — create it (aws s3 mb s3://{bucket}) or fix --store")
    if code in ACCESS_DENIED or status == 403:
        return AWSError(
            f"access denied to {uri} ({code or status} on {op}) — check that your credentials (or the instance "
            "role's policy) allow s3:ListBucket, s3:GetObject and s3:PutObject on that bucket and prefix"
        )
    return None


class S3Store:
    """``ArtifactStore`` on S3. ``clients`` and ``transfer`` are injectable (tests, tuning)."""

    def __init__(self, uri: str, clients: Optional[Clients] = None, transfer: Optional[TransferConfig] = None) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)  # ConfigError on s3:// or s3:///x
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._clients = clients
        self.transfer = transfer

    @property
    def client(self):  # created on first use: a bad URI fails before any boto3 setup
        if self._clients is None:
            self._clients = Clients.create()
        return self._clients.s3

    # keys

    def _runs_prefix(self) -> str:
        return f"{self.prefix}/runs/" if self.prefix else "runs/"

    def key(self, run_id: str, name: str = "") -> str:
        return f"{self._runs_prefix()}{check_run_id(run_id)}/{Path(name).as_posix() if name else ''}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        with aws_errors():  # credentials, endpoint, region: worded once in infra/aws/errors.py
            try:
                yield
            except S3UploadFailedError as err:
                cause = err.__context__  # boto3 wraps the ClientError of a failed upload
                mapped = s3_error(cause, self.uri, self.bucket) if isinstance(cause, ClientError) else None
                if mapped is not None:
                    raise mapped from None
                if isinstance(cause, ClientError):
                    raise cause from None
                raise AWSError(f"upload to {self.uri} failed: {' '.join(str(err).split())} — run again") from None
            except ClientError as err:
                mapped = s3_error(err, self.uri, self.bucket)
                if mapped is not None:
                    raise mapped from None
                raise

    # the ArtifactStore protocol

    def list_runs(self) -> list[str]:
        """Runs that have a config.yaml (like LocalStore): half-created runs are left out."""
        base = self._runs_prefix()
        candidates: list[str] = []
        with self._errors():
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/")
            for page in pages:
                for p in page.get("CommonPrefixes", []):
                    candidates.append(p["Prefix"][len(base):].rstrip("/"))
            return sorted(r for r in candidates if r and self._exists(self.key(r, "config.yaml")))

    def _missing(self, err: ClientError, key: str) -> bool:
        """Whether ``err`` (from a GET or HEAD of ``key``) means the key does not exist. A 403 is asked of
        the listing: a key not listed is missing; a listed one, or a listing refused too, is a real denial
        (raised by the caller as one line), never taken for "not there"."""
        code = error_code(err)
        if code in MISSING_KEY:
            return True
        if code not in ACCESS_DENIED and err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 403:
            return False
        try:
            listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1).get("Contents", [])
        except ClientError as list_err:
            if error_code(list_err) in ACCESS_DENIED:
                return False  # cannot tell: the caller's 403 stands
            raise
        return not any(o["Key"] == key for o in listed)

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as err:
            if self._missing(err, key):
                return False
            raise

    def read_text(self, run_id: str, name: str) -> Optional[str]:
        with self._errors():
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self.key(run_id, name))["Body"]
            except ClientError as err:
                if self._missing(err, self.key(run_id, name)):
                    return None
                raise
            return body.read().decode("utf-8", errors="replace")

    def read_from(self, run_id: str, name: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Bytes of ``name`` from ``offset`` (at most ``limit``); b'' if missing or nothing new."""
        with self._errors():
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=self.key(run_id, name),
                                              Range=f"bytes={offset}-{offset + limit - 1}")
            except ClientError as err:
                # InvalidRange (416): offset at or past the end, or an empty object
                if error_code(err) in ("InvalidRange", "416") or self._missing(err, self.key(run_id, name)):
                    return b""
                raise
            return resp["Body"].read()

    def put_file(self, run_id: str, name: str, local_path: Path) -> None:
        ctype = content_type(name)
        with self._errors():
            self.client.upload_file(str(local_path), self.bucket, self.key(run_id, name),
                                    ExtraArgs={"ContentType": ctype} if ctype else None, Config=self.transfer)

    def put_verified(self, run_id: str, name: str, local_path: Path, sha256_hex: str) -> None:
        """Upload with S3 checking a SHA-256 of the bytes on arrival, then read it back and compare."""
        import base64

        ctype = content_type(name)
        digest = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
        key = self.key(run_id, name)
        with self._errors():
            with open(local_path, "rb") as f:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=f, ChecksumSHA256=digest,
                                       **({"ContentType": ctype} if ctype else {}))
            # and read back: checkpoints of these models are kilobytes, a second look costs nothing
            h = hashlib.sha256()
            for chunk in self.client.get_object(Bucket=self.bucket, Key=key)["Body"].iter_chunks(1 << 20):
                h.update(chunk)
        if h.hexdigest() != sha256_hex:
            raise RunError(f"{self.uri}: {name} does not read back as uploaded (sha256 differs)"
                           " — uploaded again next pass")

    def size_of(self, run_id: str, name: str) -> Optional[int]:
        with self._errors():
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self.key(run_id, name))["ContentLength"]
            except ClientError as err:
                if self._missing(err, self.key(run_id, name)):
                    return None
                raise

    def list_names(self, run_id: str, prefix: str = "") -> list[str]:
        """Names (relative to the run) of the run's objects under ``prefix``."""
        base = self.key(run_id)
        out: list[str] = []
        with self._errors():
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix):
                out += [o["Key"][len(base):] for o in page.get("Contents", [])]
        return sorted(out)

    def delete_names(self, run_id: str, names: list[str]) -> None:
        # one DeleteObject per key, not DeleteObjects: S3 authorizes both per key, but moto (the tests' S3 with
        # IAM enforced) authorizes a DeleteObjects against the bucket, refusing a role scoped to runs/; a
        # checkpoint is a handful of files
        with self._errors():
            for n in names:
                self.client.delete_object(Bucket=self.bucket, Key=self.key(run_id, n))

    def download(self, run_id: str, dest: Path) -> Path:
        """Every object of the run into ``dest/run_id``, keeping relative paths. Every key is checked
        before the first byte is written: a crafted one (absolute, "..", control characters, or
        through a symlink in ``dest`` leading outside) refuses the whole download in one line."""
        base = self.key(run_id)
        out = Path(dest) / run_id
        with self._errors():
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
            keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        keys = [k for k in keys if k[len(base):] and not k.endswith("/")]  # folder markers carry nothing
        if not keys:
            raise RunError(f"run '{run_id}' not found in {self.uri}"
                           f" — `mnist-launch runs --store {self.uri}` lists the runs there")
        for key in keys:
            store_target(out, key[len(base):], self.uri)
        with self._errors():
            for key in keys:
                rel = key[len(base):]
                target = store_target(out, rel, self.uri)  # again: a symlink made meanwhile counts
                target.parent.mkdir(parents=True, exist_ok=True)
                part = store_target(out, rel + ".part", self.uri)  # no half-written files on failure
                self.client.download_file(self.bucket, key, str(part), Config=self.transfer)
                part.replace(target)
        return out
