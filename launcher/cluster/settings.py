"""What the cluster commands read before touching AWS: names, durations, the region, the key, and a
config's launch: section merged with the flags (flags win). Each bad value is one ConfigError line.

    launch, store, explicit_type = launch_settings("configs/model3.yaml", {"instance": "g5.xlarge"})
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from core import settings
from core.config import LaunchConfig, check_location, format_error, read_yaml
from core.errors import ConfigError
from infra import home
from infra.aws import configured_region, known_region

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


def parse_duration(text: str, what: str) -> Optional[float]:
    """'90s' / '15m' / '2h' / '600' -> seconds; 'off' -> None."""
    t = str(text).strip().lower()
    if t in ("off", "none", "0"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", t)
    if not m:
        raise ConfigError(f"{what} {text!r}: expected a duration such as 90s, 30m or 2h (or 'off')")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError(f"--name {name!r}: use 1-31 lowercase letters, digits and dashes, "
                          "starting with a letter or digit")
    return name


def default_region(region: Optional[str], name: Optional[str] = None) -> str:
    """--region, else the cluster's cached region, else the boto3 chain's, else us-east-1."""
    if region:
        if not known_region(region):
            raise ConfigError(f"--region {region!r}: not an EC2 region — use one such as us-east-1 or eu-west-1")
        return region
    cached = home.read_cluster_cache(name).get("region") if name else None
    return str(cached) if cached else configured_region()


def launch_settings(config_path: Optional[str], flags: dict[str, Any]) -> tuple[LaunchConfig, Optional[str], bool]:
    """(launch settings, store, instance type given explicitly) from a config file and flags."""
    data: dict[str, Any] = {}
    store = None
    where = "flags"
    if config_path:
        raw = read_yaml(config_path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{config_path}: expected a mapping with a launch: section")
        data = dict(raw.get("launch") or {})
        store = raw.get("store")
        where = config_path
    given = {k: v for k, v in flags.items() if v is not None and k != "store"}
    explicit_type = "instance" in given or "instance" in data
    try:
        launch = LaunchConfig.model_validate({**data, **given})
    except ValidationError as err:
        # a bad flag is named as typed (--name 'x y': ...), a bad key of the file by the file and key
        first = err.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        if field in given and field != "env" and first["type"] == "value_error":
            msg = first["msg"].removeprefix("Value error, ")
            raise ConfigError(f"--{field.replace('_', '-')} {given[field]!r}: {msg} — fix it and run again") from None
        raise ConfigError(f"{where}: {format_error(err)} — fix it and run again") from None
    store = flags.get("store") or store
    if store is not None:
        check_location(str(store), "--store" if flags.get("store") else f"{where}: store")
    return launch, store, explicit_type


def identity_for(launch_identity: Optional[str], create: bool) -> Optional[Path]:
    """The private key to log in with: --identity, else ours under MNIST_LAUNCH_HOME (made if ``create``)."""
    if launch_identity:
        path = Path(launch_identity).expanduser()
        if not path.is_file():
            raise ConfigError(f"--identity {launch_identity}: no such file — "
                              "pass a private key (its .pub is read if present)")
        return path
    if create:
        return home.ensure_default_key()
    path = home.default_key_path()
    return path if path.exists() else None


def autostop_home() -> str:
    """Where the autostop watcher lives on the instance."""
    return settings.autostop_home()  # tests point it into a temporary folder
