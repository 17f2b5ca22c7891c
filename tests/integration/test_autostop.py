"""The autostop watcher (infra/autostop.py) run for real on this host with short durations, its
installer over a real sshd on 127.0.0.1, and `up --autostop` / `status` against moto.

The shutdown is replaced through MNIST_LAUNCH_SHUTDOWN_CMD (`touch FILE`); every watcher a test
starts is killed at its end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import autostop
from infra.autostop_setup import install_autostop
from infra.ssh import Endpoint, SSHHost

SCRIPT = Path(autostop.__file__)


def watchers(script: Path) -> list[int]:
    """Pids of live (not zombie) processes running ``script``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(script).encode() in cmd and autostop.pid_alive(int(entry)):
            pids.append(int(entry))
    return pids


def kill_all(script: Path) -> None:
    for pid in watchers(script):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def own_procs(tmp_path: Path, *pids: int) -> dict[str, str]:
    """The environment that makes a watcher look at ``pids`` (links to their /proc entries) instead of every
    process here: another test's agent, running at the same time, would keep it busy."""
    root = tmp_path / "proc"
    root.mkdir(exist_ok=True)
    for pid in pids:
        (root / str(pid)).symlink_to(f"/proc/{pid}")
    return {autostop.PROC_ENV: str(root)}


