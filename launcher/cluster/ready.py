"""Waiting until a cluster's instances can run a job: running -> EC2 status checks -> an SSH banner -> a
real command over SSH, for one instance with a line per phase, or for every node of a cluster at once
under one line that says where each node is. The first node that fails stops the others' waits.

    inst = wait_until_ready(provider, outcome.instance, key, 900, True, console, 3.0)
    insts = wait_all_ready(provider, outcome.instances, key, 900, True, console, 3.0)
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from rich.console import Console

from core.errors import AWSError, SSHError
from infra.aws import AWSProvider, Backoff, InstanceInfo
from infra.ssh import HostKeyChangedError, KeyRefusedError, SSHHost, endpoint_for, wait_for_banner
from launcher.cluster.output import phase

# a phase of the wait: a label in, a context whose value is called with progress details on each poll
Phases = Callable[[str], AbstractContextManager[Callable[[str], None]]]


class _Abandoned(Exception):
    """Another node failed: this node's wait stops at its next poll."""


def wait_until_ready(provider: AWSProvider, inst: InstanceInfo, key: Path, timeout_s: float,
                     status_checks: bool, console: Console, poll_s: float,
                     phases: Optional[Phases] = None) -> InstanceInfo:
    """``phases``: how each phase is shown (default: a spinner and a ✓ line each, on ``console``)."""
    deadline = time.monotonic() + timeout_s
    shown: Phases = phases or (lambda label: phase(console, label))

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    with shown(f"instance {inst.id} running") as tick:
        inst = provider.wait_state(inst.id, "running", left(), tick=lambda i: tick(i.state))
    if status_checks:
        backoff = Backoff(poll_s)
        with shown("status checks") as tick:
            while not provider.status_checks_ok(inst.id):
                if time.monotonic() > deadline:
                    raise AWSError(f"{inst.id} status checks not ok after {timeout_s:.0f}s — "
                                   "check the EC2 console or raise --timeout")
                tick("")
                backoff.sleep()
    ep = endpoint_for(inst.public_ip, inst.user, node=inst.node)
    backoff = Backoff(poll_s)
    with shown(f"SSH banner from {ep.host}:{ep.port}") as tick:
        while not wait_for_banner(ep.host, ep.port, timeout_s=min(5.0, left())):
            if time.monotonic() > deadline:
                raise SSHError(f"no SSH answer from {ep.host}:{ep.port} after {timeout_s:.0f}s — "
                               "check --ssh-cidr is your address, or raise --timeout")
            tick("")
            backoff.sleep()
    backoff = Backoff(poll_s)
    with shown(f"SSH login as {ep.user}") as tick:
        while True:
            try:
                with SSHHost(ep, key, alias=inst.id) as host:
                    res = host.run(["true"], timeout=30)
                if res.returncode == 0:
                    break
                last = f"`true` exited {res.returncode}"
            except (HostKeyChangedError, KeyRefusedError):
                raise  # will not fix itself
            except SSHError as err:
                last = str(err)
            if time.monotonic() > deadline:
                raise SSHError(f"SSH login to {ep} kept failing for {timeout_s:.0f}s ({last}) — "
                               "raise --timeout or check the image")
            tick("")
            backoff.sleep()
    return inst


def wait_all_ready(provider: AWSProvider, insts: list[InstanceInfo], key: Path, timeout_s: float,
                   status_checks: bool, console: Console, poll_s: float) -> list[InstanceInfo]:
    """Every node ready, waited for at once (one thread each); in the order given. One node is
    ``wait_until_ready`` as ever. The first failure is raised once the other waits have stopped."""
    if len(insts) == 1:
        return [wait_until_ready(provider, insts[0], key, timeout_s, status_checks, console, poll_s)]
    where = {i.node: "starting" for i in insts}  # each thread writes its own node's entry only
    abandon = threading.Event()
    with phase(console, f"{len(insts)} nodes ready") as tick:
        def show() -> None:
            tick(", ".join(f"node {n}: {w}" for n, w in sorted(dict(where).items())))

        def phases_of(node: int) -> Phases:
            @contextmanager
            def quiet(label: str) -> Iterator[Callable[[str], None]]:
                def poll(_detail: str) -> None:
                    if abandon.is_set():
                        raise _Abandoned()
                    show()

                where[node] = label
                poll("")
                yield poll

            return quiet

        def one(inst: InstanceInfo) -> InstanceInfo:
            ready = wait_until_ready(provider, inst, key, timeout_s, status_checks, console, poll_s,
                                     phases=phases_of(inst.node))
            where[inst.node] = "ready"
            show()
            return ready

        with ThreadPoolExecutor(max_workers=min(16, len(insts))) as pool:
            futures = [pool.submit(one, i) for i in insts]
            try:
                wait_futures(futures, return_when=FIRST_EXCEPTION)
            finally:  # a node failed, all are ready, or ^C: any wait still going stops at its next poll
                abandon.set()
        failed = [f.exception() for f in futures if f.exception() is not None]
        first = next((e for e in failed if not isinstance(e, _Abandoned)), None)
        if first is not None:
            raise first
    return [f.result() for f in futures]
