"""Ship the MNIST IDX files to a Host once: compared by sha256, sent only when missing or changed.

The host keeps one data folder per project (``<remote_dir>/data/mnist``) holding exactly the four
IDX files under their canonical names, so every later run finds them there and sends nothing.
What arrives is hashed again on the host before a run may use it; anything else in that folder
(a stale uncompressed copy that the loader would pick first, a partial file) is removed.

    report = ship_mnist(host, Path("../shared/data/mnist"), "~/mnist-launch/data/mnist"); print(report.summary())
"""

from __future__ import annotations

import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from core.errors import SyncError
from infra import manifest as tree
from infra.host import Host
from infra.sync import _delete_remote, _human, _manifest_tool
from trainer.data import FILES, check_file, locate


@dataclass
class DataReport:
    files_sent: int
    bytes_sent: int
    files_total: int
    seconds: float
    source: str = ""  # s3://... when the host fetched the files itself

    def summary(self) -> str:
        if self.source:  # fetched by the host itself
            if not self.files_sent:
                return (f"data: {self.files_total} MNIST files already on the host (unchanged in {self.source})"
                        f" in {self.seconds:.2f}s")
            return (f"data: the host fetched {self.files_sent} of {self.files_total} MNIST files"
                    f" ({_human(self.bytes_sent)}) from {self.source} in {self.seconds:.2f}s")
        if not self.files_sent:
            return f"data: {self.files_total} MNIST files already on the host (sha256 verified) in {self.seconds:.2f}s"
        return (f"data: sent {self.files_sent} of {self.files_total} MNIST files ({_human(self.bytes_sent)}), "
                f"verified by sha256 in {self.seconds:.2f}s")


def local_data(data_dir: Path) -> dict[str, Path]:
    """Canonical name (``train-images-idx3-ubyte[.gz]``) -> local file, each header-checked first,
    so a truncated file fails here with its name rather than on the instance."""
    found = locate(data_dir)
    out: dict[str, Path] = {}
    for key, path in found.items():
        check_file(path, FILES[key][1])
        out[path.name] = path
    return out


def _tar_files(files: dict[str, Path]) -> tuple[BinaryIO, int]:
    buf = tempfile.SpooledTemporaryFile(max_size=64 << 20)
    content = 0
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, path in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, int(path.stat().st_mtime)
            with open(path, "rb") as f:
                info.size = path.stat().st_size
                tar.addfile(info, f)
            content += info.size
    buf.seek(0)
    # A SpooledTemporaryFile is an IO[bytes], not typing's BinaryIO class, which Host.put_tar names.
    # TODO(merge): Host.put_tar taking IO[bytes] (infra/host.py) would make this cast unnecessary.
    return cast(BinaryIO, buf), content


def ship_mnist(host: Host, data_dir: Path, remote_dir: str, python: str = "python3") -> DataReport:
    """Make ``remote_dir`` on ``host`` hold exactly the IDX files of ``data_dir``; see the module doc."""
    start = time.monotonic()
    files = local_data(Path(data_dir))
    wanted = {name: tree.file_sha256(str(path)) for name, path in files.items()}
    remote = _manifest_tool(host, python, "scan", remote_dir, [])
    # anything but the four regular files goes first: a symlink under one of their names would have the
    # unpack write through it to wherever it points
    stale = [rel for rel in remote if rel not in wanted or remote[rel].get("type") != "file"]
    if stale:
        _delete_remote(host, python, remote_dir, stale)
    send = {name: files[name] for name, sha in wanted.items() if remote.get(name, {}).get("sha256") != sha}
    bytes_sent = 0
    if send:
        stream, bytes_sent = _tar_files(send)
        with stream:
            host.put_tar(stream, remote_dir)
        # what landed is what a run will read: hash it there before trusting it
        landed = _manifest_tool(host, python, "scan", remote_dir, [])
        bad = sorted(n for n in send if landed.get(n, {}).get("sha256") != wanted[n])
        if bad:
            raise SyncError(f"{host.name}: {', '.join(bad)} arrived corrupted in {remote_dir} — "
                            "check the instance's disk space, then run again (only those files are re-sent)")
    return DataReport(files_sent=len(send), bytes_sent=bytes_sent, files_total=len(files),
                      seconds=time.monotonic() - start)


# Runs on the host with its own role (never our credentials): the four files from s3://bucket/prefix
# into the data folder, each fetched only when its ETag differs from the one recorded last time.
_FETCH = r"""
import json, os, sys
uri, dest, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:
    print("boto3 is not installed for " + sys.executable); sys.exit(3)
bucket, _, prefix = uri[len("s3://"):].partition("/")
prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
os.makedirs(dest, exist_ok=True)
stamp_path = os.path.join(dest, ".s3-etags.json")
try:
    stamps = json.load(open(stamp_path))
except (OSError, ValueError):
    stamps = {}
s3 = boto3.client("s3")
sent = size = 0
try:
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            found[o["Key"].rsplit("/", 1)[-1]] = o
    for base in names:
        obj = found.get(base + ".gz") or found.get(base)
        if obj is None:
            print("no " + base + "[.gz] under " + uri); sys.exit(4)
        name = obj["Key"].rsplit("/", 1)[-1]  # one of the two canonical names looked up above, never another
        target = os.path.join(dest, name)
        for mine in (target, target + ".part"):  # a symlink here would be written through: ours to replace
            if os.path.islink(mine):
                os.remove(mine)
        for other in (base, base + ".gz"):  # a copy under the other name would shadow this one
            if other != name and os.path.exists(os.path.join(dest, other)):
                os.remove(os.path.join(dest, other))
        if stamps.get(name) == obj["ETag"] and os.path.isfile(target) and os.path.getsize(target) == obj["Size"]:
            continue
        s3.download_file(bucket, obj["Key"], target + ".part")
        os.replace(target + ".part", target)
        stamps[name] = obj["ETag"]
        sent += 1
        size += obj["Size"]
except (BotoCoreError, ClientError) as err:
    print(str(err).splitlines()[0][:300]); sys.exit(5)
if os.path.islink(stamp_path):
    os.remove(stamp_path)
json.dump(stamps, open(stamp_path, "w"))
print(json.dumps({"sent": sent, "bytes": size, "total": len(names)}))
"""


def fetch_mnist(host: Host, uri: str, remote_dir: str, python: str = "python3") -> DataReport:
    """The instance fetches the MNIST files from ``uri`` (s3://bucket/prefix) itself, with its own role;
    the launcher's credentials never travel. Files whose ETag is unchanged are not fetched again."""
    import json

    start = time.monotonic()
    names = [FILES[k][0] for k in ("train_images", "train_labels", "test_images", "test_labels")]
    res = host.run([python, "-c", _FETCH, uri, remote_dir, json.dumps(names)], timeout=1800)
    if res.returncode != 0:
        why = (res.stdout.strip() or res.stderr.strip() or "no message").splitlines()[-1][:300]
        raise SyncError(f"{host.name}: fetching MNIST from {uri} failed ({why}) — put the four IDX files under that "
                        "prefix, inside the store `up --store` gave the instance access to")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return DataReport(files_sent=out["sent"], bytes_sent=out["bytes"], files_total=out["total"],
                      seconds=time.monotonic() - start, source=uri)


__all__ = ["DataReport", "fetch_mnist", "local_data", "ship_mnist"]
