"""SSHHost: the Host interface (infra/host.py) over paramiko, with pinned host keys.

Host keys are trusted on first use and pinned in MNIST_LAUNCH_HOME/known_hosts under an alias
(the instance id, so a stopped-and-started instance with a new address stays pinned, and a
replaced instance is a new host). A changed key is a hard SSHError. ``MNIST_LAUNCH_SSH_ENDPOINT=
[user@]host:port`` sends every connection there instead (port-forwards, bastions, tests).

    with SSHHost(Endpoint("ubuntu", "3.4.5.6", 22), key_path, alias="i-0abc") as host:
        host.run(["nvidia-smi"]).stdout
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import socket
import threading
import time
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import BinaryIO, Callable, Concatenate, Optional, ParamSpec, TypeVar

import paramiko

from core import settings
from core.errors import SSHError
from infra.home import known_hosts_path
from infra.host import Completed

ENDPOINT_ENV = settings.SSH_ENDPOINT
# paramiko logs a dropped connection with a traceback; our errors say it in one line instead
logging.getLogger("paramiko").addHandler(logging.NullHandler())
_PIN_LOCK = threading.Lock()  # known_hosts is rewritten whole: one pin at a time in this process


T = TypeVar("T")
P = ParamSpec("P")


def _transport_errors(method: Callable[Concatenate["SSHHost", P], T]) -> Callable[Concatenate["SSHHost", P], T]:
    """paramiko's failures in the middle of a Host call (a channel refused, a connection that died after
    ``connect``) as one SSHError line: callers catch SSHError and never need to name paramiko."""
    @wraps(method)
    def wrapper(self: "SSHHost", *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except (paramiko.SSHException, EOFError) as err:
            raise SSHError(f"{self.name}: the SSH connection failed ({err or type(err).__name__}) — check the "
                           "instance is up, then retry") from None
    return wrapper


class HostKeyChangedError(SSHError):
    """The server's key differs from the pinned one: never retried, never auto-accepted."""


class KeyRefusedError(SSHError):
    """The server does not accept our key: retrying will not help."""


# What a dropped or refused connection raises from SSHHost's calls (ours, paramiko's, the socket's): a
# caller that reconnects catches these and never names paramiko. HostKeyChangedError and KeyRefusedError
# are among them (SSHError) but never fix themselves: catch those first.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (SSHError, paramiko.SSHException, EOFError, ConnectionError)
# a read over SFTP also fails with a plain OSError when its channel dies
# (FileNotFoundError is an answer: catch it first)
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, OSError)
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (HostKeyChangedError, KeyRefusedError)


@dataclass(frozen=True)
class Endpoint:
    user: str
    host: str
    port: int = 22

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def parse_endpoint(text: str, default_user: str) -> Endpoint:
    """'[user@]host:port' (or '[user@]host') -> Endpoint."""
    user, _, hostport = text.rpartition("@")
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, "22"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SSHError(f"{ENDPOINT_ENV}={text!r}: expected [user@]host:port, e.g. ubuntu@127.0.0.1:2222")
    return Endpoint(user or default_user, host.strip("[]"), int(port))


def endpoint_for(host: Optional[str], user: str, port: int = 22, node: int = 0) -> Endpoint:
    """Where to connect: MNIST_LAUNCH_SSH_ENDPOINT if set (for a multi-node cluster a comma-separated list,
    one entry per node in rank order), else the instance's own address."""
    override = settings.ssh_endpoint()
    if override:
        entries = [e.strip() for e in override.split(",")]
        if len(entries) > 1 and node >= len(entries):
            raise SSHError(f"{ENDPOINT_ENV} lists {len(entries)} endpoints, none for node {node} — "
                           "give one [user@]host:port per node, in rank order")
        return parse_endpoint(entries[node if len(entries) > 1 else 0], user)
    if not host:
        raise SSHError("the instance has no public IP address — check its subnet assigns one, "
                       "or set MNIST_LAUNCH_SSH_ENDPOINT")
    return Endpoint(user, host, port)


