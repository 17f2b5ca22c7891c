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
from typing import BinaryIO

from infra import manifest as tree
from infra.host import Host
from infra.sync import _delete_remote, _human, _manifest_tool
from launcher.errors import SyncError
from trainer.data import FILES, check_file, locate


@dataclass
class DataReport:
    files_sent: int
    bytes_sent: int
    files_total: int
    seconds: float

    def summary(self) -> str:
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
    return buf, content


def ship_mnist(host: Host, data_dir: Path, remote_dir: str, python: str = "python3") -> DataReport:
    """Make ``remote_dir`` on ``host`` hold exactly the IDX files of ``data_dir``; see the module doc."""
    start = time.monotonic()
    files = local_data(Path(data_dir))
    wanted = {name: tree.file_sha256(str(path)) for name, path in files.items()}
    remote = _manifest_tool(host, python, "scan", remote_dir, [])
    stale = [rel for rel in remote if rel not in wanted]
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


__all__ = ["DataReport", "local_data", "ship_mnist"]
