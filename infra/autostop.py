#!/usr/bin/env python3
"""The autostop watcher: runs ON the instance and shuts it down once it has been idle long enough.

Copied to the instance by `up` before any project code is there, so it is ONE stdlib-only file
that never imports the project (infra/autostop_setup.py installs it). Idle means: no active run
(no jobs marker ``DIR/RUN_ID`` = "RUN_ID PID RUN_DIR" whose pid is alive) and no SSH session open
(a process titled "sshd: USER@TTY"). Every poll it writes its state as JSON (atomically) for
`status`; when idle for --idle seconds it runs the shutdown command, logs one line and exits.
The instance's InstanceInitiatedShutdownBehavior (stop or terminate) decides what AWS does then.

    python3 autostop.py --idle 1800 --jobs-dir ~/mnist-launch/jobs --state ~/.mnist-launch/autostop.json

MNIST_LAUNCH_SHUTDOWN_CMD replaces the shutdown (run with sh -c; tests use `touch FILE`);
MNIST_LAUNCH_AUTOSTOP_IGNORE_SSH=1 ignores SSH sessions (tests run it under a test sshd);
MNIST_LAUNCH_AUTOSTOP_PROC names the folder of processes to look at instead of /proc (tests give
each watcher one holding links to their own processes only: other tests' agents are not its business).
"""

import argparse
import json
import os
import subprocess
import sys
import time

SHUTDOWN_ENV = "MNIST_LAUNCH_SHUTDOWN_CMD"
IGNORE_SSH_ENV = "MNIST_LAUNCH_AUTOSTOP_IGNORE_SSH"
PROC_ENV = "MNIST_LAUNCH_AUTOSTOP_PROC"


def decide(idle_since, active, now, autostop_s):
    """The idle bookkeeping of one poll: -> (idle_since, idle_seconds, shut down now?).

    ``idle_since`` is when the idle stretch began (None while active); activity resets it.
    """
    if active:
        return None, 0.0, False
    since = now if idle_since is None or idle_since > now else idle_since  # a clock stepped back restarts it
    idle = now - since
    return since, idle, idle >= autostop_s


def pid_alive(pid):
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    except OverflowError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has finished
    except (OSError, IndexError):
        return True


def active_runs(jobs_dirs):
    """Run ids under ``jobs_dirs`` whose marker names a live pid."""
    found = []
    for d in jobs_dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(d, name)) as f:
                    parts = f.read().split()
                pid = int(parts[1])
            except (OSError, IndexError, ValueError):
                continue
            if pid_alive(pid):
                found.append(parts[0])
    return found


def ssh_sessions(proc_root="/proc"):
    """Open SSH sessions: processes titled "sshd: USER@pts/N" or "sshd: USER@notty" (OpenSSH >= 9.8: sshd-session)."""
    n = 0
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc_root, entry, "cmdline"), "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        for prefix in ("sshd: ", "sshd-session: "):
            if title.startswith(prefix):
                words = title[len(prefix):].split()
                # the session's first word is USER@TTY; the listener and "[priv]"/"[net]" helpers have no @ there
                if words and "@" in words[0]:
                    n += 1
                break
    return n


def write_state(path, state):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def shutdown_command():
    custom = os.environ.get(SHUTDOWN_ENV)
    if custom:
        return ["sh", "-c", custom]
    return ["shutdown", "-h", "now"] if os.geteuid() == 0 else ["sudo", "-n", "shutdown", "-h", "now"]


def log(msg):
    sys.stdout.write("%s autostop: %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), msg))
    sys.stdout.flush()


def run_agents(proc_root="/proc"):
    """Pids of mnist-launch agents (``python -m infra.agent``) running here, wherever their run folder
    is: a run under a launch.remote_dir the watcher was not told about still keeps the machine up."""
    pids = []  # type: list[int]  # a type comment: this file runs on whatever python3 the image has
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc_root, entry, "cmdline"), "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a == b"-m" and b == b"infra.agent" for a, b in zip(argv, argv[1:])):
            pids.append(int(entry))
    return pids


def main(argv=None):
    p = argparse.ArgumentParser(description="shut this machine down after it has been idle")
    p.add_argument("--idle", type=float, required=True, help="seconds idle before shutting down")
    p.add_argument("--jobs-dir", action="append", default=[], help="a folder of run markers (repeatable)")
    p.add_argument("--state", required=True, help="JSON state file, rewritten every poll")
    p.add_argument("--poll", type=float, default=30.0, help="seconds between checks")
    p.add_argument("--pid-file", help="write this process's pid here")
    args = p.parse_args(argv)
    dirs = [os.path.expanduser(d) for d in args.jobs_dir]
    state_path = os.path.expanduser(args.state)
    if args.pid_file:
        with open(os.path.expanduser(args.pid_file), "w") as f:
            f.write("%d\n" % os.getpid())
    ignore_ssh = os.environ.get(IGNORE_SSH_ENV, "") not in ("", "0")
    proc_root = os.environ.get(PROC_ENV) or "/proc"
    idle_since = None
    while True:
        now = time.time()
        runs = active_runs(dirs)
        agents = run_agents(proc_root)
        sessions = 0 if ignore_ssh else ssh_sessions(proc_root)
        idle_since, idle_s, fire = decide(idle_since, bool(runs) or bool(agents) or sessions > 0, now, args.idle)
        write_state(state_path, {"idle_since": idle_since, "idle_seconds": round(idle_s, 1), "autostop_s": args.idle,
                                 "updated_at": now, "poll_s": args.poll, "active_runs": runs, "agents": len(agents),
                                 "ssh_sessions": sessions})
        if fire:
            cmd = shutdown_command()
            log("idle for %.0fs (limit %.0fs): running %s" % (idle_s, args.idle, " ".join(cmd)))
            code = subprocess.call(cmd)
            if code != 0:
                log("shutdown command exited %d" % code)
                return 1
            return 0
        time.sleep(args.poll)


if __name__ == "__main__":
    sys.exit(main())