def public_key_of(identity: Path) -> str:
    """The one-line OpenSSH public key of a private key file (its .pub, else derived)."""
    pub = Path(str(identity) + ".pub")
    if pub.is_file():
        return pub.read_text().strip()
    try:
        key = paramiko.PKey.from_path(str(identity))
    except FileNotFoundError:
        raise SSHError(f"identity {identity} not found — pass an existing private key to --identity") from None
    except paramiko.PasswordRequiredException:
        raise SSHError(f"identity {identity} is passphrase-protected — "
                       "put its .pub next to it, or use another key") from None
    except (paramiko.SSHException, ValueError) as err:
        raise SSHError(f"identity {identity} is not a private key we can read ({err}) — "
                       "pass an OpenSSH private key") from None
    return f"{key.get_name()} {key.get_base64()}"


def _rq(path: str) -> str:
    """Quote a remote path for sh, keeping a leading ~/ expandable."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def _sftp_path(path: str) -> str:
    # SFTP has no ~: relative paths are relative to the login directory
    if path == "~":
        return "."
    return path[2:] if path.startswith("~/") else path


def _key_types_for(name: str) -> list[str]:
    if name == "ssh-rsa":
        return ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
    return [name]


class SSHHost:
    """A remote machine over one paramiko transport (opened lazily, reopened if dropped)."""

    def __init__(self, endpoint: Endpoint, key_path: Path, alias: Optional[str] = None,
                 known_hosts: Optional[Path] = None, connect_timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.key_path = Path(key_path)
        # pinned under the alias (instance id) when given, else under [host]:port like OpenSSH
        self.alias = alias or (endpoint.host if endpoint.port == 22 else f"[{endpoint.host}]:{endpoint.port}")
        self.known_hosts = Path(known_hosts) if known_hosts else known_hosts_path()
        self.connect_timeout = connect_timeout
        self.name = str(endpoint)
        self._transport: Optional[paramiko.Transport] = None
        self._sftp: Optional[paramiko.SFTPClient] = None
        self.connects = 0  # transports opened: more than one means a dropped connection was replaced

    # -- connection ----------------------------------------------------------------------------

    def __enter__(self) -> "SSHHost":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; one that already died closes quietly."""
        sftp, transport, self._sftp, self._transport = self._sftp, self._transport, None, None
        for part in (sftp, transport):
            if part is not None:
                try:
                    part.close()
                except (EOFError, OSError, paramiko.SSHException):
                    pass

    def _load_known(self) -> paramiko.HostKeys:
        keys = paramiko.HostKeys()
        if self.known_hosts.is_file():
            keys.load(str(self.known_hosts))
        return keys

    def _pin(self, key: paramiko.PKey) -> None:
        # read, add, write whole: hosts first met at once (the nodes of a cluster `up` waits for in parallel)
        # would each write the file without the others' pins, so one writer at a time
        with _PIN_LOCK:
            keys = self._load_known()
            keys.add(self.alias, key.get_name(), key)
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.known_hosts.with_name(self.known_hosts.name + ".tmp")
            keys.save(str(tmp))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.known_hosts)

    def connect(self) -> paramiko.Transport:
        if self._transport is not None and self._transport.is_active():
            return self._transport
        self.close()
        ep = self.endpoint
        try:
            pkey = paramiko.PKey.from_path(str(self.key_path))
        except FileNotFoundError:
            raise SSHError(f"identity {self.key_path} not found — pass an existing private key to --identity") from None
        except paramiko.PasswordRequiredException:
            raise SSHError(f"identity {self.key_path} is passphrase-protected — "
                           "use an unencrypted key for mnist-launch") from None
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=self.connect_timeout)
        except OSError as err:
            raise SSHError(f"cannot reach {ep.host}:{ep.port} ({err.strerror or err}) — is the instance running and "
                           "the security group open to your address?") from None
        transport = paramiko.Transport(sock)
        known = self._load_known().lookup(self.alias)
        pinned = next(iter(known.values())) if known else None
        if pinned is not None:
            # ask for the key type we pinned, so a server with several host keys is compared like for like
            opts = transport.get_security_options()
            wanted = [t for t in _key_types_for(pinned.get_name()) if t in opts.key_types]
            if wanted:
                opts.key_types = wanted + [t for t in opts.key_types if t not in wanted]
        try:
            transport.start_client(timeout=self.connect_timeout)
            server_key = transport.get_remote_server_key()
            if pinned is None:
                self._pin(server_key)
            elif server_key.get_name() != pinned.get_name() or server_key.asbytes() != pinned.asbytes():
                transport.close()
                raise HostKeyChangedError(
                    f"host key of {self.alias} ({ep.host}:{ep.port}) changed "
                    f"from the one pinned in {self.known_hosts} — "
                    f"if the instance was really replaced, run `ssh-keygen -R {self.alias} -f {self.known_hosts}`; "
                    "otherwise do not connect"
                )
            transport.auth_publickey(ep.user, pkey)
        except paramiko.AuthenticationException:
            transport.close()
            raise KeyRefusedError(f"{ep} refused key {self.key_path} — "
                                  "pass the key the instance was created with (--identity)") from None
        except (paramiko.SSHException, OSError, EOFError) as err:
            transport.close()
            raise SSHError(f"SSH to {ep} failed ({err or type(err).__name__}) — "
                           "check the instance is up, then retry") from None
        transport.set_keepalive(30)
        self._transport = transport
        self.connects += 1
        return transport

    def _sftp_client(self) -> paramiko.SFTPClient:
        transport = self.connect()
        channel = self._sftp.get_channel() if self._sftp is not None else None
        if self._sftp is None or channel is None or channel.closed:
            sftp = paramiko.SFTPClient.from_transport(transport)
            if sftp is None:  # paramiko's answer when the server opens no channel for it
                raise SSHError(f"{self.name}: the SSH server opened no SFTP channel"
                               " — check the instance is up, then retry")
            self._sftp = sftp
        return self._sftp

    # -- Host ----------------------------------------------------------------------------------

    @_transport_errors
    def exec(self, command: str, timeout: Optional[float] = None, stdin: Optional[BinaryIO] = None) -> Completed:
        """Run one shell command line; stdout and stderr are drained together (no deadlock)."""
        chan = self.connect().open_session()
        try:
            chan.settimeout(1.0)
            chan.exec_command(command)
            if stdin is not None:
                try:
                    while chunk := stdin.read(1 << 16):
                        chan.sendall(chunk)
                    chan.shutdown_write()
                except OSError:
                    pass  # the remote command exited early: its exit status and stderr say why
            out, err = bytearray(), bytearray()
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                if chan.recv_ready():
                    out += chan.recv(1 << 16)
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                elif (chan.exit_status_ready() and (chan.eof_received or chan.closed) and not chan.recv_ready()
                      and not chan.recv_stderr_ready()):
                    break  # sshd may send the exit status before the last output: done once EOF is in too
                else:
                    if deadline is not None and time.monotonic() > deadline:
                        raise SSHError(f"{self.name}: command timed out after {timeout:.0f}s: {command[:80]}")
                    time.sleep(0.01)
            code = chan.recv_exit_status()
            if code == -1:  # the channel closed without an exit status: the connection dropped
                raise SSHError(f"{self.name}: the connection dropped while a command ran — "
                               "check the network, then retry")
            return Completed(code, out.decode(errors="replace"), err.decode(errors="replace"))
        finally:
            chan.close()

    def run(self, argv: list[str], cwd: Optional[str] = None, timeout: Optional[float] = None) -> Completed:
        cmd = shlex.join(argv)
        if cwd:
            cmd = f"cd {_rq(cwd)} && {cmd}"
        return self.exec(cmd, timeout=timeout)

    def spawn(self, argv: list[str], cwd: str, log: str, env: Optional[dict[str, str]] = None) -> int:
        """Start ``argv`` detached in its own session (setsid nohup); survives this connection."""
        for k in env or {}:  # a name is not quoted (VAR=value is not a word sh would take quoted): it is checked
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                raise ValueError(f"environment variable name {k!r} is not a valid name")
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        envs = f"env {envs} " if envs else ""
        # only the job itself goes to the background, so $! is its pid (setsid execs, never forks:
        # a background child of a non-interactive shell is not a process group leader)
        cmd = (f"mkdir -p {_rq(cwd)} && cd {_rq(cwd)} && mkdir -p \"$(dirname {_rq(log)})\" && "
               f"{{ {envs}setsid nohup {shlex.join(argv)} >> {_rq(log)} 2>&1 < /dev/null & echo $!; }}")
        res = self.exec(cmd, timeout=60)
        pid = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
        if res.returncode != 0 or not pid.isdigit():
            raise SSHError(f"{self.name}: could not start {argv[0]}: {res.stderr.strip()[:200]} — "
                           "check the path and cwd")
        return int(pid)

    @_transport_errors
    def read_from(self, path: str, offset: int, limit: int = 1 << 20) -> bytes:
        try:
            with self._sftp_client().open(_sftp_path(path), "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""

    @_transport_errors
    def read_text(self, path: str) -> Optional[str]:
        try:
            with self._sftp_client().open(_sftp_path(path), "rb") as f:
                return f.read().decode()
        except FileNotFoundError:
            return None

    @_transport_errors
    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        """Atomic write with ``mode`` set before any content lands (secrets never readable)."""
        parent = os.path.dirname(path)
        sftp = self._sftp_client()
        if parent:
            self._makedirs(sftp, _sftp_path(parent))
        target = _sftp_path(path)
        tmp = f"{target}.tmp"
        with sftp.open(tmp, "wb") as f:
            sftp.chmod(tmp, mode)
            f.write(text.encode())
        sftp.posix_rename(tmp, target)

    @staticmethod
    def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
        """``mkdir -p`` over SFTP: a few round trips, no shell started on the host."""
        missing = []
        while path and path not in ("/", "."):
            try:
                sftp.stat(path)
                break
            except FileNotFoundError:
                missing.append(path)
                path = os.path.dirname(path)
        for d in reversed(missing):
            try:
                sftp.mkdir(d)
            except OSError:
                sftp.stat(d)  # made meanwhile by someone else is fine; anything else raises

    def put_tar(self, stream: BinaryIO, dest: str) -> None:
        """Unpack a tar stream into ``dest`` on the host (created if missing)."""
        # --no-same-owner: files belong to the login user, not to whatever uid the sender had (tar as root keeps it)
        res = self.exec(f"mkdir -p {_rq(dest)} && tar -x --no-same-owner -f - -C {_rq(dest)}",
                        stdin=stream, timeout=3600)
        if res.returncode != 0:
            raise SSHError(f"{self.name}: unpacking into {dest} failed: {res.stderr.strip()[:200]} — "
                           "check disk space and permissions")

    def is_alive(self, pid: int) -> bool:
        # a zombie is dead for our purposes
        res = self.exec(f"st=$(ps -o stat= -p {int(pid)}) || {{ echo dead; exit 0; }}; "
                        f"case $st in Z*) echo dead;; *) echo alive;; esac", timeout=60)
        answer = res.stdout.strip().splitlines()[-1:] if res.returncode == 0 else []
        if answer not in (["alive"], ["dead"]):  # an answer we cannot read is no evidence of death
            raise SSHError(f"{self.name}: could not tell whether process {pid} runs ({res.stderr.strip()[:120]})")
        return answer == ["alive"]

    def kill(self, pid: int, sig: int = signal.SIGTERM) -> None:
        self.exec(f"kill -{int(sig)} {int(pid)} 2>/dev/null || true", timeout=60)


def wait_for_banner(host: str, port: int, timeout_s: float = 5.0) -> bool:
    """True when something on host:port answers with an SSH banner (sshd is up)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False
