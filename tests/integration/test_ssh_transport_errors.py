"""infra/ssh.py turns paramiko's failures inside a Host call into SSHError, so the launcher never names
paramiko. The server is a real OpenSSH sshd that logs us in but refuses every session channel
(MaxSessions 0): paramiko raises ChannelException (an SSHException) where a dying connection would."""

from __future__ import annotations

import paramiko
import pytest

from core.errors import SSHError
from infra.ssh import Endpoint, SSHHost
from tests.support.sshd_fixture import start_sshd, stop_sshd


def test_a_refused_channel_is_one_ssh_error_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAUNCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MNIST_LAUNCH_SSH_ENDPOINT", raising=False)
    srv = start_sshd(tmp_path / "sshd", ("MaxSessions 0",))
    try:
        with SSHHost(Endpoint(srv.user, srv.host, srv.port), srv.client_key) as host:
            host.connect()  # the login itself works: only what follows is refused
            calls = {
                "exec": lambda: host.exec("true", timeout=10),
                "run": lambda: host.run(["true"], timeout=10),
                "read_text": lambda: host.read_text("/etc/hostname"),
                "write_text": lambda: host.write_text(str(tmp_path / "x"), "x"),
            }
            for what, call in calls.items():
                with pytest.raises(SSHError,
                                   match=r"the SSH connection failed \(.+\) — check the instance is up") as err:
                    call()
                assert not isinstance(err.value, paramiko.SSHException), what
                assert err.value.__cause__ is None and err.value.__suppress_context__, what  # no paramiko traceback
    finally:
        stop_sshd(srv)
