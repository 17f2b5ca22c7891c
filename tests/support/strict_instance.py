"""The tests' "instance", as close to a Deep Learning AMI as this machine allows.

- A login user that is not root: when the tests run as root (CI, on a disposable machine), one
  user is created for the session (``useradd``) and removed at exit; sshd runs as root, the
  session as that user. Where that is not possible (not root, no useradd, or the test
  interpreter's packages are not readable by that user) the reason is printed and the current
  user is the login user.
- The image's Python inside a venv of its own, its packages only there (``/opt/pytorch`` on the
  AMI): a venv made from a base interpreter of the same version, without its system
  site-packages, whose one ``.pth`` lists the test interpreter's package folders. No torch is
  copied. Tests point ``launch.python`` at :attr:`ImageEnv.python`.
- SSH that refuses, then drops connections for the first seconds after boot, as an instance does
  while cloud-init runs: :class:`BootingFront`, a TCP front on 127.0.0.1 in front of sshd.
- The run's folders go under the login user's home (:attr:`Instance.home`); :func:`written_outside`
  lists what that user wrote elsewhere.

    inst = strict_instance(tmp / "sshd", extra_config=("SetEnv K=V",)); inst.python; inst.home
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tests.support.sshd_fixture import SSHD, start_sshd

# how long a booting instance refuses connections, then accepts and drops them, from the first attempt
REFUSE_S = 1.0
DROP_S = 1.5

# the test interpreter's package folders: every sys.path entry outside the standard library
# (infra/remote_setup.py asks an image's interpreter the same question)
_SITE_DIRS = r"""
import os, sys, sysconfig
std = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
for p in sys.path:
    real = os.path.realpath(p) if p else ""
    if p and os.path.isdir(p) and not (any(real == s or real.startswith(s + os.sep) for s in std)
                                       and "-packages" not in real):
        print(p)
"""


@dataclass
class LoginUser:
    name: str
    uid: int
    gid: int
    home: Path
    created: bool  # made for this session (removed at exit); False: the current user
    why_not: str = ""  # why the current user is the login user, when it is root


@dataclass
class Instance(SSHD):
    """An SSHD whose ``port`` is the booting front's, with the AMI-like pieces around it."""

    home: Path = Path("/")  # the login user's home: the run's folders go under it
    python: str = ""  # the image's interpreter (in its own venv): the value for launch.python
    login: Optional[LoginUser] = None
    front: Optional["BootingFront"] = None
    outside_at_boot: tuple[str, ...] = ()  # what its uid owned outside its home before (a reused uid's leftovers)
    authorized_keys: Optional[Path] = None  # the keys its sshd lets in

    def authorize(self, client_key: Path) -> None:
        """Let the holder of ``client_key`` in too (the nodes of a cluster share one key pair, as on EC2)."""
        assert self.authorized_keys is not None
        with open(self.authorized_keys, "a") as f:
            f.write(Path(str(client_key) + ".pub").read_text().strip() + "\n")

    def written_outside(self) -> list[str]:
        """What the login user wrote outside its home since this instance started (see :func:`written_outside`)."""
        return [p for p in written_outside(self.login) if p not in self.outside_at_boot] if self.login else []

    def remote(self, name: str) -> Path:
        """A folder for ``launch.remote_dir`` under the login user's home."""
        return self.home / name


_user: Optional[LoginUser] = None
_lock = threading.Lock()


def _current_user(why: str) -> LoginUser:
    pw = pwd.getpwuid(os.geteuid())
    if os.geteuid() == 0:
        print(f"strict instance: logging in as {pw.pw_name}, not a user of its own: {why}", file=sys.stderr)
    return LoginUser(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir), created=False, why_not=why)


def _as_user(user: LoginUser, argv: list[str]) -> subprocess.CompletedProcess:
    who: tuple[Optional[int], Optional[int], Optional[list[int]]] = (
        (user.uid, user.gid, []) if user.created else (None, None, None))
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/",
                              env={"PATH": "/usr/bin:/bin", "HOME": str(user.home)},
                              user=who[0], group=who[1], extra_groups=who[2])
    except OSError as err:  # e.g. an interpreter under a home it may not enter
        return subprocess.CompletedProcess(argv, 126, "", str(err))


