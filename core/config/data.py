"""The data section of a run's config: where MNIST is and how much of it a run uses.

    data: {dir: ../shared/data/mnist, train_limit: 512}
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from core.config.base import Section


class DataConfig(Section):
    dir: Optional[str] = None  # folder with the MNIST IDX files (flat or MNIST/raw, .gz or not); --data-dir overrides
    train_limit: Optional[int] = Field(None, gt=0)  # use only the first N training images (fast tests, smoke runs)
    test_limit: Optional[int] = Field(None, gt=0)  # use only the first N test images
