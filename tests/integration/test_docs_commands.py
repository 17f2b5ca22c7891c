"""Every command README.md and docs/*.md show either runs here or is listed with the reason it cannot.

The commands come from the documents' fenced code blocks (tests/support/docs.py). ``HOW`` says what happens to
each; a documented command missing from it (a new one, or one whose text changed) fails
test_every_documented_command_is_run_or_listed, and so does an entry the documents no longer show. Adding a
command is one line in ``HOW``:

- ``RUN``: run in-process (tests/support/cli.py) after the shared local run exists, placeholders filled
  (RUN_ID: that run; DIR after --data-dir: the small MNIST; DIR after --dest: a new folder); it must exit 0.
- ``SCENARIO``: a step of test_local_commands that needs its place in the order (start, follow, resume, cancel).
- ``PREPARE``: `train --local` run for real up to the start of its agent (config, --set, data, the run folder
  written) but no trainer: one trainer run costs ~12 s of CPU, and this module may spend two.
- ``CLOUD``: run in-process against moto and a real sshd on 127.0.0.1 (test_cloud_commands).
- ``skip("reason")``: not run here; a reason naming ``tests/...py::test_name`` must name a test that exists.

Every ``--flag`` any documented `mnist-launch` command shows, run or not, must be one its --help lists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from core.config import parse_override
from tests.support import ROOT
from tests.support.aws_helpers import CIDR, fake_aws_env, live, ubuntu_ami
from tests.support.cli import invoke
from tests.support.docs import argv, bare, documented, flags, full
from tests.support.runs import EPOCH_ROW, has_event, wait_until
from tests.support.sshd_fixture import sshd  # noqa: F401

RUN, SCENARIO, PREPARE, CLOUD = "run", "scenario", "prepare", "cloud"


def skip(reason: str) -> str:
    return f"skip: {reason}"


# One line per documented command (as the document shows it; a key ending in " …" covers every command that
# starts with the rest, for synopses too long for a line).
HOW: dict[str, str] = {
    "pip install -e .": skip("installs the project: the suite runs in that install"),
    "pip install -e '.[test]'": skip("installs the test extras: the suite runs in that install"),
    "ruff check": skip("CI (.ci/run) runs it before the suite"),
    "mypy": skip("CI (.ci/run) runs it before the suite"),
    "python -m pytest -q": skip("the suite itself"),
    "mnist-launch train configs/model3.yaml --local --data-dir ../shared/data/mnist --set train.epochs=1": PREPARE,
    "mnist-launch models": RUN,
    "mnist-launch train configs/gap_19k.yaml --local --data-dir DIR": PREPARE,
    "mnist-launch train configs/examples/tiny_net.yaml --local --data-dir DIR": skip(
        "trained by tests/integration/test_user_model.py"
        "::test_the_readme_example_model_trains_locally_with_its_summary"),
    "mnist-launch train configs/model3.yaml --local --set train.epochs=3 --set train.seed=2": PREPARE,
    "mnist-launch train configs/model3.yaml --local --processes 2": PREPARE,
    "mnist-launch train configs/model3.yaml --local --detach": SCENARIO,
    "mnist-launch logs RUN_ID --follow": SCENARIO,
    "mnist-launch logs RUN_ID --raw": RUN,
    "mnist-launch cancel RUN_ID": SCENARIO,
    "mnist-launch train --local --resume RUN_ID [--set train.epochs=20]": SCENARIO,
    "mnist-launch runs [--json]": RUN,
    "mnist-launch results RUN_ID --dest DIR": RUN,
    "mnist-launch up --instance g4dn.xlarge --store s3://my-bucket/mnist": CLOUD,
    "mnist-launch train configs/model3.yaml --store s3://my-bucket/mnist --data-dir DIR": skip(
        "a third trainer run; tests/integration/test_remote_train.py::"
        "test_train_detach_follow_artifacts_in_s3_then_an_unchanged_second_run_on_data_from_s3 runs it"),
    "mnist-launch status": CLOUD,
    "mnist-launch down mnist --yes": CLOUD,
    "mnist-launch up --nodes 2 --instance g4dn.xlarge --store s3://my-bucket/mnist": CLOUD,
    "mnist-launch train configs/model3.yaml --nodes 2 --store s3://my-bucket/mnist": skip(
        "two trainers on two sshd nodes; tests/integration/test_multinode_cloud.py::"
        "test_two_nodes_train_lose_the_head_recover_and_down_leaves_nothing runs it"),
    "mnist-launch train configs/model3.yaml --local --nodes 2": PREPARE,
    "python bench/throughput.py --data-dir ../shared/data/mnist": skip(
        "two trainer runs and the seed pipeline: >70 s of CPU at its smallest --fraction; "
        "tests/unit/test_bench_throughput.py::test_the_readme_command_loads_both_variants checks its inputs"),
    "python bench/reproduce.py --seeds 1 2 3": skip("every recipe x 3 seeds on the full MNIST: hours of CPU"),
    "python bench/sync_bench.py": skip("a benchmark of 1,000-file syncs (minutes); "
                                       "tests/integration/test_sync.py tests the sync it times"),
    "python bench/remote_overhead.py": skip("5 cloud trainer runs on the sshd host"),
    "mnist-launch sweep configs/model3.yaml --local --grid train.seed=1,2,3 --grid scheduler.max_lr=0.05,0.1 "
    "--parallel 2": skip("six trainer runs; tests/integration/test_sweep.py"
                         "::test_the_table_is_what_the_runs_summary_json_say runs a 2x2 grid at --parallel 2"),
    "mnist-launch sweep status SWEEP_ID": skip("tests/integration/test_sweep.py"
                                               "::test_a_killed_launcher_changes_nothing_and_status_reattaches_each_run_once"),
    "mnist-launch cancel SWEEP_ID": skip("tests/integration/test_sweep.py"
                                         "::test_cancel_stops_the_running_run_and_starts_no_more"),
    "python bench/sweep_packing.py": skip("timed sweeps at --parallel 1, 2, 4: a benchmark"),
    "python bench/startup.py": skip("3 trainer runs and the read-only commands, timed: a benchmark"),
    "python bench/soak.py --runs 20": skip("20 cloud runs with cuts and kills: tens of minutes"),
    "mnist-launch up --instance g4dn.xlarge [--name mnist] …": CLOUD,  # docs/aws.md's synopsis
    "mnist-launch status [--json] [--region R ...]": CLOUD,
    "mnist-launch down NAME [--yes] [--stop] [--all] [--region R]": CLOUD,
    "mnist-launch ssh NAME [--identity KEY] [-- CMD ...]": CLOUD,
}


def how(command: str) -> str | None:
    for key, value in HOW.items():
        if key == command or key.endswith(" …") and command.startswith(key[:-2]):
            return value
    return None


def kind(k: str) -> list[str]:
    return [c for c in documented() if how(c) == k]


def test_every_documented_command_is_run_or_listed():
    docs = documented()
    missing = [f"{c!r} ({', '.join(where)})" for c, where in docs.items() if how(c) is None]
    assert not missing, "documented commands neither run nor listed in HOW:\n" + "\n".join(missing)
    stale = [k for k in HOW if not any(k == c or k.endswith(" …") and c.startswith(k[:-2]) for c in docs)]
    assert not stale, f"HOW lists commands the documents no longer show: {stale}"
    for value in HOW.values():
        for module, name in re.findall(r"(tests/\S+\.py)::(\w+)", value):
            assert f"def {name}(" in (ROOT / module).read_text(), f"{module}::{name} is gone: {value}"


def test_every_documented_flag_exists():
    helps: dict[str, str] = {}
    wrong = []
    for command in documented():
        words = command.split()
        if words[0] != "mnist-launch":
            continue
        # `data check --data-dir`: the subcommand's help (`logs RUN_ID --help` is the help of `logs`)
        sub = " ".join(words[1:3] if len(words) > 2 and not words[2].startswith("-") else words[1:2])
        if sub not in helps:
            out = invoke(*sub.split(), "--help")
            assert out.code == 0, out.stderr
            helps[sub] = out.stdout
        wrong += [f"{command!r}: {f}" for f in flags(command) if not re.search(rf"{f}\b", helps[sub])]
    assert not wrong, "flags the documents show that the commands do not have:\n" + "\n".join(wrong)


@pytest.fixture
def user_dir(tmp_path, monkeypatch, small_mnist):
    """A user's folder (configs/ there, the store ./runs) and the placeholders filled for it."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNIST_LAUNCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MNIST_LAUNCH_DATA", str(small_mnist))  # where a command without --data-dir finds MNIST
    return tmp_path