def _retry_locked(argv: list[str], wait_s: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``useradd``/``userdel``, again while another process holds the lock on /etc/passwd or
    /etc/group (parallel test workers each make their user at the same moment; both give up at once)."""
    deadline = time.monotonic() + wait_s
    while True:
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode == 0 or "lock" not in done.stderr.lower() or time.monotonic() > deadline:
            return done
        time.sleep(0.05)


def login_user() -> LoginUser:
    """The session's login user (see the module doc); made once per process."""
    global _user
    with _lock:
        if _user is not None:
            return _user
        if os.geteuid() != 0:
            _user = _current_user("")
        elif shutil.which("useradd") is None or shutil.which("userdel") is None:
            _user = _current_user("useradd/userdel are not installed")
        else:
            name = f"mli{os.getpid()}"[:32]
            # password '*': none, yet not locked (sshd without PAM refuses a locked '!' account)
            made = _retry_locked(["useradd", "--create-home", "--shell", "/bin/sh", "--user-group",
                                  "--password", "*", name])
            if made.returncode != 0:
                _user = _current_user(f"useradd {name} failed: {made.stderr.strip()[:200]}")
            else:
                atexit.register(_retry_locked, ["userdel", "--remove", "--force", name])
                pw = pwd.getpwnam(name)
                _user = LoginUser(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir), created=True)
        return _user


def _base_candidates() -> list[str]:
    """Interpreters of the test interpreter's version that have no torch of their own, first the one below it."""
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    base = getattr(sys, "_base_executable", sys.executable)
    out = []
    for c in (base, f"/usr/bin/python{ver}", f"/usr/local/bin/python{ver}", shutil.which(f"python{ver}")):
        if c and os.path.exists(c) and c not in out:
            out.append(c)
    return out


