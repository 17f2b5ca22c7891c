"""The eager optimizers: torch's own update to the bit, and a training process that never imports torch._dynamo.

torch._dynamo (3.6 s), torch.distributed.tensor (1-2.5 s) and matplotlib (1.2 s) were imported by every trainer
on the 2-core dev machine without being used (BENCHMARKS.md, "Start-up"); this keeps them out.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from core.config import load_config
from tests.support import ROOT
from trainer.optim import build_optimizer, eager


def _train(cls, steps: int = 6, **kwargs) -> tuple[list[torch.Tensor], dict]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    opt = cls(model.parameters(), **kwargs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 6, generator=data)),
                                                 torch.randint(0, 3, (8,), generator=data))
        loss.backward()
        opt.step()
        sched.step()
    return [p.detach().clone() for p in model.parameters()], opt.state_dict()


@pytest.mark.parametrize("cls,kwargs", [
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
    (torch.optim.Adam, {"lr": 0.01, "weight_decay": 1e-4}),
    (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
])
def test_the_eager_optimizer_is_torchs_update_to_the_bit(cls, kwargs):
    ours, our_state = _train(eager(cls), **kwargs)
    theirs, their_state = _train(cls, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert our_state["param_groups"] == their_state["param_groups"]
    for key, value in their_state["state"][0].items():
        assert torch.equal(our_state["state"][0][key], value) if torch.is_tensor(value) else \
            our_state["state"][0][key] == value
    assert isinstance(eager(cls)([torch.nn.Parameter(torch.zeros(1))], lr=0.1), cls)
    assert eager(cls) is eager(cls)


def test_compile_keeps_torchs_own_optimizer():
    cfg = load_config(str(ROOT / "configs/model3.yaml"), ["train.compile=true"])
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])
    assert type(opt) is torch.optim.SGD
    cfg = load_config(str(ROOT / "configs/model3.yaml"), [])
    assert type(build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])) is eager(torch.optim.SGD)


def test_a_training_process_imports_neither_dynamo_nor_dtensor_nor_matplotlib():
    """What the trainer does around its loop, in a fresh process: Accelerate's model and optimizer set-up, steps,
    a checkpoint's state_dict and load_state_dict, the weights of the best epoch."""
    code = """
import sys, torch
from accelerate import Accelerator
from core.config import load_config
from trainer.train import build_scheduler, plain_module
from trainer.optim import build_optimizer
from trainer.models import build_model
cfg = load_config("configs/model3.yaml", [])
accelerator = Accelerator(cpu=True)
model = build_model(cfg.model)
optimizer = build_optimizer(cfg, model.parameters())
scheduler, _ = build_scheduler(cfg, optimizer, 10)
model = accelerator.prepare_model(model, device_placement=True)
optimizer = accelerator.prepare_optimizer(optimizer)
for _ in range(2):
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(model(torch.zeros(4, 1, 28, 28)).sum())
    optimizer.step()
    scheduler.step()
optimizer.load_state_dict(optimizer.state_dict())
plain_module(model, accelerator).state_dict()
heavy = ("torch._dynamo", "torch.distributed.tensor", "matplotlib", "torch._inductor")
print(sorted(m for m in heavy if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