def wait_for(pred, timeout: float = 15.0, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


# --- the decision, without sleeping ------------------------------------------------------------


def test_decide_counts_idle_time_and_fires_at_the_limit():
    since, idle, fire = autostop.decide(None, False, 1000.0, 60)
    assert (since, idle, fire) == (1000.0, 0.0, False)
    since, idle, fire = autostop.decide(since, False, 1059.0, 60)
    assert (since, idle, fire) == (1000.0, 59.0, False)
    assert autostop.decide(since, False, 1060.0, 60) == (1000.0, 60.0, True)
    # activity resets the stretch; idle again starts from zero
    assert autostop.decide(since, True, 1061.0, 60) == (None, 0.0, False)
    assert autostop.decide(None, False, 1100.0, 60) == (1100.0, 0.0, False)
    # a clock stepped backwards restarts the count rather than firing early or never
    assert autostop.decide(2000.0, False, 1500.0, 60) == (1500.0, 0.0, False)


def test_ssh_sessions_are_sshd_user_at_tty_titles(tmp_path):
    titles = {"1": b"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups\0",
              "2": b"sshd: ubuntu [priv]\0", "3": b"sshd: ubuntu@pts/0\0", "4": b"sshd: root@notty\0\0\0",
              "5": b"sshd-session: ec2-user@pts/1\0", "6": b"python3\0-c\0sshd: x@y\0",
              "7": b"/usr/sbin/sshd\0-f\0/a@b\0"}
    for pid, title in titles.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(title)
    (tmp_path / "self").mkdir()
    assert autostop.ssh_sessions(str(tmp_path)) == 3


def test_any_running_agent_keeps_the_host_up_whatever_its_run_folder(tmp_path):
    titles = {"11": b"/home/u/x/venv/bin/python\0-m\0infra.agent\0--run-dir\0runs/a\0",
              "12": b"python3\0-c\0import infra.agent\0", "13": b"vim\0infra.agent\0", "14": b"python\0-m\0trainer\0"}
    for pid, title in titles.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(title)
    assert autostop.run_agents(str(tmp_path)) == [11]
    # and a real one: an agent process started here is found in /proc
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m", "infra.agent"])
    try:  # found within seconds: on a loaded machine /proc may show the new command line a moment late
        deadline = time.monotonic() + 20
        while proc.pid not in autostop.run_agents():
            assert time.monotonic() < deadline, f"agent {proc.pid} not found in /proc"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()


def test_a_real_ssh_session_is_seen(module_sshd, tmp_path):
    srv = module_sshd
    code = f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import autostop; print(autostop.ssh_sessions())"
    with SSHHost(Endpoint(srv.user, srv.host, srv.port), srv.client_key, known_hosts=tmp_path / "kh") as host:
        # the command runs under "sshd: USER@notty", which lives as long as the connection
        res = host.run([sys.executable, "-c", code], timeout=30)
        assert res.returncode == 0, res.stderr
        assert int(res.stdout) >= 1


def test_active_runs_reads_markers_with_live_pids(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (jobs / "r-live").write_text(f"r-live {sleeper.pid} /runs/r-live\n")
        dead = subprocess.Popen(["true"])
        dead.wait()
        (jobs / "r-dead").write_text(f"r-dead {dead.pid} /runs/r-dead\n")
        (jobs / "garbage").write_text("nonsense")
        assert autostop.active_runs([str(jobs), str(tmp_path / "missing")]) == ["r-live"]
    finally:
        sleeper.kill()
        sleeper.wait()


# --- the watcher as a process ------------------------------------------------------------------


def run_watcher(tmp_path: Path, idle: float, jobs: Path, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "MNIST_LAUNCH_SHUTDOWN_CMD": f"touch {tmp_path / 'shutdown'}",
           "MNIST_LAUNCH_AUTOSTOP_IGNORE_SSH": "1", **own_procs(tmp_path), **(env_extra or {})}
    return subprocess.Popen([sys.executable, str(SCRIPT), "--idle", str(idle), "--jobs-dir", str(jobs),
                             "--state", str(tmp_path / "state.json"), "--poll", "0.2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_watcher_shuts_down_after_idle_and_exits(tmp_path):
    proc = run_watcher(tmp_path, 1, tmp_path / "jobs")
    try:
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert (tmp_path / "shutdown").exists()
    assert out.count("\n") == 1 and "idle for" in out and "touch" in out
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["autostop_s"] == 1 and state["idle_seconds"] >= 1 and state["idle_since"] is not None


def test_watcher_keeps_a_busy_host_up_and_reports_its_state(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    # and an agent of its own (by its command line) that outlives the run's marker
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "infra.agent"])
    own_procs(tmp_path, agent.pid)
    proc = run_watcher(tmp_path, 0.5, jobs)
    try:
        (jobs / "r1").write_text(f"r1 {sleeper.pid} /runs/r1\n")
        time.sleep(2)  # four times the idle limit, all of it busy
        assert proc.poll() is None and not (tmp_path / "shutdown").exists()
        state = json.loads((tmp_path / "state.json").read_text())
        assert state["idle_since"] is None and state["idle_seconds"] == 0 and state["active_runs"] == ["r1"]
        assert state["agents"] == 1  # this test's agent: not every agent on the machine
        sleeper.kill()
        sleeper.wait()  # the run ends; its agent still runs: busy
        # a poll that saw no run but the agent, and counted the host busy (not idle since anything)
        assert wait_for(lambda: json.loads((tmp_path / "state.json").read_text()) | {"updated_at": 0}
                        == {**state, "active_runs": [], "updated_at": 0})
        assert proc.poll() is None and not (tmp_path / "shutdown").exists()
        agent.kill()
        agent.wait()  # the agent ends: idle from now, shut down half a second later
        assert proc.wait(timeout=15) == 0
        assert (tmp_path / "shutdown").exists()
    finally:
        sleeper.kill()
        agent.kill()
        proc.kill()
        proc.wait()


# --- the installer over a real sshd (no systemd here: the fallback path) -------------------------


@pytest.fixture
def ssh_host(module_sshd, tmp_path):
    srv = module_sshd
    with SSHHost(Endpoint(srv.user, srv.host, srv.port), srv.client_key, known_hosts=tmp_path / "kh") as host:
        yield host


def test_install_runs_one_watcher_that_fires_and_reinstall_replaces_it(ssh_host, tmp_path):
    rhome = tmp_path / "rhome"
    script = rhome / "autostop.py"
    jobs = tmp_path / "mnist-launch" / "jobs"
    jobs.mkdir(parents=True)
    flag = tmp_path / "shutdown"
    env = {"MNIST_LAUNCH_SHUTDOWN_CMD": f"touch {flag}", "MNIST_LAUNCH_AUTOSTOP_IGNORE_SSH": "1", **own_procs(tmp_path)}
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (jobs / "r1").write_text(f"r1 {sleeper.pid} /runs/r1\n")  # busy: it must not fire
        how = install_autostop(ssh_host, 1, remote_home_dir=str(rhome), jobs_dirs=[str(jobs)],
                               python=sys.executable, env=env, poll_s=0.2)
        assert how in ("process", "cron")
        assert script.read_text() == SCRIPT.read_text()
        assert wait_for(lambda: len(watchers(script)) == 1)
        [first] = watchers(script)
        assert int((rhome / "autostop.pid").read_text()) == first
        assert wait_for(lambda: (rhome / "autostop.json").exists())
        time.sleep(1.5)
        assert not flag.exists() and watchers(script) == [first]

        # `up` again: the old watcher goes, exactly one new one runs
        install_autostop(ssh_host, 1, remote_home_dir=str(rhome), jobs_dirs=[str(jobs)],
                         python=sys.executable, env=env, poll_s=0.2)
        assert wait_for(lambda: len(watchers(script)) == 1 and first not in watchers(script))
        [second] = watchers(script)

        sleeper.kill()
        sleeper.wait()  # idle from now on: it fires and exits
        assert wait_for(flag.exists)
        assert wait_for(lambda: watchers(script) == [])
        assert "idle for" in (rhome / "autostop.log").read_text()
        assert second not in watchers(script)
    finally:
        sleeper.kill()
        kill_all(script)


def test_install_off_removes_the_watcher(ssh_host, tmp_path):
    rhome = tmp_path / "rhome"
    script = rhome / "autostop.py"
    env = {"MNIST_LAUNCH_SHUTDOWN_CMD": f"touch {tmp_path / 'shutdown'}", "MNIST_LAUNCH_AUTOSTOP_IGNORE_SSH": "1",
           **own_procs(tmp_path)}
    try:
        install_autostop(ssh_host, 600, remote_home_dir=str(rhome), jobs_dirs=[str(tmp_path / "jobs")],
                         python=sys.executable, env=env, poll_s=0.2)
        assert wait_for(lambda: len(watchers(script)) == 1)
        assert wait_for(lambda: (rhome / "autostop.json").exists())
        assert install_autostop(ssh_host, None, remote_home_dir=str(rhome)) == "off"
        assert wait_for(lambda: watchers(script) == [])
        assert not (rhome / "autostop.json").exists() and not (rhome / "autostop.pid").exists()
        assert not (tmp_path / "shutdown").exists()
    finally:
        kill_all(script)


# --- `up --autostop`, `status`: moto in-process, the "instance" is the sshd on 127.0.0.1 -------------


@pytest.fixture
def cloud(tmp_path, monkeypatch, module_sshd):
    from moto import mock_aws

    from tests.support.aws_helpers import fake_aws_env

    fake_aws_env(monkeypatch, tmp_path / "home")
    rhome = tmp_path / "rhome"
    monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", module_sshd.endpoint)
    monkeypatch.setenv("MNIST_LAUNCH_AUTOSTOP_INSTALL", "1")
    monkeypatch.setenv("MNIST_LAUNCH_AUTOSTOP_HOME", str(rhome))
    monkeypatch.setenv("MNIST_LAUNCH_SHUTDOWN_CMD", f"touch {tmp_path / 'shutdown'}")
    monkeypatch.setenv("MNIST_LAUNCH_AUTOSTOP_IGNORE_SSH", "1")
    monkeypatch.setenv("MNIST_LAUNCH_AUTOSTOP_POLL", "0.2")
    try:
        with mock_aws():
            yield rhome
    finally:
        kill_all(rhome / "autostop.py")


def shutdown_behavior(instance_id: str) -> str:
    import boto3

    return boto3.client("ec2", region_name="us-east-1").describe_instance_attribute(
        InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior"
    )["InstanceInitiatedShutdownBehavior"]["Value"]


def test_up_installs_the_watcher_sets_the_shutdown_action_and_status_shows_it(cloud, module_sshd):
    from tests.support.aws_helpers import live, ubuntu_ami, up_args
    from tests.support.cli import invoke as cli

    rhome = cloud
    script = rhome / "autostop.py"
    ami = ubuntu_ami()
    out = cli(*up_args(ami, "--identity", str(module_sshd.client_key), "--autostop", "30m", "--autostop-terminate"))
    assert out.code == 0, out.stderr
    assert "terminates itself after 30m idle" in out.stderr
    [inst] = live()
    iid = inst["InstanceId"]
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert (tags["mnist-launch:autostop"], tags["mnist-launch:autostop-action"]) == ("30m", "terminate")
    assert shutdown_behavior(iid) == "terminate"
    assert wait_for(lambda: len(watchers(script)) == 1)
    assert wait_for(lambda: (rhome / "autostop.json").exists())
    assert json.loads((rhome / "autostop.json").read_text())["autostop_s"] == 1800

    out = cli("status", "--json")
    assert out.code == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert (row["autostop"], row["autostop_action"]) == ("30m", "terminate")
    assert isinstance(row["idle_s"], (int, float)) and row["idle_s"] >= 0 and row["jobs"] == []
    assert row["autostop_watcher"] == "running"
    out = cli("status")
    assert "30m, terminate" in out.stdout and "watcher" not in out.stdout

    # `up` again without the flag: back to stop, still one watcher
    first = watchers(script)
    out = cli(*up_args(ami, "--autostop", "45m"))
    assert out.code == 0, out.stderr
    assert shutdown_behavior(iid) == "stop"
    [inst] = live()
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert (tags["mnist-launch:autostop"], tags["mnist-launch:autostop-action"]) == ("45m", "stop")
    assert wait_for(lambda: len(watchers(script)) == 1 and watchers(script) != first)

    # off: a warning with the cost per day, and no watcher left
    out = cli(*up_args(ami, "--autostop", "off"))
    assert out.code == 0, out.stderr
    assert "warning: --autostop off" in out.stderr
    assert "~$13.01 per day (g4dn.xlarge on-demand, its IPv4 address and 100 GB gp3)" in out.stderr
    assert wait_for(lambda: watchers(script) == [])
    assert {t["Key"]: t["Value"] for t in live()[0]["Tags"]}["mnist-launch:autostop"] == "off"
    out = cli("status", "--json")
    [row] = json.loads(out.stdout)
    assert row["autostop"] == "off" and row["idle_s"] is None


def test_up_says_so_when_the_watcher_cannot_be_installed(cloud, module_sshd, monkeypatch):
    from tests.support.aws_helpers import ubuntu_ami, up_args
    from tests.support.cli import invoke as cli

    monkeypatch.setenv("MNIST_LAUNCH_AUTOSTOP_HOME", "/proc/no-such-place")
    out = cli(*up_args(ubuntu_ami(), "--identity", str(module_sshd.client_key)))
    assert out.code == 0, out.stderr  # the instance is up; the warning says what to do
    [line] = [ln for ln in out.stderr.splitlines() if "autostop watcher could not be installed" in ln]
    assert "will NOT stop itself when idle" in line and "run `mnist-launch up --name mnist` again" in line


def test_status_reads_jobs_and_the_watcher_state_from_one_answer():
    from infra.activity import STATE_MARK, parse_activity

    state = {"idle_since": 900.0, "idle_seconds": 100.0, "autostop_s": 1800, "updated_at": 1000.0, "poll_s": 30}
    assert parse_activity(f"r2\nr1\n{STATE_MARK}\n1010\n{json.dumps(state)}\n") == (["r1", "r2"], state)
    # not rewritten for many polls: the watcher died, its idle time means nothing
    jobs, stale = parse_activity(f"{STATE_MARK}\n5000\n{json.dumps(state)}")
    assert jobs == [] and stale["stale"] and stale["idle_seconds"] is None
    assert parse_activity(f"r1\n{STATE_MARK}\n1010\n") == (["r1"], None)  # no watcher
    assert parse_activity(f"{STATE_MARK}\n1010\n{{half") == ([], None)


@pytest.fixture
def cron_sshd(tmp_path_factory):
    """An sshd whose sessions find a `crontab` (a stand-in keeping the table in a file) first on PATH."""
    from tests.support.sshd_fixture import start_sshd, stop_sshd

    root = tmp_path_factory.mktemp("cron_sshd")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    table = root / "crontab.txt"
    (bin_dir / "crontab").write_text(
        f'#!/bin/sh\nif [ "$1" = "-l" ]; then cat {table} 2>/dev/null || {{ echo "no crontab" >&2; exit 1; }}; '
        f'elif [ -f "$1" ]; then cp "$1" {table}; else exit 2; fi\n')
    (bin_dir / "crontab").chmod(0o755)
    srv = start_sshd(root / "sshd", extra_config=(f"SetEnv PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin",))
    try:
        yield srv, table
    finally:
        stop_sshd(srv)


def test_fallback_survives_a_reboot_through_one_crontab_line(cron_sshd, tmp_path):
    srv, table = cron_sshd
    rhome = tmp_path / "rhome"
    script = rhome / "autostop.py"
    env = {"MNIST_LAUNCH_SHUTDOWN_CMD": f"touch {tmp_path / 'shutdown'}", "MNIST_LAUNCH_AUTOSTOP_IGNORE_SSH": "1",
           **own_procs(tmp_path)}
    table.write_text("0 3 * * * echo someone else's job\n")
    try:
        with SSHHost(Endpoint(srv.user, srv.host, srv.port), srv.client_key, known_hosts=tmp_path / "kh") as host:
            for _ in range(2):  # `up` twice: one line, one watcher
                how = install_autostop(host, 600, remote_home_dir=str(rhome), jobs_dirs=[str(tmp_path / "jobs")],
                                       python=sys.executable, env=env, poll_s=0.2)
                assert how == "cron"
            lines = table.read_text().splitlines()
            assert lines[0] == "0 3 * * * echo someone else's job"
            [line] = [ln for ln in lines if "mnist-launch-autostop" in ln]
            assert line.startswith("@reboot ") and str(script) in line
            assert wait_for(lambda: len(watchers(script)) == 1)

            # a reboot: every process gone, then cron runs the line
            kill_all(script)
            assert wait_for(lambda: watchers(script) == [])
            subprocess.run(["sh", "-c", line[len("@reboot "):]], check=True, timeout=30)
            assert wait_for(lambda: len(watchers(script)) == 1)

            assert install_autostop(host, None, remote_home_dir=str(rhome)) == "off"
            assert table.read_text().splitlines() == ["0 3 * * * echo someone else's job"]
            assert wait_for(lambda: watchers(script) == [])
    finally:
        kill_all(script)


def test_the_systemd_unit_starts_the_watcher_at_boot_as_root():
    from infra.autostop_setup import systemd_unit

    argv = ["python3", "/home/ubuntu/.mnist-launch/autostop.py", "--idle", "1800",
            "--jobs-dir", "/home/ubuntu/mnist-launch/jobs"]
    unit = systemd_unit(argv, {"MNIST_LAUNCH_SHUTDOWN_CMD": "touch /tmp/x y"},
                        "/home/ubuntu/.mnist-launch/autostop.log")
    lines = unit.splitlines()
    assert "ExecStart=/usr/bin/env python3 /home/ubuntu/.mnist-launch/autostop.py --idle 1800 " \
           "--jobs-dir /home/ubuntu/mnist-launch/jobs" in lines
    assert "Environment='MNIST_LAUNCH_SHUTDOWN_CMD=touch /tmp/x y'" in lines
    assert "WantedBy=multi-user.target" in lines and "Restart=on-failure" in lines
    assert not any(ln.startswith("User=") for ln in lines)  # root: `shutdown` needs no sudo
