"""Hostile values (spaces, quotes, $(...), backticks, ;, newlines, a leading -) in every config field and
command-line flag that names a path, a program or a name: refused at load with one line naming the
field, and nothing runs (a `touch MARKER` payload leaves no marker). Where a value legitimately reaches
a shell, the generated command is run by a real sh (here, and on the real sshd) with a hostile path:
the payload stays a literal name, and nothing outside the intended folder is touched or deleted."""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import load_config
from core.errors import ConfigError
from tests.support import ROOT


def payloads(marker: Path) -> list[str]:
    m = shlex.quote(str(marker))
    return [f"$(touch {m})", f"`touch {m}`", f"x; touch {m}", f"x && touch {m}", f"x\ntouch {m}",
            "a b", "it's", 'say "hi"', "-rf", "--help", "x|y", "x>y", "../../etc", "50%done"]


def write_config(tmp_path: Path, launch: dict, **top) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "model3", "launch": launch, **top}))
    return path


# -- validation at load ------------------------------------------------------------------------------

FIELDS = ["remote_dir", "python", "name", "instance", "ami", "region", "ssh_cidr"]


@pytest.mark.parametrize("field", FIELDS)
def test_every_path_program_and_name_field_refuses_hostile_values(tmp_path, field):
    marker = tmp_path / "MARKER"
    for value in payloads(marker):
        with pytest.raises(ConfigError) as err:
            load_config(write_config(tmp_path, {field: value}))
        msg = str(err.value)
        assert f"launch.{field}:" in msg and msg.endswith("— fix it and run again"), msg
        assert "\n" not in msg  # one line, whatever the value held
    assert not marker.exists()


def test_the_same_values_through_set_are_refused(tmp_path):
    marker = tmp_path / "MARKER"
    cfg = write_config(tmp_path, {})
    for field in FIELDS:
        for value in payloads(marker):
            with pytest.raises(ConfigError, match=rf"with --set .*launch\.{field}"):
                load_config(cfg, [f"launch.{field}={value}"])
    assert not marker.exists()


@pytest.mark.parametrize("field, good", [
    ("remote_dir", ["~/mnist-launch", "~", "/srv/mnist", "/tmp/pytest-of-ci/pytest-3/test_x0/remote", "~/a.b/c_d+e@f"]),
    ("python", ["python3", "/opt/pytorch/bin/python3", "~/venv/bin/python", "python3.11"]),
    ("name", ["mnist", "e2e-2", "a"]),
    ("instance", ["g4dn.xlarge", "p4d.24xlarge", "trn1n.32xlarge", "u-6tb1.metal"]),
    ("ami", ["ami-0123456789abcdef0", "ami-12c6146b"]),
    ("region", ["us-east-1", "eu-central-1", "us-gov-west-1", "ap-southeast-2"]),
    ("ssh_cidr", ["203.0.113.7/32", "10.0.0.0/8"]),
])
def test_ordinary_values_still_load(tmp_path, field, good):
    for value in good:
        assert getattr(load_config(write_config(tmp_path, {field: value})).launch, field) == value


def test_identity_is_any_file_name_but_never_an_option_or_control_characters(tmp_path):
    marker = tmp_path / "MARKER"
    for bad in ["-oProxyCommand=touch MARKER", "key\nx", "key\x1b[2J", ""]:
        with pytest.raises(ConfigError, match=r"launch\.identity: must be the path of a private key file"):
            load_config(write_config(tmp_path, {"identity": bad}))
    # a file may have any other name: it only ever reaches argv lists and paramiko, so nothing runs
    from launcher.cluster import identity_for

    for odd in payloads(marker)[:4]:
        assert load_config(write_config(tmp_path, {"identity": odd})).launch.identity == odd
        with pytest.raises(ConfigError, match="no such file"):
            identity_for(odd, create=False)
    assert not marker.exists()


