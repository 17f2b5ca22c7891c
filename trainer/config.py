"""The run configuration: one YAML per recipe, validated once at load.

Every field is documented where it is declared. Unknown keys are rejected by name, types and
ranges are checked, and every message names the file (or ``--set``) and the dotted key.

    cfg = load_config("configs/model3.yaml", overrides=["train.epochs=1"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.errors import ConfigError

Range = tuple[float, float]


class _Section(BaseModel):
    # Reject unknown keys by name (STYLE.md: accelerate's config dataclasses do the same).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    dir: Optional[str] = None  # folder with the MNIST IDX files (flat or MNIST/raw, .gz or not); --data-dir overrides
    train_limit: Optional[int] = Field(None, gt=0)  # use only the first N training images (fast tests, smoke runs)
    test_limit: Optional[int] = Field(None, gt=0)  # use only the first N test images


class AugmentConfig(_Section):
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


class OptimizerConfig(_Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"  # torch.optim class
    lr: float = Field(0.01, gt=0)  # base learning rate (OneCycle starts from max_lr/div_factor instead)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only
    nesterov: bool = False  # SGD only
    weight_decay: float = Field(0.0, ge=0)  # L2 penalty as torch applies it (decoupled for adamw)


class SchedulerConfig(_Section):
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


class TrainConfig(_Section):
    epochs: int = Field(1, ge=1, le=1000)  # passes over the training set
    batch_size: int = Field(128, ge=1)  # images per step per process (the seeds' batch_size)
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
    log_every: int = Field(20, ge=1)  # steps between progress events


class LaunchConfig(_Section):
    """Where a cloud run goes; read by `up` and `train` without --local."""

    instance: str = "g4dn.xlarge"  # EC2 instance type
    name: str = "mnist"  # cluster name (tag) to reuse or create
    region: Optional[str] = None  # AWS region; default: the boto3 chain's
    spot: bool = False  # request a spot instance
    disk_gb: int = Field(100, ge=30)  # root volume (the DLAMI needs ~75 GB)
    ami: Optional[str] = None  # image id; default: the image ami_parameter names
    # SSM parameter naming the default image (the PyTorch Deep Learning AMI's; where it is missing, the
    # newest image of that name is used); e.g. /aws/service/deeplearning/ami/x86_64/.../latest/ami-id
    ami_parameter: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_./-]{1,2048}$")
    autostop: str = "60m"  # idle time before the instance stops itself ('off' to disable)
    autostop_terminate: bool = False  # autostop terminates the instance instead of stopping it (spot always terminates)
    gpus: Optional[int] = Field(None, ge=1)  # processes to launch; default: every GPU
    python: Optional[str] = None  # interpreter on the instance; default: the image's PyTorch env
    setup: Literal["auto", "skip"] = "auto"  # build the venv when its inputs change, or never
    remote_dir: str = "~/mnist-launch"  # code, data and runs on the instance
    env: dict[str, str] = Field(default_factory=dict)  # environment for training (sent in a 0600 file)
    max_instances: int = Field(2, ge=1)  # `up` refuses to go beyond this without --force
    ssh_cidr: Optional[str] = None  # the only source allowed to reach SSH; default: this machine's public IP as /32
    identity: Optional[str] = None  # private key to log in with (only its public half goes to AWS); default: one generated under MNIST_LAUNCH_HOME
    timeout: str = "15m"  # how long `up` waits for running, status checks and SSH (e.g. 90s, 15m)

    @field_validator("env", mode="before")
    @classmethod
    def _env_as_strings(cls, value: Any) -> Any:
        """Numbers and booleans become strings (`--set launch.env.RETRIES=3`, YAML `DEBUG: true`), as a shell
        would export them; anything else is refused by name, never by echoing a value that may be a secret."""
        if not isinstance(value, dict):
            raise ValueError("expected a mapping of NAME: value")
        out = {}
        for key, val in value.items():
            if isinstance(val, bool):
                val = "true" if val else "false"
            elif isinstance(val, (int, float)):
                val = str(val)
            elif not isinstance(val, str):
                raise ValueError(f"{key} must be a string, number or boolean, "
                                 f"not {'empty' if val is None else type(val).__name__}")
            out[str(key)] = val
        return out


class Config(_Section):
    model: str  # a name from `mnist-launch models`
    description: str = ""  # one line shown by `runs`
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    store: Optional[str] = None  # artifact store: a folder or s3://bucket/prefix; default ./runs

    @model_validator(mode="after")
    def _known_model(self) -> "Config":
        from trainer.models import MODELS  # local import: models import torch

        if self.model not in MODELS:
            raise ValueError(f"model: unknown model '{self.model}' (known: {', '.join(sorted(MODELS))})")
        return self


def _format_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            section = ".".join(str(p) for p in e["loc"][:-1])
            msg = f"unknown key '{loc}'" + (f" (not a field of '{section}')" if section else "")
            parts.append(msg)
            continue
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        given = e.get("input")
        shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {given!r})"
        parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")
    return "; ".join(parts)


def validate_config(data: Any, where: str) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (model:, train:, ...), got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{where}: {_format_error(err)} — fix it and run again") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.epochs=3' -> (['train', 'epochs'], 3); the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set train.epochs=3")
    if key.startswith("launch.env."):  # an environment value is taken as written: 007 stays 007, as in a shell
        return key.split("."), raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {redact_argv([item])[0]}: '{'.'.join(path[: i + 1])}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: Union[str, Path]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found — pass a path such as configs/model3.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty — it needs at least 'model: NAME'")
    return data


def load_config(path: Union[str, Path], overrides: Optional[list[str]] = None) -> Config:
    """Read, validate, apply ``--set`` overrides, validate again (errors say which stage)."""
    data = read_yaml(path)
    validate_config(data, str(path))
    if overrides:
        return validate_config(apply_overrides(data, overrides), f"{path} with --set {' '.join(redact_argv(overrides))}")
    return validate_config(data, str(path))


REDACTED = "<redacted>"


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as a run keeps it; ``launch.env`` values (secrets, maybe) are not kept."""
    data = cfg.model_dump(mode="json")
    data["launch"]["env"] = {k: REDACTED for k in data["launch"].get("env") or {}}
    return yaml.safe_dump(data, sort_keys=False)


def redact_argv(argv: list[str]) -> list[str]:
    """A command line as a run records it: ``--set launch.env.K=V`` keeps K, not V."""
    out = []
    for arg in argv:
        key, sep, _ = arg.partition("=")
        out.append(f"{key}={REDACTED}" if sep and key.startswith("launch.env") else arg)
    return out


def config_from_yaml(text: str, where: str = "config.yaml") -> Config:
    try:
        return validate_config(yaml.safe_load(text), where)
    except yaml.YAMLError:
        raise ConfigError(f"{where}: YAML syntax error") from None
