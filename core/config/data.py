"""The data section of a run's config: where MNIST is, where a missing file comes from, how much a run uses.

    data: {dir: ../shared/data/mnist, train_limit: 512}
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from core.config.base import Section
from core.config.checks import check_mirror


class DataConfig(Section):
    dir: Optional[str] = None  # folder with the MNIST IDX files (flat or MNIST/raw, .gz or not); --data-dir overrides
    # where `train` downloads a missing file from, tried in order (each an http(s) folder URL); unset:
    # MNIST_LAUNCH_DATA_MIRRORS, else torchvision's mirrors
    mirrors: Optional[list[str]] = None
    train_limit: Optional[int] = Field(None, gt=0)  # use only the first N training images (fast tests, smoke runs)
    test_limit: Optional[int] = Field(None, gt=0)  # use only the first N test images

    @field_validator("mirrors")
    @classmethod
    def _mirrors(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        if value is not None and not value:
            raise ValueError("list at least one mirror, or leave data.mirrors out")
        return [check_mirror(u) for u in value] if value else value
