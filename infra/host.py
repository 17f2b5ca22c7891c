"""Host: where a job runs. The orchestrator only sees this interface.

``LocalHost`` runs on this machine (subprocess + filesystem). ``SSHHost`` (infra/ssh.py) does
the same over paramiko. Paths are strings in the host's own filesystem.

    host = LocalHost(); pid = host.spawn(["python", "-m", "infra.agent", ...], cwd=".", log="agent.log")
"""

from __future__ import annotations

import os
import signal
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Protocol

from infra.safepath import safe_members


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


class Host(Protocol):
    name: str

    def run(self, argv: list[str], cwd: Optional[str] = None, timeout: Optional[float] = None) -> Completed: ...

    def exec(self, command: str, timeout: Optional[float] = None, stdin: Optional[BinaryIO] = None) -> Completed:
        """Run a shell command line on the host (every value in it already quoted by the caller)."""
        ...

    def spawn(self, argv: list[str], cwd: str, log: str, env: Optional[dict[str, str]] = None) -> int:
        """Start ``argv`` detached (own session, survives the launcher); returns its pid."""
        ...

    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Bytes of ``path`` from ``offset`` (at most ``limit``); b'' if it does not exist yet."""
        ...

    def read_text(self, path: str) -> Optional[str]: ...

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None: ...

    def put_tar(self, stream: BinaryIO, dest: str) -> None:
        """Unpack a tar stream into ``dest`` (created if missing)."""
        ...

    def is_alive(self, pid: int) -> bool: ...

    def kill(self, pid: int, sig: int = signal.SIGTERM) -> None: ...

    def close(self) -> None:
        """Let go of the connection (the next call opens a new one); nothing for this machine."""
        ...


class LocalHost:
    """This machine. Detached children get their own session (setsid), like on an instance."""

    name = "local"

    def run(self, argv: list[str], cwd: Optional[str] = None, timeout: Optional[float] = None) -> Completed:
        p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        return Completed(p.returncode, p.stdout, p.stderr)

    def exec(self, command: str, timeout: Optional[float] = None, stdin: Optional[BinaryIO] = None) -> Completed:
        p = subprocess.run(["sh", "-c", command], input=stdin.read() if stdin is not None else None,
                           capture_output=True, timeout=timeout)
        return Completed(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))

    def close(self) -> None:
        pass

    def spawn(self, argv: list[str], cwd: str, log: str, env: Optional[dict[str, str]] = None) -> int:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out, open(os.devnull, "rb") as devnull:
            proc = subprocess.Popen(
                argv, cwd=cwd, stdin=devnull, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )
        return proc.pid

    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""

    def read_text(self, path: str) -> Optional[str]:
        try:
            return Path(path).read_text()
        except FileNotFoundError:
            return None

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, p)

    def put_tar(self, stream: BinaryIO, dest: str) -> None:
        root = Path(dest).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            # each member is checked before it is written (infra/safepath.py: no absolute names, no
            # "..", nothing through a symlink to outside dest); symlink members keep their targets as
            # they are (a workdir may link to a dataset elsewhere). The "tar" filter, where Python has
            # it, checks the same again.
            members = safe_members(tar, root)
            if hasattr(tarfile, "tar_filter"):
                tar.extractall(root, members=members, filter="tar")
            else:  # Python < 3.11.4
                tar.extractall(root, members=members)

    def is_alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # a zombie child of ours (we spawned it and never waited) is dead for our purposes
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ", 1)[1][0] != "Z"
        except (FileNotFoundError, IndexError):
            return True

    def kill(self, pid: int, sig: int = signal.SIGTERM) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
