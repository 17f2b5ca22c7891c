"""The run configuration: one YAML per recipe, validated once at load, split by owner.

Every field is documented where it is declared. Unknown keys are rejected by name, types and
ranges are checked, and every message names the file (or ``--set``) and the dotted key.

- ``training.py``: model, augment, optimizer, scheduler, train (the trainer's sections)
- ``data.py``: where MNIST is and how much of it to use
- ``launch.py``: where a cloud run goes (EC2), with ``checks.py`` for values that reach a shell or AWS
- ``load.py``: the root ``Config``, YAML files, ``--set`` overrides, error lines, redaction

    cfg = load_config("configs/model3.yaml", overrides=["train.epochs=1"])
"""

from core.config.base import Range, Section
from core.config.checks import (
    AWS_ENV_ALLOWED,
    check_env,
    check_location,
    check_remote_path,
    check_s3_uri,
    has_control,
)
from core.config.data import DataConfig
from core.config.launch import LaunchConfig
from core.config.load import (
    REDACTED,
    Config,
    UserYAML,
    apply_overrides,
    config_from_yaml,
    config_to_yaml,
    format_error,
    is_env_key,
    load_config,
    load_yaml,
    parse_override,
    read_yaml,
    redact_argv,
    validate_config,
)
from core.config.training import (
    MODEL_CLAIMS,
    MODEL_NAMES,
    AugmentConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
    per_process_batch,
)

__all__ = [
    "AWS_ENV_ALLOWED", "MODEL_NAMES", "REDACTED", "AugmentConfig", "Config", "DataConfig", "LaunchConfig",
    "OptimizerConfig", "Range", "SchedulerConfig", "Section", "TrainConfig", "UserYAML", "apply_overrides",
    "check_env", "check_location", "check_remote_path", "check_s3_uri", "config_from_yaml", "config_to_yaml",
    "format_error", "has_control", "is_env_key", "load_config", "load_yaml", "parse_override", "read_yaml",
    "per_process_batch", "redact_argv", "validate_config", "MODEL_CLAIMS",
]