def image_env(where: Path, user: LoginUser) -> tuple[Optional[Path], str]:
    """A venv in ``where`` playing the image's PyTorch environment: (its python, "") or (None, why not)."""
    sites = subprocess.run([sys.executable, "-E", "-c", _SITE_DIRS], capture_output=True, text=True, cwd="/",
                           check=True).stdout.split("\n")
    # the project is no part of it
    sites = [s for s in sites if s and not (Path(s) / "launcher" / "remote.py").exists()]
    why = "no interpreter of this version found"
    for base in _base_candidates():
        shutil.rmtree(where, ignore_errors=True)
        made = subprocess.run([base, "-m", "venv", "--without-pip", str(where)], capture_output=True, text=True)
        if made.returncode != 0:
            why = f"{base} -m venv failed: {made.stderr.strip()[-200:]}"
            continue
        purelib = subprocess.run([str(where / "bin" / "python"), "-c",
                                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        Path(purelib, "image-packages.pth").write_text("\n".join(sites) + "\n")
        os.chmod(where, 0o755)
        probe = _as_user(user, [str(where / "bin" / "python"), "-c",
                                "import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in "
                                "('torch', 'accelerate', 'boto3', 'yaml', 'pip')) else 1)"])
        if probe.returncode == 0:
            return where / "bin" / "python", ""
        why = (f"{user.name} cannot run {base} with this interpreter's packages "
               f"({(probe.stderr.strip() or 'not found')[-160:]})")
    shutil.rmtree(where, ignore_errors=True)
    return None, why


_built: dict[str, Path] = {}  # login user -> its image env's python, built once per process


def _built_image_env(where: Path, user: LoginUser) -> tuple[Optional[Path], str]:
    """:func:`image_env`, built once per login user and process: every instance of a session boots the
    same image (tests only read it: what a run installs goes into the run's own venv)."""
    with _lock:
        python = _built.get(user.name)
        if python is not None and python.exists():
            return python, ""
        python, why = image_env(where, user)
        if python is not None:
            _built[user.name] = python
        return python, why


def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(1 << 16):
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def splice(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways between two connected sockets, each way on a daemon thread, until either ends."""
    for x, y in ((a, b), (b, a)):
        threading.Thread(target=_pipe, args=(x, y), daemon=True).start()


class BootingFront:
    """A TCP front on 127.0.0.1 for an sshd, behaving like an instance that is still booting.

    The first connection is reset; then the port refuses connections for ``refuse_s`` (bound, not
    listening), then accepts and drops them for ``drop_s`` (sshd not ready yet), then forwards to
    sshd. It closes when sshd exits."""

    def __init__(self, target: tuple[str, int], proc: subprocess.Popen, refuse_s: float = REFUSE_S,
                 drop_s: float = DROP_S) -> None:
        self.target, self.proc, self.refuse_s, self.drop_s = target, proc, refuse_s, drop_s
        self.sock = self._socket(0)
        self.port = self.sock.getsockname()[1]
        self.sock.listen(16)
        self.first: Optional[float] = None  # monotonic time of the first attempt
        self.dropped = 0  # connections reset or dropped while "booting"
        self.forwarded = 0
        self.closed = False
        threading.Thread(target=self._serve, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    @staticmethod
    def _socket(port: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return s

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST, not FIN
        conn.close()

    def _serve(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            now = time.monotonic()
            if self.first is None:  # the first attempt: reset it, then refuse for a while
                self.first = now
                self.dropped += 1
                self.sock.close()
                self.sock = self._socket(self.port)  # bound, not listening: connect() is refused
                self._reset(conn)  # after: whoever sees this reset finds the port refusing
                time.sleep(self.refuse_s)
                self.sock.listen(16)
                continue
            if now - self.first < self.refuse_s + self.drop_s:
                self.dropped += 1
                conn.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                conn.close()
                continue
            self.forwarded += 1
            splice(conn, upstream)

    def _watch(self) -> None:
        self.proc.wait()
        self.close()

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


class CuttableProxy:
    """A TCP forwarder to the sshd whose live connections can be cut (a dropped Wi-Fi, a sleeping laptop)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.paused = False  # while True, new connections are dropped at once (the network is down)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.paused:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            splice(client, upstream)

    def cut(self) -> int:
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        return len(conns) // 2

    def close(self) -> None:
        self.listener.close()
        self.cut()


def strict_instance(where: Path, extra_config: tuple[str, ...] = (), booting: bool = True,
                    node: Optional[str] = None) -> Instance:
    """Start sshd as an AMI-like instance (see the module doc). ``node``: the sessions' home is a folder of
    that name under the login user's (``$HOME`` for commands, where SFTP starts), so the nodes of a cluster,
    each an sshd of its own, keep their ``~`` apart as separate machines do.

    Stop it with ``tests.support.sshd_fixture.stop_sshd``."""
    user = login_user()
    where.mkdir(parents=True, exist_ok=True)
    if user.created:
        env_dir = user.home / ".image-env"  # like /opt/pytorch: the image's, not the run's
    else:
        env_dir = where / "image-env"
    python, why = _built_image_env(env_dir, user)
    if python is None and user.created:  # the made user cannot use this interpreter: log in as ourselves
        print(f"strict instance: logging in as the current user: {why}", file=sys.stderr)
        user = _current_user(why)
        python, why = _built_image_env(where / "image-env", user)
    if python is None:
        raise RuntimeError(f"cannot make the image's environment: {why}")
    keys = None
    if user.created:
        ssh_dir = user.home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(ssh_dir, user.uid, user.gid)
        keys = ssh_dir / (f"authorized_keys-{node}" if node else "authorized_keys")  # one file an sshd
    home = None
    if node is not None:
        home = user.home / node
        home.mkdir(exist_ok=True)
        if user.created:
            os.chown(home, user.uid, user.gid)
    srv = start_sshd(where, extra_config=extra_config, authorized_keys=keys, user=user.name, home=home)
    if keys is not None:
        os.chown(keys, user.uid, user.gid)
    front = BootingFront((srv.host, srv.port), srv.proc) if booting else None
    return Instance(srv.host, front.port if front else srv.port, srv.user, srv.client_key, srv.host_key_pub, srv.dir,
                    srv.proc, home=home or user.home, python=str(python), login=user, front=front,
                    outside_at_boot=tuple(written_outside(user)), authorized_keys=keys or where / "authorized_keys")


def written_outside(user: LoginUser, roots: tuple[str, ...] = ("/tmp", "/var/tmp", "/dev/shm")) -> list[str]:
    """Files and folders under ``roots`` owned by ``user`` (made by something it ran); [] for the current user."""
    if not user.created:
        return []
    found = subprocess.run(["find", *[r for r in roots if os.path.isdir(r)], "-xdev", "-user", str(user.uid)],
                           capture_output=True, text=True)
    return sorted(found.stdout.split())


def probe_wheel(folder: Path, name: str = "mnist_launch_probe", version: str = "1.0") -> Path:
    """A tiny pure-Python wheel made here: the one package the "image" lacks, installable offline."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},sha256="
                     f"{base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b'=').decode()},"
                     f"{len(t.encode())}\n" for p, t in files.items()) + f"{dist}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, t in {**files, f"{dist}/RECORD": record}.items():
            z.writestr(p, t)
    return path
