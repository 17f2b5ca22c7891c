"""Which autocast precision a run uses, decided where training runs (the laptop or the instance).

``auto`` (the default) picks by hardware: ``no`` on CPU (bf16 autocast there measured 7.5x slower
than fp32, BENCHMARKS.md), ``fp16`` on CUDA compute capability < 8.0 (T4, V100: no fast bf16),
``bf16`` on 8.0 and newer (A10G, L4, A100, H100: same speed as fp16, no loss scaling).

    resolve_mixed_precision("auto", cuda_capability())  # -> "no" on this laptop, "bf16" on an A100
"""

from __future__ import annotations

import os
from typing import Optional

from core.errors import ConfigError

CHOICES = ("auto", "no", "fp16", "bf16")


def resolve_mixed_precision(requested: str, cuda_capability: Optional[tuple[int, int]]) -> str:
    """The value for ``accelerate launch --mixed_precision``; ``cuda_capability`` None means CPU only."""
    if requested not in CHOICES:
        raise ConfigError(f"train.mixed_precision: {requested!r} is not one of {', '.join(CHOICES)}")
    if requested == "fp16" and cuda_capability is None:
        # Accelerate does not fail here: it silently trains in fp32 while the run would say fp16.
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU and this host has none — "
                          "use 'no' (fastest on CPU), 'bf16' or 'auto'")
    if requested != "auto":
        return requested
    if cuda_capability is None:
        return "no"
    return "bf16" if tuple(cuda_capability) >= (8, 0) else "fp16"


# Where no GPU driver is loaded, torch sees no GPU: the launcher and the agent then answer without
# importing torch (~4 s of CPU on a small machine, at every run's start).
GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")


def gpu_driver_loaded() -> bool:
    return any(os.path.exists(p) for p in GPU_DRIVER_FILES)


def cuda_device_count() -> int:
    """GPUs torch can use on this host (0 without a GPU driver, found without importing torch)."""
    if not gpu_driver_loaded():
        return 0
    import torch

    return torch.cuda.device_count()


def cuda_capability() -> Optional[tuple[int, int]]:
    """Compute capability of this host's least capable GPU (every rank picks the same), None on CPU."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not gpu_driver_loaded():
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return min(torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))
