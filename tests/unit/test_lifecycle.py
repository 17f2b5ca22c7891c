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


def test_a_recovered_attempt_is_followed_from_where_the_screen_stopped(monkeypatch):
    """A host lost a second after its epoch's checkpoint reached the store took that epoch's event with it before
    the launcher read it: the replacement's events (the store's copy cut back to the checkpoint, byte for byte the
    lost host's) are followed from where the screen stopped, so every epoch is shown once across attempts."""
    from launcher.lifecycle import RunSpec
    from launcher.targets import Attempt

    class LostOnce:
        def files(self, attempt, note):
            return attempt.run_dir

        def retrying(self, step):
            return step()

        def gone(self, attempt):
            return attempt.run_dir == "first"

        def close(self, attempt):
            pass

        def replacement(self, attempt):
            return self

    replacement = Attempt("r", [LocalHost()], "second", None, events_offset=300)  # its restored event's offset
    monkeypatch.setattr(lifecycle, "start", lambda target, spec, recover=None: replacement)
    followed = []

    def follow(files, offset, shown):
        followed.append((files, offset))
        if files == "first":
            shown(120)  # read up to the line before epoch 1's, then the host went
            return {"type": "run_end", "state": "lost", "reason": "the instance is gone"}
        shown(400)
        return {"type": "run_end", "state": "succeeded"}

    first = Attempt("r", [LocalHost()], "first", None, events_offset=0)
    end = lifecycle.attach(LostOnce(), first, follow, lambda msg: None, recover=RunSpec(config="c.yaml"))
    assert end is not None and end["state"] == "succeeded"
    assert followed == [("first", 0), ("second", 120)]
