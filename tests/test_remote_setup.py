"""The run's venv on a host (LocalHost and a real sshd): built once per inputs, failures shown, never half-stamped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from infra.host import LocalHost
from infra.remote_setup import STAMP, ensure_env, inputs_hash, project_requirements
from infra.ssh import Endpoint, SSHHost
from launcher.errors import SetupError

# satisfied by the interpreter's own site-packages: pip adds nothing and needs no network
PRESENT = ["pyyaml>=6"]


@pytest.fixture
def host(any_host):
    return any_host


def test_built_once_then_skipped_and_rebuilt_when_inputs_change(host, tmp_path):
    venv = str(tmp_path / "venv")
    first = ensure_env(host, venv, base_python=sys.executable, requirements=PRESENT)
    assert not first.skipped and first.python == venv + "/bin/python"
    # the venv sees the base interpreter's packages (the image's torch, here pyyaml) and is its own prefix
    probe = host.run([first.python, "-c", "import sys, yaml; print(sys.prefix)"])
    assert probe.returncode == 0 and probe.stdout.strip() == venv
    assert (tmp_path / "venv" / STAMP).read_text().startswith(inputs_hash(sys.executable, PRESENT))

    second = ensure_env(host, venv, base_python=sys.executable, requirements=PRESENT)
    assert second.skipped and "unchanged" in second.summary()
    # any input that changes gives another stamp, so the next ensure_env rebuilds
    assert inputs_hash(sys.executable, PRESENT + ["rich>=13"]) != inputs_hash(sys.executable, PRESENT)
    assert inputs_hash("/opt/pytorch/bin/python3", PRESENT) != inputs_hash(sys.executable, PRESENT)


def test_a_failing_install_shows_its_lines_and_is_redone_next_time(module_sshd, tmp_path):
    host = SSHHost(Endpoint(module_sshd.user, module_sshd.host, module_sshd.port), module_sshd.client_key,
                   known_hosts=tmp_path / "known_hosts")
    venv = tmp_path / "venv"
    bad = ["./no-such-package-dir"]  # pip refuses it at once, offline
    with pytest.raises(SetupError, match=r"pip install failed in .*launch.setup: skip(.|\n)*no-such-package-dir"):
        ensure_env(host, str(venv), base_python=sys.executable, requirements=bad)
    assert (venv / "bin").is_dir() and not (venv / STAMP).exists()  # never marked built: the next run tries again
    host.close()


def test_a_missing_interpreter_says_to_set_launch_python(host, tmp_path):
    with pytest.raises(SetupError, match=r"no interpreter found: tried /nowhere/python3 — set launch.python"):
        ensure_env(host, str(tmp_path / "venv"), base_python="/nowhere/python3", requirements=PRESENT)
    assert not (tmp_path / "venv").exists()


def test_skip_uses_the_given_interpreter_untouched(tmp_path):
    report = ensure_env(LocalHost(), str(tmp_path / "venv"), base_python="/opt/pytorch/bin/python3", mode="skip")
    assert (report.python, report.skipped) == ("/opt/pytorch/bin/python3", True)
    assert not (tmp_path / "venv").exists()


def test_requirements_are_the_projects_runtime_ones():
    reqs = project_requirements()
    assert any(r.startswith("torch") for r in reqs) and any(r.startswith("accelerate") for r in reqs)
    assert not any("pytest" in r or "moto" in r for r in reqs)  # test extras stay on the laptop
