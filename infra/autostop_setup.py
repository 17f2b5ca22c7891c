"""Install (or remove) the autostop watcher (infra/autostop.py) on a host, over its Host interface.

With systemd and root or sudo: a unit /etc/systemd/system/mnist-launch-autostop.service (enabled,
restarted), so it survives reboots. Otherwise: an ``@reboot`` crontab line when crontab exists, and
the watcher started now, detached. A previous watcher (pid file) is stopped first, so installing
twice leaves one; ``autostop_s=None`` ('off') removes it.

    install_autostop(host, 1800, jobs_dirs=["~/mnist-launch/jobs"])  # -> "systemd" | "cron" | "process" | "off"
"""

from __future__ import annotations

import io
import shlex
from pathlib import Path
from typing import Optional, Sequence

from core.errors import SSHError
from infra.host import Completed
from infra.ssh import SSHHost

SCRIPT = (Path(__file__).resolve().parent / "autostop.py").read_text()
UNIT = "mnist-launch-autostop.service"
CRON_MARK = "# mnist-launch-autostop"
STATE_FILE = "autostop.json"


def _abs(path: str, home: str) -> str:
    if path == "~":
        return home
    return f"{home}/{path[2:]}" if path.startswith("~/") else path


def _probe(host: SSHHost) -> dict[str, str]:
    res = host.exec(
        'echo "home=$HOME"; echo "uid=$(id -u)"; echo "user=$(id -un)"; '
        's=$(systemctl is-system-running 2>/dev/null); echo "systemd=$s"; '
        'command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && echo sudo=yes; '
        'command -v crontab >/dev/null 2>&1 && echo cron=yes; true', timeout=60)
    if res.returncode != 0:
        raise SSHError(f"{host.name}: could not inspect the host for autostop: {res.stderr.strip()[:200]}")
    return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)


def _crontab_update(line: str = "") -> str:
    """Shell: the user's crontab without our line (plus ``line``), read in full into a file before it is installed."""
    add = f"echo {shlex.quote(line)} >> \"$t\"; " if line else ""
    return (f"t=$(mktemp) && {{ crontab -l 2>/dev/null | grep -v -F {shlex.quote(CRON_MARK)} > \"$t\"; {add}"
            f"crontab \"$t\"; rc=$?; rm -f \"$t\"; [ $rc = 0 ]; }}")


def systemd_unit(argv: Sequence[str], env: dict[str, str], log: str) -> str:
    """The unit file: runs as root (so the shutdown needs no sudo), restarted if it fails, started at boot."""
    exe = argv[0] if argv[0].startswith("/") else f"/usr/bin/env {argv[0]}"
    lines = ["[Unit]", "Description=mnist-launch autostop: shut down after the instance is idle",
             "After=network.target", "", "[Service]",
             *(f"Environment={shlex.quote(f'{k}={v}')}" for k, v in env.items()),
             f"ExecStart={exe} {shlex.join(argv[1:])}", f"StandardOutput=append:{log}", f"StandardError=append:{log}",
             "Restart=on-failure", "RestartSec=60", "", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def _check(host: SSHHost, res: Completed, what: str) -> None:
    if res.returncode != 0:
        raise SSHError(f"{host.name}: autostop: {what} failed: {(res.stderr or res.stdout).strip()[:200]}")


def install_autostop(host: SSHHost, autostop_s: Optional[float], remote_home_dir: str = "~/.mnist-launch",
                     jobs_dirs: Sequence[str] = ("~/mnist-launch/jobs",), python: str = "python3",
                     env: Optional[dict[str, str]] = None, poll_s: float = 30.0) -> str:
    """Install the watcher (idle limit ``autostop_s`` seconds) or, with None, remove it; says how."""
    info = _probe(host)
    home = info.get("home") or "~"
    d = _abs(remote_home_dir.rstrip("/"), home)
    script, pid_file, state, log = f"{d}/autostop.py", f"{d}/autostop.pid", f"{d}/{STATE_FILE}", f"{d}/autostop.log"
    root = info.get("uid") == "0"
    sudo = "" if root else "sudo -n "
    systemd = (info.get("systemd") in ("running", "degraded", "starting", "initializing")
               and (root or info.get("sudo") == "yes"))
    cron = info.get("cron") == "yes"

    # the previous watcher, whichever way it was started: one watcher per host
    stop_old = (f"pid=$(cat {shlex.quote(pid_file)} 2>/dev/null) && "
                "grep -q autostop /proc/\"$pid\"/cmdline 2>/dev/null && "
                "{ kill \"$pid\"; for i in $(seq 50); do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.1; done; }; "
                f"rm -f {shlex.quote(pid_file)}; true")
    if systemd:
        stop_old = f"{sudo}systemctl disable --now {UNIT} >/dev/null 2>&1; {stop_old}"
    if cron:
        stop_old += f"; {_crontab_update()} 2>/dev/null; true"
    _check(host, host.exec(stop_old, timeout=60), "stopping the previous watcher")
    if autostop_s is None:
        if systemd:
            host.exec(f"{sudo}rm -f /etc/systemd/system/{UNIT}; {sudo}systemctl daemon-reload; true", timeout=60)
        host.exec(f"rm -f {shlex.quote(state)}", timeout=60)
        return "off"

    host.write_text(script, SCRIPT, 0o755)
    argv = [python, script, "--idle", f"{autostop_s:g}", "--state", state, "--poll", f"{poll_s:g}",
            "--pid-file", pid_file]
    for j in jobs_dirs:
        argv += ["--jobs-dir", _abs(j, home)]
    env = dict(env or {})
    if systemd:
        res = host.exec(f"{sudo}tee /etc/systemd/system/{UNIT} >/dev/null && {sudo}systemctl daemon-reload && "
                        f"{sudo}systemctl enable {UNIT} >/dev/null 2>&1 && {sudo}systemctl restart {UNIT}",
                        stdin=io.BytesIO(systemd_unit(argv, env, log).encode()), timeout=120)
        _check(host, res, "installing the systemd unit")
        return "systemd"
    if cron:
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        line = (f"@reboot cd {shlex.quote(d)} && {'env ' + envs + ' ' if envs else ''}setsid nohup {shlex.join(argv)} "
                f">> {shlex.quote(log)} 2>&1 < /dev/null & {CRON_MARK}")
        res = host.exec(_crontab_update(line), timeout=60)
        _check(host, res, "adding the @reboot crontab line")
    pid = host.spawn(argv, cwd=d, log=log, env=env)
    host.write_text(pid_file, f"{pid}\n")
    return "cron" if cron else "process"
