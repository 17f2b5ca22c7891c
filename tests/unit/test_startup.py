"""The launcher starts without torch: every command but the training itself answers in about a second.

torch and accelerate cost ~4 s of CPU each to import on a 2-core machine; the launcher only needs them
where it trains (the agent and the trainer, in their own processes) and for `models`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

LAUNCHER_MODULES = ["launcher.cli", "launcher.cloud_cli", "launcher.orchestrator", "launcher.lifecycle",
                    "launcher.targets.local", "launcher.targets.ec2", "launcher.live", "launcher.compare",
                    "infra.datasync", "infra.agent"]


def test_the_launcher_and_the_agent_import_neither_torch_nor_accelerate():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in LAUNCHER_MODULES)
            + "print(sorted(m for m in ('torch', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"imported at start-up: {out.stdout.strip()}"


def test_the_local_commands_import_neither_the_cloud_libraries_nor_numpy():
    """`train --local`, `runs`, `logs`: boto3 and paramiko (about a second of CPU) come with the cloud commands
    and the stores that need them, numpy with the data it reads."""
    code = ("import sys\nimport launcher.cli\nimport launcher.orchestrator\n"
            "print(sorted(m for m in ('boto3', 'paramiko', 'numpy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"imported at start-up: {out.stdout.strip()}"


def test_without_a_gpu_driver_the_gpu_questions_are_answered_without_torch():
    code = ("import sys\nfrom trainer import precision as p\n"
            "print(p.gpu_driver_loaded(), p.cuda_device_count(), p.cuda_capability(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    driver = any(Path(f).exists() for f in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd"))
    if driver:
        pytest.skip("this machine has a GPU driver: torch is asked")
    assert out.stdout.split() == ["False", "0", "None", "False"]


def test_the_agent_counts_no_gpus_without_torch_where_there_is_no_driver():
    """`--processes 0` (every cloud run's agent): one process per GPU, 1 without."""
    code = "import sys\nfrom infra.agent import resolve_processes as r\nprint(r(0), r(3), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if any(Path(f).exists() for f in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")):
        pytest.skip("this machine has a GPU driver: torch is asked")
    assert out.stdout.split() == ["1", "3", "False"]


def test_logs_of_a_folder_run_reads_it_without_the_cloud_libraries(tmp_path):
    """`logs RUN` of a `--local` run: boto3 and paramiko (~0.6 s) only where a cloud run or an S3 store is asked."""
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: model3\n")
    (run / "events.jsonl").write_text('{"type":"run_end","state":"succeeded"}\n')
    code = (f"import sys\nfrom launcher.lifecycle import open_files\nf = open_files('r1', {str(tmp_path)!r}, print)\n"
            "print(f.read_text('config.yaml').strip(), sorted(m for m in ('boto3', 'paramiko') if m in sys.modules))")
    env = {**os.environ, "MNIST_LAUNCH_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "model: model3 []"


def test_models_lists_the_zoo_without_torch():
    code = "import sys\nimport launcher.cli as c\nc.models(as_json=True)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "False" and '"params": 7736' in out.stdout
