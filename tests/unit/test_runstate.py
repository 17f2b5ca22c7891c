"""The run state: its transitions, and the one writer of status.json (core/runstate.py)."""

import json
from pathlib import Path

import pytest

from core.runstate import ACTIVE, TERMINAL, RunState, StatusWriter, TransitionError, check_transition, parse_state


def test_terminal_and_active_partition_the_states():
    assert TERMINAL == {"succeeded", "failed", "cancelled", "preempted", "lost"}
    assert ACTIVE == {"starting", "running"}
    assert "lost" in TERMINAL and "succeeded" in TERMINAL  # plain strings: what json.loads gives
    assert {s.value for s in RunState} == TERMINAL | ACTIVE


@pytest.mark.parametrize("old,new", [
    (None, RunState.STARTING), (None, RunState.RUNNING), (RunState.STARTING, RunState.RUNNING),
    (RunState.STARTING, RunState.FAILED), (RunState.RUNNING, RunState.SUCCEEDED),
    (RunState.RUNNING, RunState.PREEMPTED), (RunState.RUNNING, RunState.CANCELLED), (RunState.RUNNING, RunState.LOST),
    (RunState.PREEMPTED, RunState.STARTING), (RunState.LOST, RunState.STARTING),
    (RunState.SUCCEEDED, RunState.STARTING),
    (RunState.RUNNING, RunState.RUNNING),
])
def test_allowed_transitions(old, new):
    check_transition(old, new)


@pytest.mark.parametrize("old,new", [
    (RunState.SUCCEEDED, RunState.RUNNING), (RunState.FAILED, RunState.SUCCEEDED),
    (RunState.CANCELLED, RunState.FAILED),
    (RunState.RUNNING, RunState.STARTING), (RunState.STARTING, RunState.SUCCEEDED), (None, RunState.SUCCEEDED),
    (RunState.LOST, RunState.RUNNING),
])
def test_illegal_transitions_are_refused(old, new):
    with pytest.raises(TransitionError, match=f"-> {new.value} is not allowed"):
        check_transition(old, new)


def test_parse_state_ignores_what_it_does_not_know():
    assert parse_state("running") is RunState.RUNNING
    assert parse_state(None) is None and parse_state("exploded") is None


def test_writer_merges_fields_and_refuses_an_illegal_state(tmp_path: Path):
    path = tmp_path / "status.json"
    w = StatusWriter.for_path(path)
    w.start()
    w.update(RunState.RUNNING, agent_pid=42)
    w.update(rebalance={"at": 1})  # no state: fields only
    assert json.loads(path.read_text())["agent_pid"] == 42
    w.update(RunState.SUCCEEDED, exit_code=0)
    with pytest.raises(TransitionError):
        w.update(RunState.RUNNING)
    after = json.loads(path.read_text())
    assert after["state"] == "succeeded" and after["rebalance"] == {"at": 1}  # the refused write changed nothing
    assert not list(tmp_path.glob("*.tmp"))


def test_start_drops_the_last_attempts_fields(tmp_path: Path):
    w = StatusWriter.for_path(tmp_path / "status.json")
    w.update(RunState.RUNNING, agent_pid=7)
    w.update(RunState.PREEMPTED, reason="spot")
    assert w.start() == {"state": "starting", "updated_at": w.read()["updated_at"]}


def test_settle_records_an_end_only_over_an_active_state():
    text = {"t": None}
    w = StatusWriter(lambda: text["t"], lambda t: text.update(t=t))  # the launcher's kind: read/write functions
    w.update(RunState.STARTING)
    w.update(RunState.RUNNING, agent_pid=3)
    assert w.settle(RunState.LOST, "instance gone")["state"] == "lost"
    assert w.settle(RunState.FAILED, "again") is None  # it holds an end already
    assert json.loads(text["t"])["reason"] == "instance gone"


def test_torn_status_reads_as_none(tmp_path: Path):
    (tmp_path / "status.json").write_text('{"state": "runn')
    w = StatusWriter.for_path(tmp_path / "status.json")
    assert w.read() == {}
    w.update(RunState.RUNNING)  # from no known state
