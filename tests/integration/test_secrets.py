"""Secrets stay where they are: no AWS credential (nor where to find one) in launch.env, launch.env
values never recorded in any form of --set, never echoed in an error, no control characters in them;
the workdir sync leaves out files that usually hold secrets and says so; `mnist-launch ssh` forwards
neither the agent nor this machine's environment (checked on the real sshd)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import AWS_ENV_ALLOWED, REDACTED, config_to_yaml, load_config, redact_argv
from core.errors import ConfigError
from infra.host import LocalHost

SECRET = "hunter2-s3cr3t"


def write_config(tmp_path: Path, env: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "model3", "launch": {"env": env}}))
    return path


# -- launch.env ---------------------------------------------------------------------------------------

CREDENTIAL_NAMES = [
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_CREDENTIAL_EXPIRATION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_SOME_FUTURE_TOKEN",
    "aws_secret_access_key", "Aws_Access_Key_Id",
]


@pytest.mark.parametrize("name", CREDENTIAL_NAMES)
def test_every_aws_credential_variable_is_refused_by_name(tmp_path, name):
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, {name: SECRET}))
    msg = str(err.value)
    assert f"launch.env: {name} would copy your AWS credentials" in msg and SECRET not in msg
    with pytest.raises(ConfigError) as err:  # the same through --set, in either spelling
        load_config(write_config(tmp_path, {}), [f"launch.env.{name}={SECRET}"])
    assert name in str(err.value) and SECRET not in str(err.value)


def test_plain_aws_settings_and_other_variables_are_allowed(tmp_path):
    env = {**{k: "x" for k in AWS_ENV_ALLOWED}, "HF_TOKEN": SECRET, "MY_AWS_THING": "1"}
    assert load_config(write_config(tmp_path, env)).launch.env == env
    assert SECRET not in config_to_yaml(load_config(write_config(tmp_path, env)))


@pytest.mark.parametrize("value", [f"{SECRET}\nX=1", f"{SECRET}\rX", f"{SECRET}\x00", f"{SECRET}\x1b[2J",
                                   f"a\t{SECRET}", f"{SECRET}\x7f"])
def test_control_characters_in_a_value_are_refused_by_name_never_echoed(tmp_path, value):
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, {"TOKEN": value}))
    msg = str(err.value)
    assert "launch.env: the value of TOKEN holds a control character" in msg
    assert SECRET not in msg and "\n" not in msg


def test_a_launch_env_that_is_not_a_mapping_is_not_echoed(tmp_path):
    for override in [f"launch.env={SECRET}", f"launch.env=[{SECRET}]", f"launch.env.{SECRET}"]:
        with pytest.raises(ConfigError) as err:
            load_config(write_config(tmp_path, {}), [override])
        assert SECRET not in str(err.value), str(err.value)


def test_every_form_of_set_for_launch_env_is_redacted():
    argv = ["train", "c.yaml",
            "--set", f"launch.env.TOKEN={SECRET}",
            f"--set=launch.env.TOKEN={SECRET}",
            "--set", f"launch.env={{TOKEN: {SECRET}}}",
            f"--set=launch.env={{TOKEN: {SECRET}}}",
            "--set", f" launch.env.TOKEN ={SECRET}",
            "--set", f"Launch.Env.TOKEN={SECRET}",
            "--set", "train.epochs=3", "--set=train.seed=2"]
    out = redact_argv(argv)
    assert SECRET not in " ".join(out)
    assert out == ["train", "c.yaml", "--set", f"launch.env.TOKEN={REDACTED}", f"--set=launch.env.TOKEN={REDACTED}",
                   "--set", f"launch.env={REDACTED}", f"--set=launch.env={REDACTED}",
                   "--set", f" launch.env.TOKEN ={REDACTED}", "--set", f"Launch.Env.TOKEN={REDACTED}",
                   "--set", "train.epochs=3", "--set=train.seed=2"]


def test_the_remote_run_records_its_command_line_redacted(monkeypatch):
    from launcher.lifecycle import run_argv as _argv

    monkeypatch.setattr(sys, "argv", ["mnist-launch", "train", "c.yaml", f"--set=launch.env.K={SECRET}",
                                      "--set", f"launch.env={{K: {SECRET}}}"])
    assert SECRET not in json.dumps(_argv())


class RecordingHost(LocalHost):
    """This machine, except that the agent is not started: what matters here is what was recorded."""

    def spawn(self, argv, cwd, log, env=None):
        self.spawned = argv
        return os.getpid()


def test_meta_json_and_config_yaml_of_a_run_keep_no_env_value(tmp_path, tiny_mnist, monkeypatch):
    from launcher.orchestrator import LocalRequest, start_run

    overrides = [f"launch.env.TOKEN={SECRET}", f"launch.env={{OTHER: {SECRET}, TOKEN: {SECRET}}}"]
    monkeypatch.setattr(sys, "argv", ["mnist-launch", "train", "configs/model3.yaml", "--local",
                                      "--set", overrides[0], f"--set={overrides[1]}"])
    run = start_run(LocalRequest(config="configs/model3.yaml", overrides=overrides, store=str(tmp_path / "s"),
                                 data_dir=str(tiny_mnist), run_id="r1"), host=RecordingHost())
    recorded = "".join(p.read_text() for p in run.run_dir.rglob("*") if p.is_file())
    assert SECRET not in recorded
    assert yaml.safe_load((run.run_dir / "config.yaml").read_text())["launch"]["env"] == {"OTHER": REDACTED,
                                                                                          "TOKEN": REDACTED}


# -- the workdir sync leaves likely secrets out ----------------------------------------------------------

SECRET_FILES = [".env", ".env.local", "deploy/server.pem", "tls.key", "cert.p12", "id_rsa", "keys/id_ed25519",
                "id_ecdsa.pub", ".aws/credentials", ".ssh/config", "sub/.netrc"]


def test_sync_leaves_out_likely_secrets_and_says_which(tmp_path):
    from infra.sync import sync_workdir

    project, remote = tmp_path / "project", tmp_path / "remote"
    for rel in SECRET_FILES + ["train.py", "keys/README.md", "configs/a.yaml", "notes.env.md"]:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(SECRET if rel in SECRET_FILES else "ok\n")
    (project / ".gitignore").write_text("!tls.key\n")  # a negation in .gitignore does not bring a secret back
    report = sync_workdir(LocalHost(), project, str(remote), python=sys.executable)
    sent = sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file())
    assert sent == [".gitignore", "configs/a.yaml", "keys/README.md", "notes.env.md", "train.py"]
    assert report.left_out == sorted([".aws/", ".env", ".env.local", ".ssh/", "cert.p12", "deploy/server.pem",
                                      "id_ecdsa.pub", "id_rsa", "keys/id_ed25519", "sub/.netrc", "tls.key"])
    summary = report.summary()
    assert "sync: left out 11 likely secrets (.aws/, .env, .env.local, .ssh/, cert.p12, deploy/server.pem, " in summary
    assert "and 3 more) — to send one, add a '!NAME' line to .mnist-launch-ignore" in summary

    # listed explicitly in .mnist-launch-ignore: sent, and no longer reported
    (project / ".mnist-launch-ignore").write_text("!.env.local\n!deploy/server.pem\n")
    report = sync_workdir(LocalHost(), project, str(remote), python=sys.executable)
    assert (remote / ".env.local").read_text() == SECRET and (remote / "deploy" / "server.pem").exists()
    assert ".env.local" not in report.left_out and "deploy/server.pem" not in report.left_out
    assert not (remote / ".env").exists() and not (remote / ".aws").exists()


def test_sync_never_deletes_a_secret_file_that_lives_only_on_the_host(tmp_path):
    from infra.sync import sync_workdir

    project, remote = tmp_path / "project", tmp_path / "remote"
    project.mkdir()
    (project / "a.py").write_text("x\n")
    remote.mkdir()
    (remote / ".env").write_text("HOST_ONLY=1\n")  # put there by hand on the instance
    report = sync_workdir(LocalHost(), project, str(remote), python=sys.executable)
    assert (remote / ".env").read_text() == "HOST_ONLY=1\n" and report.files_deleted == 0
    assert report.left_out == [] and "left out" not in report.summary()


# -- mnist-launch ssh ----------------------------------------------------------------------------------

def _instance(user: str):
    from infra.aws import InstanceInfo

    return InstanceInfo(id="i-0123456789abcdef0", name="mnist", region="us-east-1", instance_type="g4dn.xlarge",
                        state="running", spot=False, launch_time=None, public_ip="127.0.0.1", az="us-east-1a",
                        image_id="ami-1", key_name=None, user=user)


def test_ssh_argv_forwards_nothing_and_ssh_env_keeps_no_secret(tmp_path, monkeypatch):
    from launcher import cluster

    monkeypatch.setenv("MNIST_LAUNCH_HOME", str(tmp_path / "home"))
    env = cluster.ssh_env({"PATH": "/usr/bin", "HOME": "/home/u", "TERM": "xterm", "AWS_SECRET_ACCESS_KEY": SECRET,
                           "AWS_PROFILE": "prod", "SSH_AUTH_SOCK": "/tmp/agent.sock", "GITHUB_TOKEN": SECRET,
                           "LANG": "C.UTF-8"})
    assert env == {"PATH": "/usr/bin", "HOME": "/home/u", "TERM": "xterm", "LANG": "C.UTF-8"}


def test_ssh_on_the_real_sshd_sends_no_environment_and_no_agent(tmp_path, monkeypatch):
    """A server that would accept every variable (AcceptEnv *) and agent forwarding receives neither.
    The control: the same ssh with SendEnv does deliver the variable, so the check can fail."""
    from launcher import cluster
    from launcher.cluster import access
    from tests.support.sshd_fixture import start_sshd, stop_sshd

    srv = start_sshd(tmp_path / "sshd", ("AcceptEnv *", "AllowAgentForwarding yes"))
    try:
        monkeypatch.setenv("MNIST_LAUNCH_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", srv.endpoint)
        monkeypatch.setattr(access, "running_instance", lambda name, region: _instance(srv.user))
        monkeypatch.setattr(access, "login_key", lambda inst, name, identity: srv.client_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        monkeypatch.setenv("LC_MNIST_SECRET", SECRET)  # LC_* is what a default ssh_config sends
        agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True)
        sock = next((part.split("=", 1)[1] for part in agent.stdout.replace(";", "\n").split()
                     if part.startswith("SSH_AUTH_SOCK=")), None)
        pid = next((part.split("=", 1)[1] for part in agent.stdout.replace(";", "\n").split()
                    if part.startswith("SSH_AGENT_PID=")), None)
        if sock:
            monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        out = tmp_path / "remote-env"
        try:
            argv = cluster.ssh_argv("mnist", None, None, ["sh", "-c", f"env > {out}"])
            for opt in ("-a", "-x", "ForwardAgent=no", "ForwardX11=no", "ClearAllForwardings=yes",
                        "IdentityAgent=none"):
                assert opt in argv
            assert argv[argv.index("-F") + 1] == "/dev/null" and not any("SendEnv" in a or "SetEnv" in a for a in argv)
            code = cluster.ssh("mnist", None, None, ["sh", "-c", f"env > {out}"])
            assert code == 0
            remote_env = out.read_text()
            assert SECRET not in remote_env and "SSH_AUTH_SOCK" not in remote_env
            # the control: this server takes what a client sends
            control = [a for a in argv if a != "/dev/null" and a != "-F"]
            control[1:1] = ["-o", "SendEnv=LC_MNIST_SECRET"]
            subprocess.run(control, env=dict(os.environ), check=True, timeout=60)
            assert SECRET in out.read_text()
        finally:
            if pid:
                subprocess.run(["kill", pid], check=False)
    finally:
        stop_sshd(srv)
