"""resolve_mixed_precision for every host kind, without a GPU."""

import pytest

from core.errors import ConfigError
from trainer.precision import cuda_capability, resolve_mixed_precision


@pytest.mark.parametrize("capability, expected", [
    (None, "no"),  # CPU: bf16 autocast is 7.5x slower than fp32 there
    ((7, 0), "fp16"),  # V100
    ((7, 5), "fp16"),  # T4 (g4dn)
    ((8, 0), "bf16"),  # A100
    ((8, 6), "bf16"),  # A10G (g5)
    ((8, 9), "bf16"),  # L4 (g6)
    ((9, 0), "bf16"),  # H100
    ((10, 0), "bf16"),  # B200
    ([7, 5], "fp16"),  # a list (e.g. from JSON) compares the same
])
def test_auto_picks_by_hardware(capability, expected):
    assert resolve_mixed_precision("auto", capability) == expected


@pytest.mark.parametrize("requested", ["no", "fp16", "bf16"])
@pytest.mark.parametrize("capability", [(7, 5), (8, 0), (9, 0)])
def test_an_explicit_choice_is_kept_on_any_gpu(requested, capability):
    assert resolve_mixed_precision(requested, capability) == requested


@pytest.mark.parametrize("requested", ["no", "bf16"])
def test_no_and_bf16_are_kept_on_cpu(requested):
    assert resolve_mixed_precision(requested, None) == requested


def test_fp16_on_cpu_says_it_needs_a_gpu_and_what_to_use():
    with pytest.raises(ConfigError, match=r"^train\.mixed_precision=fp16 needs a CUDA GPU and this host has none — "
                                          r"use 'no' \(fastest on CPU\), 'bf16' or 'auto'$"):
        resolve_mixed_precision("fp16", None)


def test_unknown_names_are_rejected_by_name():
    with pytest.raises(ConfigError, match=r"train\.mixed_precision: 'fp8' is not one of auto, no, fp16, bf16"):
        resolve_mixed_precision("fp8", (9, 0))


def test_cuda_capability_is_none_when_accelerate_is_told_to_use_the_cpu(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert cuda_capability() is None
