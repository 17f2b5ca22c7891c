"""Targets: where a run's attempts go. ``launcher/lifecycle.py`` is written once over this interface.

A target supplies the host(s), the run's paths on them and the store; it prepares the hosts
(code, data, environment), starts the agent, and finds a run again for ``logs`` and ``cancel``.
``targets/local.py`` is this machine (one node, or several nodes on it), ``targets/ec2.py`` one EC2
instance or a multi-node cluster; a multi-node attempt lists its workers after the head in ``Attempt.hosts``,
their run folders in ``Attempt.node_dirs``.

    attempt = lifecycle.start(LocalTarget("."), RunSpec(config="configs/model3.yaml"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, TypeVar

from core.config import Config
from infra.host import Host
from infra.store import RunFiles

T = TypeVar("T")


@dataclass
class Attempt:
    """One start of a run on a target (a resume or a recovery is a new attempt of the same run)."""

    run_id: str
    hosts: list[Host]  # hosts[0] runs the agent; a multi-node target puts its workers after it
    run_dir: str  # the run's folder on hosts[0]
    cfg: Optional[Config]  # None for a run found again (logs, cancel): its config is the run's own
    store: Optional[str] = None  # the store URI the run's artifacts end in
    agent_pid: Optional[int] = None  # the spawned agent's pid, known before it writes status.json
    events_offset: int = 0  # where this attempt's events begin (what came before was shown already)
    info: dict[str, Any] = field(default_factory=dict)  # what the target knows: cluster, instance, timings
    # multi-node: the run's folder on each host, in rank order (node_dirs[0] is run_dir); [] for one node
    node_dirs: list[str] = field(default_factory=list)

    @property
    def host(self) -> Host:
        return self.hosts[0]

    def nodes(self) -> list[tuple[int, Host, str]]:
        """(rank, host, run folder) of every node; one for a single-node run."""
        dirs = self.node_dirs or [self.run_dir]
        return [(rank, host, d) for rank, (host, d) in enumerate(zip(self.hosts, dirs))]


class Target(Protocol):
    """Where runs go: the lifecycle's only view of this machine, an instance or a cluster."""

    where: str  # for messages, after "run X already exists": "in /path/runs", "on cluster mnist"

    def load_config(self, config: str, overrides: list[str]) -> Config:
        """A new run's config, with the target's own flags applied and checked."""
        ...

    def saved_config(self, run_id: str) -> tuple[str, str]:
        """(config.yaml text, where it was read) of an existing run, for ``--resume``; RunError if none."""
        ...

    def prepare(self, run_id: str, cfg: Config, data_dir: Optional[str], restart: bool) -> Attempt:
        """The hosts ready to run ``run_id``: code, data and environment in place; nothing of the run written."""
        ...

    def exists(self, attempt: Attempt) -> bool:
        """Whether a run of that id is there already (a new run never overwrites one)."""
        ...

    def check_resumable(self, run_id: str) -> None:
        """RunError unless a complete checkpoint to resume from is where the agent will look."""
        ...

    def write_run(self, attempt: Attempt, config_yaml: str, meta: dict[str, Any], resumed: Optional[dict[str, Any]],
                  restart: bool) -> None:
        """Write the run's own files into its folder before the agent starts: config.yaml, and meta.json for a
        new run (``resumed``: a note of this resume added to the run's meta.json where the target keeps it)."""
        ...

    def spawn_agent(self, attempt: Attempt, restart: bool) -> int:
        """Start the agent (exactly once) and return its pid; ``restart``: it continues from a checkpoint."""
        ...

    def files(self, attempt: Attempt, note: Callable[[str], None]) -> RunFiles:
        """The run's files as the agent writes them, for a follower."""
        ...

    def retrying(self, step: Callable[[], T]) -> T:
        """Run an idempotent step against the hosts, again after a dropped connection."""
        ...

    def gone(self, attempt: Attempt) -> bool:
        """Whether the attempt's hosts are gone for good (terminated, reclaimed): the run is lost."""
        ...

    def close(self, attempt: Attempt) -> None:
        """Let go of the attempt's connections (the run goes on)."""
        ...

    def replacement(self, attempt: Attempt) -> Optional["Target"]:
        """A target to recover a lost attempt on (new hosts in place of the gone ones); None: not here."""
        ...

    def locate(self, run_id: str) -> Optional[Attempt]:
        """An existing run of this target (its hosts connected), for ``logs`` and ``cancel``; None if not one."""
        ...
