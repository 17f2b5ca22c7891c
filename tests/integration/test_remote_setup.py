"""The run's venv on a host (LocalHost and a real sshd): built once per inputs, failures shown, never half-stamped."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from core.errors import SetupError
from infra.host import LocalHost
from infra.remote_setup import STAMP, ensure_env, inputs_hash, project_requirements
from infra.ssh import Endpoint, SSHHost

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

    # a file of ours inside the venv: a rebuild (rm -rf, venv, pip) takes it away, a reuse leaves it
    marker = tmp_path / "venv" / "left-by-the-test"
    marker.write_text("1")
    python_inode = (tmp_path / "venv" / "bin" / "python").lstat().st_ino

    second = ensure_env(host, venv, base_python=sys.executable, requirements=PRESENT)
    assert second.skipped and "unchanged" in second.summary()
    assert marker.exists() and (tmp_path / "venv" / "bin" / "python").lstat().st_ino == python_inode  # reused

    # another interpreter is another input too (the stamp comparison below decides for every input)
    assert inputs_hash("/opt/pytorch/bin/python3", PRESENT) != inputs_hash(sys.executable, PRESENT)
    if host.name != "local":
        return  # the decision is the same shell script on every host: one real rebuild (~4 s) is enough

    # another requirement: built again from scratch, and stamped with the new inputs
    more = PRESENT + ["rich>=13"]  # also satisfied by the base interpreter: no network
    third = ensure_env(host, venv, base_python=sys.executable, requirements=more)
    assert not third.skipped and "built" in third.summary()
    assert not marker.exists()  # the old venv went: setup ran again
    assert (tmp_path / "venv" / STAMP).read_text().startswith(inputs_hash(sys.executable, more))


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


# ---------------------------------------------------------------------------------------------
# the image's torch in a venv of its own (tests/support/strict_instance.py), over a real sshd


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A strict instance whose pip has no index (only a folder holding the probe wheel), so a request
    for torch would fail: and whose PATH starts with a folder where a test may put a fake nvidia-smi."""
    from tests.support.sshd_fixture import stop_sshd
    from tests.support.strict_instance import login_user, probe_wheel, strict_instance

    home = login_user().home
    wheels, fakebin = home / "wheels", home / "fakebin"
    for d in (wheels, fakebin):
        d.mkdir(exist_ok=True)
    probe_wheel(wheels)
    inst = strict_instance(tmp_path_factory.mktemp("image-sshd"), booting=False, extra_config=(
        f"SetEnv PIP_NO_INDEX=1 PIP_FIND_LINKS={wheels} PATH={fakebin}:/usr/local/bin:/usr/bin:/bin",))
    if inst.login and inst.login.created:
        import os

        for d in (wheels, fakebin, *wheels.iterdir()):
            os.chown(d, inst.login.uid, inst.login.gid)
    yield inst
    stop_sshd(inst)


def _host(inst, tmp_path: Path) -> SSHHost:
    return SSHHost(Endpoint(inst.user, inst.host, inst.port), inst.client_key, known_hosts=tmp_path / "known_hosts")


def _purelib(venv: Path) -> Path:
    [site] = (venv / "lib").glob("python3*/site-packages")
    return site


def test_the_images_torch_in_its_own_venv_is_reused_and_only_what_is_missing_installed(image, tmp_path):
    venv = image.remote(f"setup-{tmp_path.name}") / "venv"
    reqs = ["torch>=2.2", "pyyaml>=6", "mnist-launch-probe==1.0"]
    with _host(image, tmp_path) as host:
        first = ensure_env(host, str(venv), base_python=image.python, requirements=reqs)
        assert not first.skipped
        site = _purelib(venv)
        # torch is the image's: nothing of it in our venv (pip has no index, so fetching it would have
        # failed); the one missing package was installed into it
        assert not [p.name for p in site.iterdir() if p.name.startswith(("torch", "nvidia"))]
        assert (site / "mnist_launch_probe" / "__init__.py").is_file()
        probe = host.run([first.python, "-c", "import importlib.util as u, mnist_launch_probe, sys; "
                                              "print(u.find_spec('torch').origin); print(sys.prefix)"])
        assert probe.returncode == 0, probe.stderr
        torch_file, prefix = probe.stdout.split()
        assert prefix == str(venv) and not torch_file.startswith(str(venv))
        # the image's own environment does not see the base interpreter's packages, nor gains ours
        assert host.run([image.python, "-c", "import mnist_launch_probe"]).returncode != 0
        again = ensure_env(host, str(venv), base_python=image.python, requirements=reqs)
        assert again.skipped and "unchanged" in again.summary()
        if image.login and image.login.created:
            assert venv.owner() == image.login.name


def test_gpus_the_environments_torch_cannot_see_stop_setup_in_one_line(image, tmp_path):
    fake = image.home / "fakebin" / "nvidia-smi"  # the one fake: this machine has no GPU; its torch sees none
    fake.write_text("#!/bin/sh\n[ \"$1\" = -L ] && echo 'GPU 0: NVIDIA H200 (UUID: GPU-0000)'\n")
    fake.chmod(0o755)
    try:
        venv = image.remote(f"setup-{tmp_path.name}") / "venv"
        with _host(image, tmp_path) as host, pytest.raises(SetupError) as err:
            ensure_env(host, str(venv), base_python=image.python, requirements=["pyyaml>=6"])
        msg = str(err.value)
        assert "\n" not in msg and re.search(r"nvidia-smi lists 1 GPU\(s\) but the run's environment "
                                             r".*venv/bin/python torch \S+ sees 0 — "
                                             r"point launch.python at the image's CUDA build", msg), msg
    finally:
        fake.unlink()
