"""SSHHost against a real OpenSSH sshd on 127.0.0.1: exec, detached spawn, offsets, modes, tar, pinning."""

from __future__ import annotations

import io
import stat
import tarfile
import time

import paramiko
import pytest

from core.errors import SSHError
from infra.home import ensure_default_key
from infra.ssh import Endpoint, SSHHost, endpoint_for, parse_endpoint, public_key_of, wait_for_banner
from tests.support.sshd_fixture import sshd  # noqa: F401


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAUNCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MNIST_LAUNCH_SSH_ENDPOINT", raising=False)
    return tmp_path / "home"


def host_for(server, alias=None) -> SSHHost:
    return SSHHost(Endpoint(server.user, server.host, server.port), server.client_key, alias=alias)


def test_run_returns_exit_code_stdout_and_stderr(sshd, tmp_path):  # noqa: F811
    with host_for(sshd) as host:
        res = host.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
        assert host.run(["pwd"], cwd=str(tmp_path)).stdout.strip() == str(tmp_path)
        # arguments with spaces and quotes arrive intact
        assert host.run(["printf", "%s|", "a b", "it's"]).stdout == "a b|it's|"


def test_spawn_is_detached_and_survives_the_connection(sshd, tmp_path):  # noqa: F811
    log = tmp_path / "logs" / "job.log"
    with host_for(sshd) as host:
        pid = host.spawn(["sh", "-c", "echo started $FOO; sleep 30"], cwd=str(tmp_path), log=str(log),
                         env={"FOO": "x y"})
        assert host.is_alive(pid)
    # a new connection still sees it: the job did not die with the session
    with host_for(sshd) as host:
        assert host.is_alive(pid)
        sid = host.run(["ps", "-o", "sid=", "-p", str(pid)]).stdout.strip()
        assert sid == str(pid)  # own session (setsid)
        deadline = time.monotonic() + 5
        while b"started" not in host.read_from(str(log), 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert host.read_from(str(log), 0) == b"started x y\n"
        host.kill(pid)
        deadline = time.monotonic() + 5
        while host.is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not host.is_alive(pid)


def test_read_from_offset_and_missing_files(sshd, tmp_path):  # noqa: F811
    f = tmp_path / "events.jsonl"
    f.write_bytes(b"0123456789")
    with host_for(sshd) as host:
        assert host.read_from(str(f), 4) == b"456789"
        assert host.read_from(str(f), 4, limit=3) == b"456"
        assert host.read_from(str(f), 10) == b""
        assert host.read_from(str(tmp_path / "nope"), 0) == b""
        assert host.read_text(str(tmp_path / "nope")) is None
        assert host.read_text(str(f)) == "0123456789"


def test_write_text_sets_mode_and_creates_parents(sshd, tmp_path):  # noqa: F811
    target = tmp_path / "a" / "b" / "secret.env"
    with host_for(sshd) as host:
        host.write_text(str(target), "TOKEN=1\n", mode=0o600)
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert target.read_text() == "TOKEN=1\n"
        host.write_text(str(target), "TOKEN=2\n", mode=0o640)
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
        assert target.read_text() == "TOKEN=2\n"
        assert not (target.parent / "secret.env.tmp").exists()


def test_write_and_read_relative_to_home(tmp_path):
    from tests.support.sshd_fixture import start_sshd, stop_sshd

    home = tmp_path / "home-of-the-session"  # not the real home of the user sshd logs in as
    home.mkdir()
    server = start_sshd(tmp_path / "sshd", home=home)
    try:
        with host_for(server) as host:
            assert host.run(["sh", "-c", "echo $HOME"]).stdout.strip() == str(home)
            host.write_text("~/sub/x.txt", "hi")  # SFTP
            assert (home / "sub" / "x.txt").read_text() == "hi"
            assert host.read_text("~/sub/x.txt") == "hi"
            host.put_tar(io.BytesIO(_tar_of({"y.txt": b"yo"})), "~/unpacked")  # a command: sh expands ~
            assert (home / "unpacked" / "y.txt").read_bytes() == b"yo"
    finally:
        stop_sshd(server)


def _tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_put_tar_unpacks_a_stream(sshd, tmp_path):  # noqa: F811
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [("code/a.py", b"print(1)\n"), ("code/sub/b.txt", b"x" * 200_000)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    dest = tmp_path / "remote" / "work"
    with host_for(sshd) as host:
        host.put_tar(buf, str(dest))
        with pytest.raises(SSHError, match="unpacking into .* failed"):
            host.put_tar(io.BytesIO(b"not a tar" * 100), str(dest))
    assert (dest / "code" / "a.py").read_bytes() == b"print(1)\n"
    assert (dest / "code" / "sub" / "b.txt").read_bytes() == b"x" * 200_000


def test_host_key_is_pinned_on_first_use_under_the_alias(sshd, home):  # noqa: F811
    with host_for(sshd, alias="i-0123") as host:
        host.run(["true"])
    known = (home / "known_hosts").read_text().split()
    assert known[0] == "i-0123"
    assert " ".join(known[1:3]) == " ".join(sshd.host_key_pub.split()[:2])
    assert stat.S_IMODE((home / "known_hosts").stat().st_mode) == 0o600
    # the pinned key keeps working
    with host_for(sshd, alias="i-0123") as host:
        assert host.run(["true"]).returncode == 0


def test_changed_host_key_is_a_hard_error(sshd, home):  # noqa: F811
    other = paramiko.Ed25519Key.from_private_key_file(str(sshd.client_key))  # any other ed25519 key
    home.mkdir(parents=True, exist_ok=True)
    (home / "known_hosts").write_text(f"i-0123 ssh-ed25519 {other.get_base64()}\n")
    with pytest.raises(SSHError, match=r"host key of i-0123 .* changed .*`ssh-keygen -R i-0123"):
        host_for(sshd, alias="i-0123").run(["true"])
    # without an alias it is pinned as [host]:port, like OpenSSH does
    with host_for(sshd) as host:
        host.run(["true"])
    assert f"[127.0.0.1]:{sshd.port}" in (home / "known_hosts").read_text()


def test_wrong_key_and_closed_port_are_one_line_errors(sshd, tmp_path):  # noqa: F811
    ensure_default_key()  # a key sshd does not know
    from infra.home import default_key_path

    with pytest.raises(SSHError, match=r"refused key .* \(--identity\)"):
        SSHHost(Endpoint(sshd.user, sshd.host, sshd.port), default_key_path()).run(["true"])
    with pytest.raises(SSHError, match="cannot reach 127.0.0.1:1 .* security group"):
        SSHHost(Endpoint("root", "127.0.0.1", 1), sshd.client_key).run(["true"])


def test_banner_probe(sshd):  # noqa: F811
    assert wait_for_banner(sshd.host, sshd.port)
    assert not wait_for_banner("127.0.0.1", 1, timeout_s=0.5)


def test_endpoint_override_and_parsing(monkeypatch):
    assert endpoint_for("1.2.3.4", "ubuntu") == Endpoint("ubuntu", "1.2.3.4", 22)
    monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", "root@127.0.0.1:2222")
    assert endpoint_for("1.2.3.4", "ubuntu") == Endpoint("root", "127.0.0.1", 2222)
    monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", "127.0.0.1:2200")
    assert endpoint_for(None, "ubuntu") == Endpoint("ubuntu", "127.0.0.1", 2200)
    assert parse_endpoint("bastion", "ubuntu") == Endpoint("ubuntu", "bastion", 22)
    with pytest.raises(SSHError, match="expected \\[user@\\]host:port"):
        parse_endpoint("me@host:notaport", "ubuntu")
    monkeypatch.delenv("MNIST_LAUNCH_SSH_ENDPOINT")
    with pytest.raises(SSHError, match="no public IP"):
        endpoint_for(None, "ubuntu")


def test_default_key_is_generated_once_with_mode_0600(home):
    path = ensure_default_key()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_bytes()
    assert ensure_default_key() == path and path.read_bytes() == first
    pub = public_key_of(path)
    assert pub.startswith("ssh-ed25519 ") and "PRIVATE" not in pub
    # derived from the private key when there is no .pub
    path.with_suffix(".pub").unlink()
    assert public_key_of(path).split()[:2] == pub.split()[:2]
    with pytest.raises(SSHError, match="not found"):
        public_key_of(home / "missing")


def test_put_tar_to_a_failing_remote_does_not_hang(sshd, tmp_path):  # noqa: F811
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    big = io.BytesIO(b"\0" * (8 << 20))
    with host_for(sshd) as host:
        with pytest.raises(SSHError, match=r"unpacking into .*file/sub failed: .* — check disk space"):
            host.put_tar(big, str(blocker / "sub"))
        assert host.run(["true"]).returncode == 0  # the connection is still usable


def test_run_timeout_is_an_error(sshd):  # noqa: F811
    with host_for(sshd) as host:
        with pytest.raises(SSHError, match="command timed out after 1s"):
            host.run(["sleep", "5"], timeout=1)
