"""An example of your own model: `model: configs/examples/tiny_net.py:TinyNet` (configs/examples/tiny_net.yaml).

Any torch.nn.Module whose __init__ takes no arguments and whose forward maps (N, 1, 28, 28) normalized
images to (N, 10) logits will do. 3,778 parameters.
"""

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),  # 26
            nn.MaxPool2d(2),  # 13
            nn.Conv2d(8, 16, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(),  # 11
            nn.MaxPool2d(2),  # 5
            nn.Conv2d(16, 16, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(),  # 3
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))  # global average pooling, then 10 logits