def filled(command: str, values: dict[str, str], data: Path, dest: Path) -> list[str]:
    """argv of a documented command (the program's name left out), its placeholders filled."""
    words = argv(command, values)
    for i, w in enumerate(words[:-1]):
        if w == "--data-dir":
            words[i + 1] = str(data)  # DIR or ../shared/data/mnist: the small MNIST
        if w == "--dest":
            words[i + 1] = str(dest)
    return words[1:]


def test_local_commands(user_dir, small_mnist, monkeypatch):
    """Two trainer runs serve every local command: a run started detached for 2 epochs and cancelled in the
    second, followed, resumed to its end; the other commands read that run."""
    ran = []

    def do(command: str, *extra: str, as_shown: str | None = None, code: int = 0):
        out = invoke(*filled(as_shown or command, {"RUN_ID": run_id}, small_mnist, user_dir / "fetched"), *extra)
        assert out.code == code, (command, out.stdout[-2000:], out.stderr[-2000:])
        ran.append(command)
        return out

    run_id = "RUN_ID"
    # >= 1.2 s a step (4 steps an epoch): still in epoch 2 when cancelled right after epoch 1's checkpoint
    monkeypatch.setenv("MNIST_LAUNCH_STEP_DELAY", "1.2")
    out = do("mnist-launch train configs/model3.yaml --local --detach", "--set", "train.epochs=2")
    monkeypatch.delenv("MNIST_LAUNCH_STEP_DELAY")
    run_id = re.search(r"run (\S+) →", out.stdout).group(1)
    run_dir = user_dir / "runs" / run_id
    assert "detached" in out.stdout
    wait_until(lambda: has_event(run_dir, lambda e: e["type"] == "checkpoint" and e["epoch"] == 1),
               "the detached run saved no checkpoint", timeout=240)
    out = do("mnist-launch cancel RUN_ID")
    assert f"{run_id}: cancelled" in out.stdout
    out = do("mnist-launch logs RUN_ID --follow")
    assert [int(e) for e in EPOCH_ROW.findall(out.stdout)] == [1]

    resume = "mnist-launch train --local --resume RUN_ID [--set train.epochs=20]"
    # more epochs: refused for model3, whose OneCycle schedule is fixed at the start (README says so)
    out = do(resume, as_shown=full(resume), code=2)
    assert "a OneCycle schedule is fixed at the start of a run" in out.stderr
    out = do(resume, as_shown=bare(resume))  # continues at epoch 2 and follows it to the end
    assert [int(e) for e in EPOCH_ROW.findall(out.stdout)] == [2]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "succeeded"

    for command in kind(RUN):
        for shown in dict.fromkeys([bare(command), full(command)]):  # `runs [--json]`: `runs` and `runs --json`
            out = do(command, as_shown=shown)
    rows = json.loads(invoke("runs", "--json").stdout)
    assert [(r["run_id"], r["state"], r["epochs_completed"]) for r in rows] == [(run_id, "succeeded", 2)]
    assert any((user_dir / "fetched").rglob("summary.json"))
    assert sorted(set(ran)) == sorted(kind(RUN) + kind(SCENARIO))


