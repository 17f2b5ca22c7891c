"""Workdir sync: mirror the project directory to a folder on a Host, sending only what changed.

A content manifest (path -> sha256, size, executable bit; symlink targets; directories) is built
here and, by the same code (infra/manifest.py sent as ``python3 -c``), on the host from the files
that are really there. Changed and new entries travel as one tar stream over one channel; entries
deleted here are deleted there. Root ``.gitignore`` and ``.mnist-launch-ignore`` apply to both
sides, so ignored remote content (runs/, outputs, caches) is never hashed nor deleted.

    report = sync_workdir(host, Path("."), "~/work"); print(report.summary())
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Optional, cast

from core.errors import LaunchError, SyncError
from infra import manifest as tree
from infra.host import Host

Manifest = dict[str, dict[str, Any]]

# one argv string may not exceed 128 KiB on Linux (MAX_ARG_STRLEN): deletions go in batches below it
_MAX_ARG_BYTES = 100_000


@dataclass
class SyncReport:
    files_sent: int  # files and symlinks sent (directories not counted)
    bytes_sent: int  # content bytes of the files sent (tar headers not counted)
    files_deleted: int  # files and symlinks removed on the host
    files_total: int  # files and symlinks in the local tree after ignores
    seconds: float
    left_out: list[str] = field(default_factory=list)  # likely secrets held back (SECRET_PATTERNS), sorted

    def summary(self) -> str:
        unchanged = self.files_total - self.files_sent
        line = (f"sync: {self.files_sent} files sent ({_human(self.bytes_sent)}), {self.files_deleted} deleted, "
                f"{unchanged} unchanged in {self.seconds:.2f}s")
        if self.left_out:
            more = len(self.left_out) - 8
            shown = ", ".join(self.left_out[:8]) + (f" and {more} more" if more > 0 else "")
            line += (f"\nsync: left out {len(self.left_out)} likely secret{'s' if len(self.left_out) > 1 else ''} "
                     f"({shown}) — to send one, add a '!NAME' line to .mnist-launch-ignore")
        return line


@dataclass
class SyncPlan:
    send: list[str] = field(default_factory=list)  # parents before children
    delete: list[str] = field(default_factory=list)  # removed before the tar lands


def _human(n: float) -> str:
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["type"] != b["type"]:
        return False
    if a["type"] == "file":
        return (a["sha256"], a["size"], a["exec"]) == (b["sha256"], b["size"], b["exec"])
    if a["type"] == "link":
        return a["target"] == b["target"]
    return True


def plan_sync(local: Manifest, remote: Manifest) -> SyncPlan:
    """What to send and what to delete so that the host's tree equals ``local``."""
    plan = SyncPlan()
    for rel in sorted(local):
        mine, theirs = local[rel], remote.get(rel)
        if theirs is not None and _same(mine, theirs):
            continue
        # a path that changes kind (file <-> dir <-> link), or a link that changes target, is removed
        # first: tar would otherwise write through an old symlink or fail on an old directory
        if theirs is not None and (theirs["type"] != mine["type"] or mine["type"] == "link"):
            plan.delete.append(rel)
        if mine["type"] != "dir" or theirs is None or theirs["type"] != "dir":
            plan.send.append(rel)
    plan.delete += [rel for rel in remote if rel not in local]
    return plan


def check_plan(plan: SyncPlan, remote: Manifest) -> None:
    """Verify before anything is written: no path sent lies below something on the host that is not a
    directory and is not deleted first (a symlink there would have the unpack write through it)."""
    deleted = set(plan.delete)
    for rel in plan.send:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            up = "/".join(parts[:i])
            if up in remote and remote[up]["type"] != "dir" and up not in deleted:
                raise SyncError(f"refusing to sync {rel}: on the host {up} is a {remote[up]['type']}, not a folder — "
                                "remove it there, then run again")


def local_manifest(root: Path, left_out: Optional[list[str]] = None) -> Manifest:
    """The local tree after ignores; ``left_out`` (if given) receives the likely secrets held back."""
    unless = tree.compile_rules(tree.read_rule_lines(str(root), secrets=False)) if left_out is not None else None
    return tree.scan(str(root), tree.compile_rules(tree.read_rule_lines(str(root))), left_out=left_out, unless=unless)


def left_out_of_sync(root: Path, rel: str) -> bool:
    """Whether ``sync_workdir`` leaves the file ``rel`` (relative to ``root``) behind: it, or a folder above it, is
    ignored (.gitignore, .mnist-launch-ignore, the secret patterns), as ``local_manifest`` decides."""
    rules = tree.compile_rules(tree.read_rule_lines(str(root)))
    parts = rel.split("/")
    return any(tree.is_ignored(rules, "/".join(parts[:i]), is_dir=i < len(parts)) for i in range(1, len(parts) + 1))


