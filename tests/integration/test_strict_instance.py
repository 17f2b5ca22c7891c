"""The tests' AMI-like instance itself (tests/support/strict_instance.py): it boots like one, and `up` gets through."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from core.errors import SSHError
from infra.ssh import Endpoint, SSHHost, wait_for_banner
from tests.support.sshd_fixture import stop_sshd
from tests.support.strict_instance import strict_instance


def test_ssh_is_reset_then_refused_then_dropped_then_served_while_the_instance_boots(tmp_path):
    inst = strict_instance(tmp_path / "sshd")
    try:
        assert inst.front is not None and inst.login is not None
        assert not wait_for_banner(inst.host, inst.port, 2.0)  # the first attempt: reset
        with pytest.raises(ConnectionRefusedError):  # then nothing listens
            socket.create_connection((inst.host, inst.port), timeout=2).close()
        host = SSHHost(Endpoint(inst.user, inst.host, inst.port), inst.client_key, known_hosts=tmp_path / "kh")
        errors = []
        deadline = time.monotonic() + 30
        while True:  # what `up` does (launcher/cluster/provision.py wait_until_ready): try again until it answers
            try:
                res = host.run(["sh", "-c", "id -un; echo $HOME"])
                break
            except SSHError as err:
                errors.append(str(err))
                assert time.monotonic() < deadline, errors
                time.sleep(0.3)
        host.close()
        assert res.returncode == 0 and res.stdout.split() == [inst.login.name, str(inst.home)]
        assert errors and inst.front.dropped >= 2 and inst.front.forwarded >= 1
        if inst.login.created:  # a user of its own, not root
            assert inst.login.name != "root" and inst.login.uid != 0
    finally:
        stop_sshd(inst)


def test_the_images_python_is_a_venv_of_its_own_that_has_torch(tmp_path):
    inst = strict_instance(tmp_path / "sshd", booting=False)
    try:
        with SSHHost(Endpoint(inst.user, inst.host, inst.port), inst.client_key, known_hosts=tmp_path / "kh") as host:
            res = host.run([inst.python, "-c", "import sys, importlib.util as u; print(sys.prefix != sys.base_prefix, "
                                               "bool(u.find_spec('torch')), sys._base_executable)"])
        in_venv, has_torch, base = res.stdout.split()
        assert (in_venv, has_torch) == ("True", "True"), res.stderr
        # its base interpreter has no torch of its own: the image's torch is only in the image's venv
        if subprocess.run([base, "-c", "import torch"], capture_output=True).returncode == 0:
            pytest.skip(f"{base} has torch itself (the project sits in the system Python): not an AMI-like base")
    finally:
        stop_sshd(inst)
