"""The lifecycle's own decisions over the local target, with the agent's start recorded instead of run
(launcher/lifecycle.py): a resume is refused while the last attempt's agent lives, and one whose agent died
unheard is recorded as failed before the new attempt starts."""

import json
import subprocess

import pytest

from core.errors import RunError
from core.runstate import StatusWriter
from infra.host import LocalHost
from launcher import lifecycle
from launcher.targets.local import LocalTarget


class RecordingHost(LocalHost):
    """This machine, except that the agent is not started: its argv is kept."""

    spawned: list[list[str]]

    def spawn(self, argv, cwd, log, env=None):
        self.spawned = [*getattr(self, "spawned", []), argv]
        return 4242


@pytest.fixture
def started(tmp_path, tiny_mnist):
    host = RecordingHost()
    target = LocalTarget(str(tmp_path / "s"), host=host)
    attempt = lifecycle.start(target, lifecycle.RunSpec(config="configs/model3.yaml", run_id="r1",
                                                        data_dir=str(tiny_mnist)))
    ckpt = tmp_path / "s" / "runs" / "r1" / "checkpoints" / "epoch_001"
    ckpt.mkdir(parents=True)
    (ckpt / "checkpoint.json").write_text(json.dumps({"epoch": 1}))
    return target, attempt, host, tiny_mnist


def test_a_new_run_starts_its_agent_once_with_status_starting(started):
    target, attempt, host, _data = started
    assert attempt.agent_pid == 4242 and len(host.spawned) == 1 and "--resume" not in host.spawned[0]
    assert json.loads(open(f"{attempt.run_dir}/status.json").read())["state"] == "starting"
    with pytest.raises(RunError, match="run 'r1' already exists in .*/runs — pick another --run-id or --resume it"):
        lifecycle.start(target, lifecycle.RunSpec(config="configs/model3.yaml", run_id="r1", data_dir=str(_data)))


def test_resume_is_refused_while_the_agent_lives_and_settles_one_that_died(started):
    target, attempt, host, data = started
    status = StatusWriter.for_path(f"{attempt.run_dir}/status.json")
    agent = subprocess.Popen(["sleep", "60"])  # stands in for the last attempt's agent
    try:
        status.update("running", agent_pid=agent.pid)
        with pytest.raises(RunError, match="run 'r1' is still running — follow it with"):
            lifecycle.start(target, lifecycle.RunSpec(resume="r1", data_dir=str(data)))
    finally:
        agent.kill()
        agent.wait()
    again = lifecycle.start(target, lifecycle.RunSpec(resume="r1", data_dir=str(data),
                                                      overrides=["train.keep_checkpoints=2"]))
    assert "--resume" in host.spawned[-1] and again.agent_pid == 4242
    assert status.read()["state"] == "starting"  # running -> failed (settled) -> starting: each step allowed
    meta = json.loads(open(f"{attempt.run_dir}/meta.json").read())
    assert meta["resumes"][0]["overrides"] == ["train.keep_checkpoints=2"]


def test_resume_without_a_complete_checkpoint_does_nothing(tmp_path, tiny_mnist):
    host = RecordingHost()
    target = LocalTarget(str(tmp_path / "s"), host=host)
    lifecycle.start(target, lifecycle.RunSpec(config="configs/model3.yaml", run_id="r2", data_dir=str(tiny_mnist)))
    StatusWriter.for_path(tmp_path / "s" / "runs" / "r2" / "status.json").update("running", agent_pid=1)
    StatusWriter.for_path(tmp_path / "s" / "runs" / "r2" / "status.json").update("failed")
    with pytest.raises(RunError, match="run 'r2' has no complete checkpoint to resume from"):
        lifecycle.start(target, lifecycle.RunSpec(resume="r2", data_dir=str(tiny_mnist)))
    assert len(host.spawned) == 1


def test_cancel_of_a_finished_run_returns_its_status_and_signals_nothing(started):
    target, attempt, _, _ = started
    status = StatusWriter.for_path(f"{attempt.run_dir}/status.json")
    status.update("running", agent_pid=999999999)
    status.update("succeeded", exit_code=0)
    assert lifecycle.cancel(target, "r1")["state"] == "succeeded"
    with pytest.raises(RunError, match="run 'ghost' not found in .*runs"):
        lifecycle.cancel(target, "ghost")
