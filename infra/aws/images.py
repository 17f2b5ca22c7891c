"""Which image an instance boots: --ami, the SSM parameter naming the Deep Learning AMI, or (where that
parameter is missing) the newest image published under its name; its login user and root snapshot size.

    image = Images(clients).resolve(None)   # -> Image(id="ami-...", user="ubuntu", root_gb=75, ...)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from botocore.exceptions import ClientError

from core.errors import AWSError
from infra.aws.clients import Clients, Regional
from infra.aws.errors import error_code
from infra.provider import ClusterSpec, Step

# The AWS Deep Learning AMI (PyTorch, GPU, Ubuntu 22.04), resolved per region; logs in as ubuntu.
# Another parameter: launch.ami_parameter; another image: --ami.
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-2.7-ubuntu-22.04/latest/ami-id"
DLAMI_USER = "ubuntu"
# Where the parameter is missing (a region it is not published in, a retired version): the newest image
# Amazon publishes under the same family's name, e.g.
# "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.7 (Ubuntu 22.04) 20250602".
DLAMI_OWNER = "amazon"
DLAMI_NAME_PATTERN = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch * (Ubuntu 22.04) *"


@dataclass(frozen=True)
class Image:
    """The image an instance boots from, as DescribeImages tells it."""

    id: str
    name: str
    root_device: str  # e.g. /dev/sda1: the device the root volume's settings go to
    root_gb: Optional[int]  # its root snapshot's size: a smaller root volume is refused by RunInstances
    user: str  # the login user of its family
    note: Optional[str] = None  # how it was found when not the usual way (a fallback by name)

    def root_volume_gb(self, asked: int) -> int:
        """The root volume's size: what was asked, but never below the image's own snapshot."""
        return max(asked, self.root_gb or 0)


def _user_of_family(text: str) -> Optional[str]:
    n = text.lower()
    if "ubuntu" in n:
        return "ubuntu"
    if "debian" in n:
        return "admin"
    if "amzn" in n or "amazon linux" in n or "al2023" in n:
        return "ec2-user"
    return None


def user_for_image(name: str, description: str = "") -> str:
    """The login user follows the image's family: its name first (a Deep Learning AMI's name says
    "(Ubuntu 22.04)" or "(Amazon Linux 2023)"), then its description; an unknown family: ubuntu."""
    return _user_of_family(name) or _user_of_family(description) or DLAMI_USER


def image_steps(spec: ClusterSpec, image: Image) -> list[Step]:
    """The plan's lines about the image: which one (and how it was found), and the root volume
    when the image's own snapshot is larger than --disk-gb (RunInstances refuses a smaller one)."""
    steps = [Step("image", "reuse", f"{image.id} ({image.name or 'no name'}), login user {image.user}")]
    if image.note:
        steps.append(Step("image", "find", image.note))
    disk = image.root_volume_gb(spec.disk_gb)
    if disk != spec.disk_gb:
        steps.append(Step("root volume", "raise", f"{disk} GB, not {spec.disk_gb}: the image's root snapshot is "
                          f"{image.root_gb} GB (--disk-gb / launch.disk_gb {spec.disk_gb} raised to it)"))
    return steps


class Images(Regional):
    """One region's images, through ``clients`` (EC2 and SSM)."""

    def __init__(self, clients: Clients) -> None:
        super().__init__(clients)
        self.parameter = DLAMI_PARAMETER  # the SSM parameter naming the region's default image

    def resolve(self, ami: Optional[str], parameter: Optional[str] = None) -> Image:
        """The image to boot: ``ami`` (--ami) if given, else the one the SSM ``parameter`` names (default
        ``self.parameter``, the Deep Learning AMI's), else, where that parameter is missing, the
        newest image Amazon publishes under the Deep Learning AMI's name (with a note saying so)."""
        ec2 = self.clients.ec2
        if not ami:
            parameter = parameter or self.parameter
            try:
                ami = self.clients.ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
            except ClientError as err:
                if error_code(err) != "ParameterNotFound":
                    raise
                img = self._newest_dlami()
                if img is None:
                    raise AWSError(
                        f"no PyTorch Deep Learning AMI in {self.region}: SSM parameter {parameter} not found and no "
                        f"image named '{DLAMI_NAME_PATTERN}' owned by {DLAMI_OWNER} — pass --ami AMI_ID, set "
                        "launch.ami_parameter, or pick another --region"
                    ) from None
                return self._image(img, note=(
                    f"SSM parameter {parameter} not found in {self.region}: using the newest image named like the "
                    f"Deep Learning AMI, {img['ImageId']} ({img.get('Name', '?')}, "
                    f"created {img.get('CreationDate', '?')})"))
        try:
            images = ec2.describe_images(ImageIds=[ami])["Images"]
        except ClientError as err:
            if error_code(err).startswith("InvalidAMIID"):
                images = []
            else:
                raise
        if not images:
            raise AWSError(f"image {ami} not found in {self.region} — check --ami (images are per region)")
        return self._image(images[0])

    def _newest_dlami(self) -> Optional[dict[str, Any]]:
        images = self.clients.ec2.describe_images(Owners=[DLAMI_OWNER], Filters=[
            {"Name": "name", "Values": [DLAMI_NAME_PATTERN]},
            {"Name": "architecture", "Values": ["x86_64"]},
            {"Name": "state", "Values": ["available"]},
        ])["Images"]
        # ISO 8601 times in one format sort as text; the name (it ends in a date) breaks ties
        return max(images, key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")), default=None)

    @staticmethod
    def _image(img: dict[str, Any], note: Optional[str] = None) -> Image:
        root = img.get("RootDeviceName", "/dev/sda1")
        size = next((m.get("Ebs", {}).get("VolumeSize") for m in img.get("BlockDeviceMappings", [])
                     if m.get("DeviceName") == root), None)
        return Image(id=img["ImageId"], name=img.get("Name", ""), root_device=root,
                     root_gb=int(size) if size else None,
                     user=user_for_image(img.get("Name", ""), img.get("Description", "")), note=note)
