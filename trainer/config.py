"""The run configuration: one YAML per recipe, validated once at load.

Every field is documented where it is declared. Unknown keys are rejected by name, types and
ranges are checked, and every message names the file (or ``--set``) and the dotted key.

    cfg = load_config("configs/model3.yaml", overrides=["train.epochs=1"])
"""

from __future__ import annotations

import re
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


# -- values that reach a shell, a path or an AWS call: checked here, once, at load -----------------

# remote paths and programs: a conservative character set, so that a value is the same word in every
# shell, log line and systemd unit it reaches (and is still quoted wherever it goes)
# (no %: cron reads it as a newline and systemd as a specifier, and both see these paths in the autostop watcher)
_PATH_PART = re.compile(r"[A-Za-z0-9._+@,=:-]+")
_PROGRAM = re.compile(r"[A-Za-z0-9._+-]+")
_CHARS = "letters, digits and . _ - + @ , = :"
INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9-]+")
AMI_ID = re.compile(r"ami-[0-9a-f]{1,32}")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")
CLUSTER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
S3_BUCKET = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")  # AWS wants 3+ characters; the charset is what matters here

# AWS_* names that may be set in launch.env: plain client settings. Every other AWS_* name is refused:
# the instance reaches AWS with its own role, and an AWS_* variable either carries credentials
# (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_SECURITY_TOKEN, ...), says where
# to find them (AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, AWS_WEB_IDENTITY_TOKEN_FILE,
# AWS_ROLE_ARN, AWS_CONTAINER_CREDENTIALS_*, AWS_CONTAINER_AUTHORIZATION_TOKEN*), or changes where the
# SDK sends them (AWS_ENDPOINT_URL*, AWS_EC2_METADATA_*). Deny by default: new credential variables
# appear with new SDK releases, and a list of known names would silently let them through.
AWS_ENV_ALLOWED = frozenset({"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
                             "AWS_DEFAULT_OUTPUT", "AWS_PAGER"})


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def check_remote_path(value: str) -> str:
    """An absolute path, ``~`` or ``~/path`` on the instance: each part of _PATH_PART's characters,
    none starting with '-', no '..'. ValueError says which rule it breaks."""
    rest = value[2:] if value.startswith("~/") else value[1:] if value.startswith("/") else None
    if value == "~" or value == "/":
        return value
    if rest is None:
        raise ValueError("must be an absolute path or ~/path on the instance")
    parts = [p for p in rest.split("/") if p]
    if not parts:
        raise ValueError("must name a folder below / or ~")
    for part in parts:
        if part == "..":
            raise ValueError("must not contain '..'")
        if part.startswith("-"):
            raise ValueError("no part of it may start with '-'")
        if not _PATH_PART.fullmatch(part):
            raise ValueError(f"use only {_CHARS} in each part (no spaces, quotes or shell characters)")
    return value


