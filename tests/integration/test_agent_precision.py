"""The agent resolves train.mixed_precision on the host that trains, before the trainer (or `accelerate launch`)
sees it."""

import json

import pytest
import torch

from core.errors import ConfigError
from infra.agent import accelerate_command
from infra.agent import main as agent_main
from launcher.orchestrator import LocalRequest, start_run
from trainer import precision


@pytest.fixture
def cpu_host(monkeypatch):
    monkeypatch.setattr(precision, "gpu_driver_loaded", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "")  # the trainer's cuda_capability reads it


def fake_gpus(monkeypatch, capability):
    monkeypatch.setattr(precision, "gpu_driver_loaded", lambda: True)  # a driver, so torch is asked
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: capability)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)


def precision_in(launch):
    """The precision the trainer is started with: accelerate launch's flag (several processes), and the
    variable the trainer's Accelerator reads (always; accelerate launch sets the same from its flag)."""
    cmd, env = launch
    if "accelerate.commands.launch" in cmd:
        assert cmd[cmd.index("--mixed_precision") + 1] == env["ACCELERATE_MIXED_PRECISION"]
    return env["ACCELERATE_MIXED_PRECISION"]


@pytest.mark.parametrize("processes", [1, 2])
def test_one_process_starts_the_trainer_itself_several_go_through_accelerate_launch(cpu_host, tmp_path, processes):
    cmd, env = accelerate_command(tmp_path, processes, "no", True, python="py")
    assert cmd[-5:] == ["-m", "trainer", "--run-dir", str(tmp_path), "--resume"]
    if processes == 1:  # what accelerate launch's single-process launcher would start, with its environment
        assert cmd == ["py", "-m", "trainer", "--run-dir", str(tmp_path), "--resume"]
    else:
        assert cmd[:3] == ["py", "-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
        assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert env["ACCELERATE_USE_CPU"] == "True" and env["ACCELERATE_DYNAMO_BACKEND"] == "NO"


def test_several_nodes_meet_at_rank_0_with_the_machine_count_and_their_rank(cpu_host, tmp_path):
    from infra.agent import Nodes

    where = Nodes(count=3, rank=2, address="10.0.0.5", port=23456)
    # one process a node: the trainer itself, with what torchrun's static rendezvous gives its one worker
    cmd, env = accelerate_command(tmp_path, 1, "no", False, python="py", nodes=where)
    assert cmd == ["py", "-m", "trainer", "--run-dir", str(tmp_path)]
    assert {k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                "LOCAL_WORLD_SIZE")} == {"MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "23456",
                                                         "RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0",
                                                         "LOCAL_WORLD_SIZE": "1"}
    # two a node: accelerate launch over the whole world (6), this machine's rank, rank 0's address and port
    cmd, env = accelerate_command(tmp_path, 2, "no", False, python="py", nodes=where)
    assert cmd[:3] == ["py", "-m", "accelerate.commands.launch"] and "RANK" not in env
    flags = {cmd[i]: cmd[i + 1] for i in range(3, len(cmd) - 1) if cmd[i].startswith("--")}
    assert (flags["--num_machines"], flags["--machine_rank"], flags["--num_processes"]) == ("3", "2", "6")
    assert (flags["--main_process_ip"], flags["--main_process_port"]) == ("10.0.0.5", "23456")


@pytest.mark.parametrize("processes", [1, 2])
def test_auto_on_a_cpu_host_launches_without_mixed_precision(cpu_host, tmp_path, processes):
    assert precision_in(accelerate_command(tmp_path, processes, "auto", False)) == "no"


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_on_a_gpu_host_picks_by_compute_capability(monkeypatch, tmp_path, capability, expected):
    fake_gpus(monkeypatch, capability)
    assert precision_in(accelerate_command(tmp_path, 1, "auto", False)) == expected


def test_explicit_bf16_on_a_cpu_host_is_kept(cpu_host, tmp_path):
    assert precision_in(accelerate_command(tmp_path, 1, "bf16", False)) == "bf16"


def test_fp16_on_a_cpu_host_fails_the_run_with_one_line(cpu_host, tmp_path):
    assert agent_main(["--run-dir", str(tmp_path), "--mixed-precision", "fp16"]) == 1
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"].startswith("train.mixed_precision=fp16 needs a CUDA GPU")
    end = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[-1])
    assert end["type"] == "run_end" and end["state"] == "failed"
    assert "error: train.mixed_precision=fp16 needs a CUDA GPU" in (tmp_path / "train.log").read_text()


def test_a_local_fp16_run_on_a_cpu_host_is_refused_before_it_starts(cpu_host, small_mnist, tmp_path):
    with pytest.raises(ConfigError, match=r"fp16 needs a CUDA GPU and this host has none — use 'no'"):
        start_run(LocalRequest(config="configs/model3.yaml", store=str(tmp_path), data_dir=str(small_mnist),
                               run_id="fp16", overrides=["train.mixed_precision=fp16"]))
    assert not (tmp_path / "runs" / "fp16" / "status.json").exists()
