"""The training sections of a run's config: model, augmentation, optimizer, scheduler, loop.

Owned by the trainer (trainer/ reads them; the launcher only passes them on). ``MODEL_NAMES`` is
the zoo's names as the config accepts them; trainer/models.py builds one model per name
(tests/unit/test_layers.py checks that the two agree). A ``model:`` may also name a class in a file of
the project, ``PATH.py:ClassName`` (``model_file`` checks its shape; trainer/usermodel.py builds it).

    train: {epochs: 15, batch_size: 128, mixed_precision: auto}
"""

from __future__ import annotations

import keyword
import re
from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator

from core.config.base import Range, Section

# the `model:` names (trainer.models.MODELS has one entry for each)
MODEL_NAMES = ("model1", "model2", "model3", "model4", "fc_baseline", "fc_dropout", "one_epoch", "gap_19k", "record")
# each model's claimed test accuracy: the bar its seed states (trainer.models.MODELS[name].claim says it in
# words; tests/unit/test_models.py checks they agree). Here, below torch, so that curves.png, `runs --compare`
# and bench/reproduce.py draw and judge against it without importing the zoo.
MODEL_CLAIMS = {"model1": 0.9887, "model2": 0.9869, "model3": 0.994, "model4": 0.991, "fc_baseline": 0.988,
                "fc_dropout": 0.988, "one_epoch": 0.95, "gap_19k": 0.994, "record": 0.994}

# a part of a model file's path: the same word in every shell, log line and S3 key it reaches
_FILE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def model_file(model: str) -> Optional[tuple[str, str]]:
    """``'models/tiny.py:TinyNet'`` -> ``('models/tiny.py', 'TinyNet')``; None for a zoo name (no ':').

    The path is relative to the project root (the folder holding configs/ and trainer/, the one `train`
    syncs to the instance): no absolute path, no '~', no '..' or empty part, each part of letters, digits
    and . _ - (not first . or -), ending in .py; the class name a Python identifier. ValueError says which
    rule a value breaks; whether the file is there, and inside the project, is checked where it is read."""
    if ":" not in model:
        return None
    path, _, name = model.rpartition(":")
    if not path.endswith(".py"):
        raise ValueError(f"'{model}': a model file is PATH.py:ClassName, and '{path}' does not end in .py")
    if path.startswith(("/", "~")) or "\\" in path:
        raise ValueError(f"'{path}' must be a path relative to the project root (no / or ~ at the start, no \\)")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"'{path}' must stay inside the project: no '..', '.' or empty part")
        if not _FILE_PART.fullmatch(part):
            raise ValueError(f"'{path}': use only letters, digits and . _ - in each part of the path "
                             "(not first . or -)")
    if not _CLASS_NAME.fullmatch(name) or keyword.iskeyword(name):
        raise ValueError(f"'{name}' after the ':' must be a class name (a Python identifier)")
    return path, name


class AugmentConfig(Section):
    """Batched on-device augmentation; each field means what it means in torchvision."""

    rotation: Union[float, Range] = 0.0  # RandomRotation(degrees): d -> uniform(-d, d) degrees, counter-clockwise
    rotation_p: float = Field(1.0, ge=0, le=1)  # probability of the rotation (RandomApply); 1 = always
    translate: Range = (0.0, 0.0)  # RandomAffine(translate=(a, b)): shift up to a*width, b*height pixels, rounded
    scale: Range = (1.0, 1.0)  # RandomAffine(scale=(lo, hi)): zoom factor uniform in [lo, hi]
    shear: Union[float, Range] = 0.0  # RandomAffine(shear=s): x-shear uniform(-s, s) degrees (or (lo, hi))
    crop_p: float = Field(0.0, ge=0, le=1)  # RandomApply([CenterCrop(crop_size)], p) then Resize(28)
    crop_size: int = Field(22, ge=4, le=28)  # CenterCrop side in pixels before resizing back to 28
    brightness: float = Field(0.0, ge=0, lt=1)  # ColorJitter(brightness=b): factor uniform [1-b, 1+b]
    contrast: float = Field(0.0, ge=0, lt=1)  # ColorJitter(contrast=c): blend with the image mean, factor in [1-c, 1+c]
    fill: float = Field(0.0, ge=0, le=255)  # pixel value (0-255, like fill= on a PIL image) for uncovered areas

    @field_validator("rotation", "translate", "scale", "shear", mode="before")
    @classmethod
    def _none_is_off(cls, v: Any, info: Any) -> Any:
        """null means "off", as ``translate=None`` / ``scale=None`` do in torchvision's RandomAffine."""
        return cls.model_fields[info.field_name].default if v is None else v

    @field_validator("rotation", "shear")
    @classmethod
    def _symmetric(cls, v: Any) -> Any:
        if isinstance(v, (int, float)):
            if v < 0:
                raise ValueError("must be >= 0 (a single value d means the range (-d, d))")
            return float(v)
        return v

    @field_validator("translate")
    @classmethod
    def _translate(cls, v: Range) -> Range:
        if not all(0.0 <= t <= 1.0 for t in v):
            raise ValueError("each fraction must be within [0, 1]")
        return v

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: Range) -> Range:
        if not (0 < v[0] <= v[1]):
            raise ValueError("must be (lo, hi) with 0 < lo <= hi")
        return v

    @property
    def active(self) -> bool:
        return (
            self.rotation_range != (0.0, 0.0)
            or self.translate != (0.0, 0.0)
            or self.scale != (1.0, 1.0)
            or self.shear_range != (0.0, 0.0)
            or self.crop_p > 0
            or self.brightness > 0
            or self.contrast > 0
        )

    @property
    def rotation_range(self) -> Range:
        r = self.rotation
        return (-r, r) if isinstance(r, float) else tuple(r)  # type: ignore[return-value]

    @property
    def shear_range(self) -> Range:
        s = self.shear
        return (-s, s) if isinstance(s, float) else tuple(s)  # type: ignore[return-value]


class OptimizerConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"  # torch.optim class
    lr: float = Field(0.01, gt=0)  # base learning rate (OneCycle starts from max_lr/div_factor instead)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only
    nesterov: bool = False  # SGD only
    weight_decay: float = Field(0.0, ge=0)  # L2 penalty as torch applies it (decoupled for adamw)


class SchedulerConfig(Section):
    name: Literal["none", "step", "onecycle", "plateau", "cosine"] = "none"
    # step (StepLR, stepped per epoch)
    step_size: int = Field(1, ge=1)  # epochs between decays
    gamma: float = Field(0.1, gt=0, le=1)  # decay factor
    # onecycle (OneCycleLR, stepped per batch)
    max_lr: Optional[float] = Field(None, gt=0)  # peak learning rate; default optimizer.lr
    pct_start: float = Field(0.3, gt=0, lt=1)  # fraction of the steps spent warming up
    div_factor: float = Field(25.0, gt=0)  # initial lr = max_lr / div_factor
    final_div_factor: float = Field(1e4, gt=0)  # final lr = initial lr / final_div_factor
    anneal_strategy: Literal["cos", "linear"] = "cos"
    three_phase: bool = False
    # plateau (ReduceLROnPlateau on test accuracy, stepped per epoch)
    mode: Literal["max", "min"] = "max"  # max: watches test accuracy; min: watches test loss
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(10, ge=0)
    min_lr: float = Field(0.0, ge=0)


class TrainConfig(Section):
    epochs: int = Field(1, ge=1, le=1000)  # passes over the training set
    # images per optimizer step over all processes (the seeds' batch_size): each of W processes takes
    # batch_size / W of them, so a recipe trains the same on 1, 2 or 8 GPUs (per_process_batch)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(2000, ge=1)  # test-set batch; larger is faster and changes nothing
    seed: int = Field(1, ge=0)  # seeds the permutation, augmentation, init and dropout: same seed, same run
    # autocast dtype via Accelerate, chosen where training runs (trainer/precision.py): auto -> no on
    # CPU (bf16 there is 7.5x slower), fp16 on GPUs before compute capability 8.0 (T4, V100), bf16 on
    # 8.0+ (A10G, L4, A100, H100); no / fp16 / bf16 force one (fp16 needs a GPU)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    target_accuracy: Optional[float] = Field(None, gt=0, le=1)  # stop once test accuracy reaches it
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # CrossEntropyLoss(label_smoothing=...)
    keep_checkpoints: int = Field(2, ge=1)  # last K per-epoch checkpoints kept (plus the best)
    channels_last: bool = True  # memory format for convolutions (faster with cuDNN; harmless on CPU)
    compile: bool = False  # torch.compile the model (pays a warm-up; see BENCHMARKS.md)
    log_every: int = Field(20, ge=1)  # steps between progress events (and one at each epoch's first step)
    # refuse a model with more trainable parameters than this before training starts (checked by the launcher,
    # which builds the model on this machine, and again by the trainer); None: no limit
    max_params: Optional[int] = Field(None, ge=1)


def per_process_batch(batch_size: int, processes: int) -> int:
    """Each process's share of the global ``train.batch_size``; a size the processes cannot share evenly is
    refused (uneven shares would weigh one process's images more than another's)."""
    from core.errors import ConfigError

    if processes < 1:
        raise ConfigError(f"{processes} processes: there must be at least one")
    if batch_size % processes:
        lower = batch_size // processes * processes
        fits = [b for b in (lower, lower + processes) if b]
        raise ConfigError(f"train.batch_size={batch_size} cannot be shared evenly by {processes} processes (it is the "
                          f"global batch) — use a multiple of {processes}, e.g. {' or '.join(map(str, fits))}")
    return batch_size // processes