def test_store_and_env_names_refuse_hostile_values(tmp_path):
    marker = tmp_path / "MARKER"
    for store in [f"s3://b$(touch {marker})/p", "s3://bucket/a/../../b", "s3://Bucket/x", "s3://b/x\ny", "-rf", "a\nb"]:
        with pytest.raises(ConfigError, match=r"store: "):
            load_config(write_config(tmp_path, {}, store=store))
    for name in [f"X$(touch {marker})", "A B", "1X", "X;Y", "X\nY", "-X", "X=Y", ""]:
        with pytest.raises(ConfigError, match=r"launch\.env: .* is not a valid variable name"):
            load_config(write_config(tmp_path, {"env": {name: "v"}}))
    assert not marker.exists()


# -- command-line flags: one line, exit 2, nothing run, nothing created ----------------------------------

@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No AWS anywhere: credentials that exist nowhere and an endpoint where nothing listens."""
    from tests.support.aws_helpers import fake_aws_env

    fake_aws_env(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(*args: str, capsys) -> tuple[int, str]:
    from launcher.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_hostile_flags_of_train_up_and_the_run_commands_are_one_line_errors(offline, capsys):
    marker = offline / "MARKER"
    touch = f"$(touch {marker})"
    cfg = str(ROOT / "configs" / "model3.yaml")
    cases = [
        (["train", cfg, "--name", f"x;touch {marker}"], "--name: name: use 1-31 lowercase letters"),
        (["train", cfg, "--instance", f"g4dn.xlarge {touch}"], "--instance: instance: not an EC2 instance type"),
        (["train", cfg, "--identity", "-oProxyCommand=touch MARKER"], "--identity: identity: must be the path"),
        (["train", cfg, "--store", f"s3://bucket/{touch}\nx"], "--store 's3://bucket/"),
        (["train", cfg, "--store", "s3://bucket/../../other"], "--store 's3://bucket/../../other': the prefix"),
        (["train", cfg, "--data-dir", f"s3://b`touch {marker}`/x"], "--data-dir 's3://b`touch"),
        (["train", cfg, "--run-id", f"../{touch}"], "--run-id '../$(touch"),
        (["train", cfg, "--set", f"launch.remote_dir=~/{touch}"], "launch.remote_dir: use only"),
        (["train", cfg, "--set", f"launch.python=python3;touch {marker}"], "launch.python: must be a program name"),
        (["train", cfg, "--local", "--run-id", f"x;touch {marker}"], "--run-id 'x;touch"),
        (["train", "--local", "--resume", "../../etc"], "run id '../../etc': use ASCII letters"),
        (["up", "--name", f"a {touch}", "--ssh-cidr", "203.0.113.7/32"], "--name 'a $(touch"),
        (["up", "--region", f"us-east-1;touch {marker}"], "--region 'us-east-1;touch"),
        (["up", "--ami", f"ami-1 {touch}"], "--ami 'ami-1 $(touch"),
        (["up", "--ssh-cidr", f"1.2.3.4/32;touch {marker}"], "--ssh-cidr '1.2.3.4/32;touch"),
        (["up", "--instance", "-rf"], "--instance '-rf': not an EC2 instance type"),
        (["up", "--store", f"s3://b/{touch}\n"], "--store 's3://b/$(touch"),
        (["results", "../../etc", "--dest", "out"], "run id '../../etc'"),
        (["logs", f"../{touch}"], "run id '../$(touch"),
        (["cancel", "/etc/passwd"], "run id '/etc/passwd'"),
    ]
    for args, message in cases:
        code, err = run_cli(*args, capsys=capsys)
        lines = err.strip().splitlines()
        assert code == 2, (args, err)
        assert lines[-1].startswith("error: ") and message in err, (args, err)
    assert not marker.exists()
    assert sorted(p.name for p in offline.iterdir()) == ["home"]  # no runs/, no out/, no MARKER


# -- generated shell lines, run by a real sh ------------------------------------------------------------

HOSTILE_DIR = "d i r'\"$(touch MARKER)`touch MARKER`;touch MARKER\n-x"


def test_setup_script_quotes_the_venv_and_the_interpreter(tmp_path):
    """The venv script (infra/remote_setup.py) removes only its own folder, whatever its name, and
    never runs a word of launch.python."""
    from infra.remote_setup import _script

    for sibling in ("d", "i", "r'\"$(touch", "-x"):
        (tmp_path / sibling).mkdir()
        (tmp_path / sibling / "keep").write_text("x")
    venv = str(tmp_path / HOSTILE_DIR)
    os.makedirs(venv)
    # "true" is found by `command -v`, so the script reaches its `rm -rf`, "makes" a venv with it, and then
    # fails (exit 4) at the venv's own python, which `true` never made: the literal folder name is in the message
    res = subprocess.run(["sh", "-c", _script("true", venv, ["pip"], "digest")], cwd=tmp_path, capture_output=True,
                         text=True)
    assert res.returncode == 4 and f"{venv}/bin/python: not found" in res.stderr, res.stderr
    res = subprocess.run(["sh", "-c", _script("python3;touch MARKER", venv, [], "digest")], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 3 and "no interpreter found: tried python3;touch MARKER" in res.stderr
    assert not (tmp_path / "MARKER").exists()
    assert not os.path.exists(venv)  # the venv folder itself was the one removed
    assert all((tmp_path / s / "keep").exists() for s in ("d", "i", "r'\"$(touch", "-x"))


def test_jobs_command_quotes_any_remote_dir(tmp_path):
    from infra.activity import jobs_command

    d = tmp_path / HOSTILE_DIR
    (d / "jobs").mkdir(parents=True)
    (d / "jobs" / "run-1").write_text(f"run-1 {os.getpid()} x\n")
    res = subprocess.run(["sh", "-c", jobs_command(str(d))], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.split() == ["run-1"], res.stderr
    assert not (tmp_path / "MARKER").exists()


def test_spawn_refuses_an_environment_name_it_cannot_quote():
    from infra.ssh import Endpoint, SSHHost

    host = SSHHost(Endpoint("u", "127.0.0.1", 9), Path("/nonexistent"))
    with pytest.raises(ValueError, match="not a valid name"):
        host.spawn(["true"], cwd="/tmp", log="/tmp/x.log", env={"A;touch MARKER": "1"})


# -- the remote side: the real sshd ----------------------------------------------------------------------

def test_hostile_paths_through_the_real_sshd_stay_literal(module_sshd, tmp_path):
    """exec/run/spawn/put_tar/write_text and the workdir sync with a remote folder whose name holds every
    shell metacharacter: files land under that literal name, nothing runs, nothing else is touched."""
    import io
    import tarfile
    import time

    from infra.ssh import Endpoint, SSHHost
    from infra.sync import sync_workdir

    srv = module_sshd
    base = tmp_path / "remote"
    base.mkdir()
    (base / "d").mkdir()
    (base / "d" / "keep").write_text("x")
    root = str(base / HOSTILE_DIR)
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "mod.py").write_text("x = 1\n")
    with SSHHost(Endpoint(srv.user, srv.host, srv.port), srv.client_key, known_hosts=tmp_path / "kh") as host:
        res = host.run(["sh", "-c", "pwd > here; echo \"$1\"", "sh", "$(touch MARKER)"], cwd=str(base))
        assert res.returncode == 0 and res.stdout.strip() == "$(touch MARKER)"
        report = sync_workdir(host, project, root, python=sys.executable)
        assert report.files_sent == 1
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("extra.txt")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"ok"))
        buf.seek(0)
        host.put_tar(buf, root + "/sub")
        host.write_text(root + "/w.txt", "w")
        pid = host.spawn(["sh", "-c", "echo spawned"], cwd=root, log=root + "/logs/a b.log",
                         env={"PYTHONPATH": "$(touch MARKER)"})
        deadline = time.monotonic() + 30
        while host.is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert (Path(root) / "pkg" / "mod.py").read_text() == "x = 1\n"
    assert (Path(root) / "sub" / "extra.txt").read_text() == "ok"
    assert (Path(root) / "w.txt").read_text() == "w"
    assert (Path(root) / "logs" / "a b.log").read_text() == "spawned\n"
    assert (base / "here").read_text().strip() == str(base)
    assert (base / "d" / "keep").exists()
    login_dir = Path(pwd.getpwnam(srv.user).pw_dir)  # where a session starts (the tests' $HOME is another folder)
    assert not list(tmp_path.rglob("MARKER")) and not (login_dir / "MARKER").exists()
    assert sorted(p.name for p in base.iterdir()) == sorted(["d", "here", HOSTILE_DIR])
