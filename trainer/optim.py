"""The run's optimizer, built so that a run that does not compile never imports ``torch._dynamo``.

torch wraps its optimizers' methods for torch.compile's sake: ``step`` imports ``torch._dynamo`` on every
call (to put graph breaks around the update) and ``zero_grad``, ``add_param_group``, ``state_dict`` and
``load_state_dict`` import it on their first call (to tell dynamo to skip them). Importing it took 3.6 s
of a 12 s trainer start on the 2-core dev machine, for nothing: without ``train.compile`` nothing is
compiled, and outside compilation those wrappers only call the plain method (``step`` under no_grad). An
eager run therefore gets a subclass whose methods are the plain ones (``inspect.unwrap``): torch's own
update, the same numbers to the bit (tests/unit/test_optim.py), step hooks and profiling kept.

    optimizer = build_optimizer(cfg, model.parameters())  # eager unless cfg.train.compile
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from core.config import Config

# the methods torch wraps with torch._disable_dynamo (torch/optim/optimizer.py)
_DYNAMO_WRAPPED = ("zero_grad", "add_param_group", "state_dict", "load_state_dict")


_EAGER: dict[str, type] = {}


def eager(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``cls`` with its dynamo wrappers peeled off (one subclass per class): for a process that never compiles."""
    made = _EAGER.get(cls.__qualname__)
    if made is not None:
        return made
    plain_step = inspect.unwrap(cls.step)

    def step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        with torch.no_grad():  # what the wrapper does for a non-differentiable optimizer
            return plain_step(self, closure)

    methods: dict[str, Any] = {"step": step, "__doc__": cls.__doc__}
    methods.update({name: inspect.unwrap(getattr(cls, name)) for name in _DYNAMO_WRAPPED})
    made = _EAGER[cls.__qualname__] = type(cls.__name__, (cls,), methods)
    return made


def build_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    o = cfg.optimizer
    kwargs: dict[str, Any] = {"lr": o.lr, "weight_decay": o.weight_decay}
    cls: type[torch.optim.Optimizer] = torch.optim.AdamW
    if o.name == "sgd":
        cls, kwargs = torch.optim.SGD, {**kwargs, "momentum": o.momentum, "nesterov": o.nesterov}
    elif o.name == "adam":
        cls = torch.optim.Adam
    make: Any = cls if cfg.train.compile else eager(cls)
    return make(params, **kwargs)