def check_s3_uri(uri: str) -> str:
    """s3://bucket[/prefix] with a real bucket name and a prefix of printable characters, no '..' part."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not S3_BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"bucket {bucket!r} is not an S3 bucket name (lowercase letters, digits, '.' and '-')")
    if _has_control(prefix) or ".." in prefix.split("/") or "\\" in prefix:
        raise ValueError("the prefix must be printable, with no '..' part")
    return uri


def check_location(value: str, what: str) -> str:
    """A store or data location: s3://bucket/prefix, or a local folder (no control characters, no
    leading '-'). Raises ConfigError naming ``what`` (the flag or key)."""
    try:
        if value.startswith("s3://"):
            check_s3_uri(value)
        elif _has_control(value):
            raise ValueError("control characters in a path")
        elif value.startswith("-"):
            raise ValueError("a path may not start with '-' (write ./" + value[:20] + "...)")
        elif not value:
            raise ValueError("empty")
    except ValueError as err:
        raise ConfigError(f"{what} {value!r}: {err} — pass s3://bucket/prefix or a folder") from None
    return value


def check_env(env: dict[str, str]) -> None:
    """launch.env: valid names, no AWS credentials (AWS_ENV_ALLOWED), values on one line without control
    characters. The message names the variable, never its value."""
    for key, val in env.items():
        if not ENV_NAME.fullmatch(key):
            raise ValueError(f"{key!r} is not a valid variable name — use letters, digits and _ (not first a digit)")
        if key.upper().startswith("AWS_") and key.upper() not in AWS_ENV_ALLOWED:
            raise ValueError(f"{key} would copy your AWS credentials (or where to find them) to the instance — remove it; "
                             "the instance reaches the store with its own role (`up --store s3://...`)")
        if _has_control(val):
            raise ValueError(f"the value of {key} holds a control character (newline, tab, escape, ...) — "
                             "give it on one line of printable characters")


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
        check_env(out)
        return out

    @field_validator("remote_dir")
    @classmethod
    def _remote_dir(cls, v: str) -> str:
        return check_remote_path(v)

    @field_validator("python")
    @classmethod
    def _python(cls, v: Optional[str]) -> Optional[str]:
        if v is None or _PROGRAM.fullmatch(v) and not v.startswith("-"):
            return v
        try:
            return check_remote_path(v)
        except ValueError as err:
            raise ValueError(f"must be a program name (python3) or a path on the instance: {err}") from None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not CLUSTER_NAME.fullmatch(v):
            raise ValueError("use 1-31 lowercase letters, digits and dashes, starting with a letter or digit")
        return v

    @field_validator("instance")
    @classmethod
    def _instance(cls, v: str) -> str:
        if not INSTANCE_TYPE.fullmatch(v) or len(v) > 40:
            raise ValueError("not an EC2 instance type — e.g. g4dn.xlarge")
        return v

    @field_validator("ami")
    @classmethod
    def _ami(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not AMI_ID.fullmatch(v):
            raise ValueError("not an image id — e.g. ami-0123456789abcdef0")
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not REGION.fullmatch(v):
            raise ValueError("not an AWS region name — e.g. us-east-1")
        return v

    @field_validator("ssh_cidr")
    @classmethod
    def _cidr(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        import ipaddress

        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError("not a CIDR — pass your address as A.B.C.D/32") from None
        return v

    @field_validator("identity")
    @classmethod
    def _identity(cls, v: Optional[str]) -> Optional[str]:
        # a local file, given to ssh and paramiko as one argument: any name a file may have, but no
        # control characters and no leading '-' (ssh would read an option)
        if v is not None and (not v or _has_control(v) or v.startswith("-")):
            raise ValueError("must be the path of a private key file (no control characters, not starting with '-')")
        return v


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

    @field_validator("store")
    @classmethod
    def _store(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            try:
                check_location(v, "store")
            except ConfigError as err:
                raise ValueError(str(err).split(": ", 1)[1].split(" — ")[0]) from None
        return v

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
        secret = loc == "launch.env" or loc.startswith("launch.env.")  # values of launch.env are never echoed
        shown = "" if secret or isinstance(given, (dict, list)) or given is None or repr(given) in msg \
            else f" (got {given!r})"
        parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")
    return "; ".join(parts)


def validate_config(data: Any, where: str) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (model:, train:, ...), got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{where}: {_format_error(err)} — fix it and run again") from None


class _UserYAML(yaml.SafeLoader):
    """YAML as users mean it: only true/false are booleans (YAML 1.2), so `mixed_precision: no`, `--set
    train.mixed_precision=no` or a value `off`/`on`/`yes` stays the string typed; a boolean field still takes
    yes/no/on/off, as pydantic reads those strings."""


_BOOL = "tag:yaml.org,2002:bool"
_UserYAML.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UserYAML.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    """A config file or a --set value, read with :class:`_UserYAML`."""
    return yaml.load(text, Loader=_UserYAML)  # noqa: S506 - a SafeLoader subclass


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.epochs=3' -> (['train', 'epochs'], 3); the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        shown = "'launch.env...'" if _is_env_key(key.split("=")[0][:10]) or key.lower().startswith("launch.env") else repr(item)
        raise ConfigError(f"--set {shown}: expected KEY=VALUE with a dotted key, e.g. --set train.epochs=3")
    if key.startswith("launch.env."):  # an environment value is taken as written: 007 stays 007, as in a shell
        return key.split("."), raw
    try:
        value = load_yaml(raw) if raw.strip() else None
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
        data = load_yaml(path.read_text())
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


def _is_env_key(key: str) -> bool:
    k = key.strip().lower()
    return k == "launch.env" or k.startswith("launch.env.")


def redact_argv(argv: list[str]) -> list[str]:
    """A command line as a run records it, with every value of ``launch.env`` replaced: ``--set
    launch.env.K=V`` and ``--set=launch.env.K=V`` keep K, ``--set 'launch.env={K: V}'`` keeps nothing
    of the mapping. Anything else is kept as typed."""
    out = []
    for arg in argv:
        flag, eq, rest = arg.partition("=")
        if flag == "--set" and eq:  # --set=KEY=VALUE
            key, sep, _ = rest.partition("=")
            out.append(f"--set={key}={REDACTED}" if sep and _is_env_key(key) else
                       f"--set={REDACTED}" if _is_env_key(key) else arg)
            continue
        key, sep, _ = arg.partition("=")
        out.append(f"{key}={REDACTED}" if sep and _is_env_key(key) else arg)
    return out


def config_from_yaml(text: str, where: str = "config.yaml") -> Config:
    try:
        return validate_config(yaml.safe_load(text), where)
    except yaml.YAMLError:
        raise ConfigError(f"{where}: YAML syntax error") from None