def _manifest_tool(host: Host, python: str, op: str, remote_root: str, arg: Any) -> Any:
    """Run infra/manifest.py on the host and parse its JSON answer; failures become SyncError."""
    source = Path(tree.__file__).read_text()
    argv = [python, "-c", source, op, remote_root, json.dumps(arg)]
    what = "listing" if op == "scan" else "deleting in"
    try:
        res = host.run(argv, timeout=600)
    except FileNotFoundError:  # LocalHost: no such executable
        res = None
    if res is None or res.returncode == 127:  # the shell's "command not found"
        raise SyncError(f"{python} not found on {host.name}"
                        " — install Python 3 there; the sync runs it to compare files")
    if res.returncode != 0:
        detail = (res.stderr.strip().splitlines() or ["no message"])[-1][:200]
        raise SyncError(f"{host.name}: {what} {remote_root} failed ({detail}) — "
                        "make it a directory the login user can write to, or pick another destination")
    try:
        return json.loads(res.stdout)
    except json.JSONDecodeError:
        raise SyncError(f"{host.name}: {what} {remote_root} printed no manifest ({res.stdout[:80]!r}) — "
                        f"check that `{python}` is Python 3.7 or newer") from None


def _batches(paths: list[str]) -> list[list[str]]:
    batches: list[list[str]] = [[]]
    size = 0
    for rel in paths:
        cost = len(json.dumps(rel).encode()) + 2
        if batches[-1] and size + cost > _MAX_ARG_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(rel)
        size += cost
    return [b for b in batches if b]


def _delete_remote(host: Host, python: str, remote_root: str, paths: list[str]) -> None:
    # deepest first across batches too, so a directory is emptied before it is removed
    ordered = sorted(paths, key=lambda p: (-p.count("/"), p))
    for batch in _batches(ordered):
        _manifest_tool(host, python, "delete", remote_root, batch)


def _tar_of(root: Path, paths: list[str]) -> tuple[BinaryIO, int]:
    """One tar stream with ``paths`` (symlinks as symlinks) and the content bytes in it."""
    buf = tempfile.SpooledTemporaryFile(max_size=64 << 20)
    content = 0
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for rel in paths:
            full = root / rel
            st = full.lstat()
            info = tarfile.TarInfo(rel)
            # ownership is the receiver's business (tar runs with --no-same-owner there)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = st.st_mode & 0o777
            info.mtime = int(st.st_mtime)
            if full.is_symlink():
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(full)
                tar.addfile(info)
            elif full.is_dir():
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                with open(full, "rb") as f:
                    info.size = os.fstat(f.fileno()).st_size
                    tar.addfile(info, f)
                content += info.size
    buf.seek(0)
    # A SpooledTemporaryFile is an IO[bytes], not typing's BinaryIO class, which Host.put_tar names.
    # TODO(merge): Host.put_tar taking IO[bytes] (infra/host.py) would make this cast unnecessary.
    return cast(BinaryIO, buf), content


def sync_workdir(host: Host, local_root: Path, remote_root: str, python: str = "python3") -> SyncReport:
    """Make ``remote_root`` on ``host`` mirror ``local_root`` (minus ignored paths); see the module doc."""
    start = time.monotonic()
    local_root = Path(local_root)
    if not local_root.is_dir():
        raise SyncError(f"{local_root} is not a directory — run from the project folder or pass its path")
    left_out: list[str] = []
    try:
        local = local_manifest(local_root, left_out)
    except OSError as err:
        raise SyncError(f"reading {err.filename or local_root} failed ({err.strerror or err}) — "
                        "fix its permissions or add it to .mnist-launch-ignore") from None
    remote = _manifest_tool(host, python, "scan", remote_root, tree.read_rule_lines(str(local_root)))
    plan = plan_sync(local, remote)
    check_plan(plan, remote)
    if plan.delete:
        _delete_remote(host, python, remote_root, plan.delete)
    bytes_sent = 0
    if plan.send:
        stream, bytes_sent = _tar_of(local_root, plan.send)
        with stream:
            try:
                host.put_tar(stream, remote_root)
            except LaunchError:
                raise
            except (OSError, tarfile.TarError, ValueError) as err:  # ValueError: infra/safepath.py refused a name
                raise SyncError(f"{host.name}: unpacking into {remote_root} failed ({err}) — "
                                "check disk space and permissions there") from None
    files = [rel for rel, e in local.items() if e["type"] != "dir"]
    return SyncReport(
        files_sent=sum(1 for rel in plan.send if local[rel]["type"] != "dir"),
        bytes_sent=bytes_sent,
        files_deleted=sum(1 for rel in plan.delete if rel not in local and remote[rel]["type"] != "dir"),
        files_total=len(files),
        seconds=time.monotonic() - start,
        left_out=sorted(left_out),
    )


__all__ = ["SyncPlan", "SyncReport", "left_out_of_sync", "local_manifest", "plan_sync", "sync_workdir"]
