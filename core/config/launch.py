"""The launch section of a run's config: where a cloud run goes (read by `up` and `train` without --local).

    launch: {instance: g4dn.xlarge, name: mnist, spot: true, autostop: 30m}
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from core.config.base import Section
from core.config.checks import (
    AMI_ID,
    CLUSTER_NAME,
    INSTANCE_TYPE,
    PROGRAM,
    REGION,
    check_env,
    check_remote_path,
    has_control,
)


class LaunchConfig(Section):
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
    gpus: Optional[int] = Field(None, ge=1)  # processes to launch on each node; default: every GPU
    # instances that train one run together (multi-node), in one zone; each counts in max_instances
    nodes: int = Field(1, ge=1, le=64)
    python: Optional[str] = None  # interpreter on the instance; default: the image's PyTorch env
    setup: Literal["auto", "skip"] = "auto"  # build the venv when its inputs change, or never
    remote_dir: str = "~/mnist-launch"  # code, data and runs on the instance
    env: dict[str, str] = Field(default_factory=dict)  # environment for training (sent in a 0600 file)
    max_instances: int = Field(2, ge=1)  # `up` refuses to go beyond this without --force
    ssh_cidr: Optional[str] = None  # the only source allowed to reach SSH; default: this machine's public IP as /32
    # private key to log in with (only its public half goes to AWS); default: one generated under MNIST_LAUNCH_HOME
    identity: Optional[str] = None
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
        if v is None or PROGRAM.fullmatch(v) and not v.startswith("-"):
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
        if v is not None and (not v or has_control(v) or v.startswith("-")):
            raise ValueError("must be the path of a private key file (no control characters, not starting with '-')")
        return v
