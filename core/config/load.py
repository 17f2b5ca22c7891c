"""The root of a run's config and how it is read: YAML files, ``--set`` overrides, error lines.

Every message names the file (or ``--set``) and the dotted key; ``launch.env`` values are never
echoed nor kept (``config_to_yaml``, ``redact_argv``).

    cfg = load_config("configs/model3.yaml", overrides=["train.epochs=1"])
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from core.config.base import Section
from core.config.checks import check_location
from core.config.data import DataConfig
from core.config.launch import LaunchConfig
from core.config.text import may_be_unset, read_typed, takes_text, type_at
from core.config.training import (
    MODEL_NAMES,
    AugmentConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
    model_file,
)
from core.errors import ConfigError


class Config(Section):
    model: str  # a name from `mnist-launch models`, or PATH.py:ClassName: a class in a file of the project
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
        try:
            is_file = model_file(self.model) is not None
        except ValueError as err:
            raise ValueError(f"model: {err}") from None
        if not is_file and self.model not in MODEL_NAMES:
            raise ValueError(f"model: unknown model '{self.model}' (known: {', '.join(sorted(MODEL_NAMES))}; "
                             "or a class in a file of the project, PATH.py:ClassName)")
        return self


def format_error(err: ValidationError) -> str:
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
        raise ConfigError(f"{where}: {format_error(err)} — fix it and run again") from None


def load_yaml(text: str) -> Any:
    """A config file's text as the user means it (:mod:`core.config.text`): `mixed_precision: no` is 'no',
    `description: 007` is '007', `data.dir: null` is unset, `train.seed: 010` is 10."""
    return read_typed(text, Config)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.epochs=3' -> (['train', 'epochs'], 3); 'train.mixed_precision=no' -> (..., 'no'), as in a file."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        shown = ("'launch.env...'" if is_env_key(key.split("=")[0][:10]) or key.lower().startswith("launch.env")
                 else repr(item))
        raise ConfigError(f"--set {shown}: expected KEY=VALUE with a dotted key, e.g. --set train.epochs=3")
    if key.startswith("launch.env."):  # an environment value is taken as written: 007 stays 007, as in a shell
        return key.split("."), raw
    path = key.split(".")
    field = type_at(Config, path)
    if not raw.strip():  # `--set data.dir=` unsets it; `--set description=` is the empty text
        return path, "" if takes_text(field) and not may_be_unset(field) else None
    try:  # read as the field at `key` reads it: the text typed for a text field, YAML for the rest
        value = read_typed(raw, field)
    except yaml.YAMLError:
        value = raw
    if takes_text(field) and not isinstance(value, (str, type(None))):
        value = raw.strip()  # `--set description=a: b` or `=[x]` is that text, not a mapping or list
    return path, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
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
        return validate_config(apply_overrides(data, overrides),
                               f"{path} with --set {' '.join(redact_argv(overrides))}")
    return validate_config(data, str(path))


REDACTED = "<redacted>"


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as a run keeps it; ``launch.env`` values (secrets, maybe) are not kept."""
    data = cfg.model_dump(mode="json")
    data["launch"]["env"] = {k: REDACTED for k in data["launch"].get("env") or {}}
    return yaml.safe_dump(data, sort_keys=False)


def is_env_key(key: str) -> bool:
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
            out.append(f"--set={key}={REDACTED}" if sep and is_env_key(key) else
                       f"--set={REDACTED}" if is_env_key(key) else arg)
            continue
        key, sep, _ = arg.partition("=")
        out.append(f"{key}={REDACTED}" if sep and is_env_key(key) else arg)
    return out


def config_from_yaml(text: str, where: str = "config.yaml") -> Config:
    try:
        return validate_config(yaml.safe_load(text), where)
    except yaml.YAMLError:
        raise ConfigError(f"{where}: YAML syntax error") from None
