"""A real OpenSSH sshd on 127.0.0.1 for tests: generated host key, one authorized client key.

Runs as the current user (root in CI: PermitRootLogin, StrictModes no, UsePAM no), in the
foreground (-D -e), on a free port; torn down after the test. Skips only if sshd is missing
(Debian: `apt-get install openssh-server`), and fails then where CI is set.

    from tests.support.sshd_fixture import sshd  # noqa: F401
    def test_x(sshd): SSHHost(Endpoint(sshd.user, sshd.host, sshd.port), sshd.client_key)
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

SSHD_CANDIDATES = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]


@dataclass
class SSHD:
    host: str
    port: int
    user: str
    client_key: Path  # private key authorized on this server (0600)
    host_key_pub: str  # "ssh-ed25519 AAAA..." of the server
    dir: Path
    proc: subprocess.Popen

    @property
    def endpoint(self) -> str:
        """The value for MNIST_LAUNCH_SSH_ENDPOINT."""
        return f"{self.user}@{self.host}:{self.port}"

    def log(self) -> str:
        return (self.dir / "sshd.log").read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def _wait_ready(proc: subprocess.Popen, log: Path, port: int, wait_s: float = 60.0) -> bool:
    """True once this sshd listens on ``port`` and answers; False if it could not bind it (taken)."""
    listening = f"Server listening on 127.0.0.1 port {port}".encode()
    deadline = time.monotonic() + wait_s  # generous: a loaded CI machine starts processes slowly
    while True:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            if "Address already in use" in text:
                return False
            raise RuntimeError(f"sshd exited with {proc.returncode}: {text}")
        if listening in log.read_bytes():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"sshd did not answer on port {port}: {log.read_text(errors='replace')}")
        time.sleep(0.05)


def start_sshd(root: Path, extra_config: tuple[str, ...] = (), authorized_keys: Optional[Path] = None,
               user: Optional[str] = None, home: Optional[Path] = None) -> SSHD:
    """``extra_config``: more sshd_config lines, e.g. ``SetEnv K=V`` to give sessions what an
    instance's environment would have (its role's endpoint, in tests moto's). ``user`` logs in
    instead of the current one, with the client key in ``authorized_keys`` (a file that user can read:
    sshd reads it as the user). ``home``: the sessions' home instead of the user's own (``$HOME`` for
    commands, the starting folder for SFTP), so a test writing to ``~`` writes under its tmp folder
    (sshd takes the first SetEnv line only: HOME joins the first SetEnv line of ``extra_config``)."""
    exe = shutil.which("sshd") or next((p for p in SSHD_CANDIDATES if os.path.exists(p)), None)
    if exe is None or shutil.which("ssh-keygen") is None:
        why = "OpenSSH sshd is not installed (apt-get install -y openssh-server)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{why} — CI is set, and .ci/run installs it: the SSH tests must run", pytrace=False)
        pytest.skip(why)
    root.mkdir(parents=True, exist_ok=True)
    host_pub = _keygen(root / "host_ed25519")
    client_pub = _keygen(root / "client_ed25519")
    keys = authorized_keys or root / "authorized_keys"
    keys.write_text(client_pub + "\n")
    os.chmod(keys, 0o600)
    # sshd insists on its privilege separation directory even for one test server
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    port = _free_port()
    home_env = [f"SetEnv HOME={home}"] if home else []
    first_env = next((i for i, line in enumerate(extra_config) if line.startswith("SetEnv ")), None)
    if home and first_env is not None:  # one SetEnv line: HOME joins the first one's words
        extra_config = tuple(f"SetEnv HOME={home} {line[len('SetEnv '):]}" if i == first_env else line
                             for i, line in enumerate(extra_config))
        home_env = []
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {root / 'host_ed25519'}",
        f"AuthorizedKeysFile {keys}",
        f"PidFile {root / 'sshd.pid'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        f"Subsystem sftp internal-sftp -d {home}" if home else "Subsystem sftp internal-sftp",
        *home_env,
        "LogLevel VERBOSE",
        *extra_config,
        "",
    ]))
    # A free port can be taken by another test worker before sshd binds it: then sshd cannot bind and
    # exits, and the next free port is tried. Ready means *this* sshd says it listens, then answers.
    for _ in range(5):
        log = open(root / "sshd.log", "wb")
        proc = subprocess.Popen([exe, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        if _wait_ready(proc, root / "sshd.log", port):
            break
        log.close()
        port = _free_port()
        config.write_text(re.sub(r"^Port \d+$", f"Port {port}", config.read_text(), count=1, flags=re.M))
    else:
        raise RuntimeError(f"sshd could not bind a free port in 5 tries: {(root / 'sshd.log').read_text()}")
    return SSHD("127.0.0.1", port, user or getpass.getuser(), root / "client_ed25519", host_pub, root, proc)


def stop_sshd(server: SSHD) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHD]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop_sshd(server)