class NotStarted(Exception):
    """What the agent's start raises in test_train_commands_up_to_the_agent: everything before it was real."""


@pytest.mark.parametrize("command", kind(PREPARE))
def test_train_commands_up_to_the_agent(command, user_dir, small_mnist, monkeypatch):
    from launcher.targets.local import LocalTarget

    def spawn_agent(self, attempt, restart):
        raise NotStarted(attempt.run_dir)

    monkeypatch.setattr(LocalTarget, "spawn_agent", spawn_agent)
    with pytest.raises(NotStarted) as started:
        out = invoke(*filled(command, {}, small_mnist, user_dir / "fetched"))
        pytest.fail(f"{command}: stopped before its agent: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    run_dir = Path(str(started.value))
    from core.config import config_from_yaml

    cfg = config_from_yaml((run_dir / "config.yaml").read_text())
    words = command.split()
    for i, w in enumerate(words[:-1]):
        if w == "--set":  # each documented --set is in the run's resolved config
            path, value = parse_override(words[i + 1])
            got = cfg
            for part in path:
                got = getattr(got, part)
            assert got == value, (command, path)
    assert cfg.data.dir == str(small_mnist) or Path(cfg.data.dir or "").resolve() == small_mnist.resolve()


@pytest.fixture
def cloud_user(tmp_path, monkeypatch, sshd):  # noqa: F811
    fake_aws_env(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", sshd.endpoint)
    monkeypatch.setenv("MNIST_LAUNCH_SSH_CIDR", CIDR)
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="my-bucket")
        yield sshd


def test_cloud_commands(cloud_user):
    """`up`, `status`, `ssh` and `down` as the documents show them, against moto and a real sshd."""
    ran = []
    values = {"NAME": "mnist", "KEY": str(cloud_user.client_key), "R": "us-east-1", "CMD": "true", "...": ""}
    # what a laptop has and the tests' world does not: an image moto knows, the sshd's key
    up_extra = ["--ami", ubuntu_ami(), "--identity", str(cloud_user.client_key), "--yes"]

    def do(command: str, *extra: str, as_shown: str | None = None):
        words = [w for w in filled(as_shown or command, values, Path(), Path()) if w]
        out = invoke(*words, *extra)
        assert out.code == 0, (command, out.stdout[-2000:], out.stderr[-2000:])
        ran.append(command)
        return out

    do("mnist-launch up --instance g4dn.xlarge --store s3://my-bucket/mnist", *up_extra)
    [inst] = live()
    out = do("mnist-launch status")
    assert "mnist" in out.stdout and inst["InstanceId"] in out.stdout
    synopsis = "mnist-launch status [--json] [--region R ...]"
    out = do(synopsis, as_shown=full(synopsis))
    assert [r["id"] for r in json.loads(out.stdout)] == [inst["InstanceId"]]
    ssh = "mnist-launch ssh NAME [--identity KEY] [-- CMD ...]"
    do(ssh, as_shown=full(ssh))
    do("mnist-launch down mnist --yes")
    assert live() == []

    do("mnist-launch up --nodes 2 --instance g4dn.xlarge --store s3://my-bucket/mnist", *up_extra)
    assert len(live()) == 2
    [up_synopsis] = [c for c in documented() if c.startswith("mnist-launch up --instance g4dn.xlarge [")]
    out = do(up_synopsis, "--nodes", "2", *up_extra, as_shown=bare(up_synopsis))  # the cluster as it is: reused
    assert "reuse" in out.stderr and len(live()) == 2
    down = "mnist-launch down NAME [--yes] [--stop] [--all] [--region R]"
    do(down, "--yes", as_shown=bare(down))
    assert live() == []
    assert sorted(set(ran)) == sorted(kind(CLOUD))
