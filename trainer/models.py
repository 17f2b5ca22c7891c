"""The model zoo: the compact MNIST CNNs of the five seed recipes (../shared/seeds/).

Every model takes ``(N, 1, 28, 28)`` normalized images and returns ``(N, 10)`` logits (the
seeds' ``log_softmax`` + NLL is the same loss as logits + CrossEntropy). ``MODELS`` maps each
config's stem to its class, seed file and claim.

    model = build_model("model3"); count_params(model)  # 7736
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, pad: int = 0, p_drop: float = 0.0) -> nn.Sequential:
    """Conv (no bias: BN has one) -> BN -> ReLU [-> Dropout], the seeds' usual block."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    if p_drop:
        layers.append(nn.Dropout(p_drop))
    return nn.Sequential(*layers)


class SkeletonNet(nn.Module):
    """Seed 004_3bd9a3d41f1d9b8d.txt, Part-1: the light skeleton (no BN, no dropout).

    The seed shows only an image of its summary (8,716 parameters, best test 98.87%); this is
    our design in its spirit: two 3x3 blocks, a 1x1 transition, a second 3x3 stage, and a big
    final 4x4 kernel instead of GAP (which Part-2 then removes). 6,568 parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, bias=False), nn.ReLU(),  # 26
            nn.Conv2d(8, 16, 3, bias=False), nn.ReLU(),  # 24
            nn.MaxPool2d(2),  # 12
            nn.Conv2d(16, 8, 1, bias=False), nn.ReLU(),  # 12
            nn.Conv2d(8, 16, 3, bias=False), nn.ReLU(),  # 10
            nn.Conv2d(16, 16, 3, bias=False), nn.ReLU(),  # 8
            nn.Conv2d(16, 10, 1, bias=False), nn.ReLU(),  # 8
            nn.MaxPool2d(2),  # 4
            nn.Conv2d(10, 10, 4, bias=False),  # 1: the last big kernel
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


class LightGapNet(nn.Module):
    """Seed 004_3bd9a3d41f1d9b8d.txt, Part-2: BN, dropout and GAP; 3,704 parameters (<= 3,964).

    The seed's summary is an image; like it, this removes Part-1's big last kernel in favour
    of global average pooling and a 1x1 classifier.
    """

    def __init__(self, p_drop: float = 0.05) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 8, p_drop=p_drop),  # 26
            conv_bn(8, 8, p_drop=p_drop),  # 24
            nn.MaxPool2d(2),  # 12
            conv_bn(8, 8, p_drop=p_drop),  # 10
            conv_bn(8, 16, p_drop=p_drop),  # 8
            conv_bn(16, 8),  # 6
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(8, 10, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


class EC2Net(nn.Module):
    """Seed 004_3bd9a3d41f1d9b8d.txt, Part-3: the model trained on EC2; 7,736 parameters (<= 7,926).

    Claim: >= 99.4% test accuracy within 15 epochs (best 99.48%), with rotation 15 degrees,
    a 10% chance of CenterCrop(22)+Resize(28), and an LR scheduler.
    """

    def __init__(self, p_drop: float = 0.05) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 8, p_drop=p_drop),  # 26
            conv_bn(8, 16, p_drop=p_drop),  # 24
            nn.Conv2d(16, 10, 1, bias=False),  # 24: 1x1 transition
            nn.MaxPool2d(2),  # 12
            conv_bn(10, 16, p_drop=p_drop),  # 10
            conv_bn(16, 16, p_drop=p_drop),  # 8
            conv_bn(16, 16),  # 6
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(16, 10, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


class Model4(nn.Module):
    """Seed 000_cedc7f1e9801118b.txt, Model_4: exactly its layer table; 7,194 parameters.

    The table's rows sum to 7,194 while its total says 7,204. The rows are what the seed's
    "no bias in convolutional layers" describes, so the final 1x1 conv has no bias here
    (a bias there would add the missing 10).
    """

    def __init__(self, p_drop: float = 0.05) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 6, pad=1, p_drop=p_drop),  # 28
            conv_bn(6, 12, pad=1, p_drop=p_drop),  # 28
            nn.MaxPool2d(2),  # 14
            conv_bn(12, 24, pad=1, p_drop=p_drop),  # 14
            conv_bn(24, 12, pad=1, p_drop=p_drop),  # 14
            nn.MaxPool2d(2),  # 7
            conv_bn(12, 10, pad=1, p_drop=p_drop),  # 7
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(10, 10, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


class FCBaseline(nn.Module):
    """Seed 001_0b3a81bf58e92569.txt, Model_1: two convs, two pools, two linear layers; 26,698 parameters.

    The seed prints 15,106 for it too, which repeats Model_2's count; its layers give 26,698.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 7 * 7, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class FCDropout(nn.Module):
    """Seed 001_0b3a81bf58e92569.txt, Model_2: narrower convs and Dropout(0.2); 15,106 parameters.

    The seed lists one dropout module; it is applied after each pooled conv and before fc2,
    the placement its "added dropout" text suggests.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(6, 12, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.dropout = nn.Dropout(0.2)
        self.fc1 = nn.Linear(12 * 7 * 7, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.dropout(self.pool(F.relu(self.conv2(x))))
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


class OneEpochNet(nn.Module):
    """Seed 002_1cec889a9c8ecd1e.txt, Net: five convs with a residual 1x1; 8,530 parameters.

    The residual (``conv_res``) is taken after pool1 and added to conv4's output before pool2,
    the only place where its 24 channels and 14x14 size match.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.dropout1 = nn.Dropout(0.03)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(24)
        self.dropout2 = nn.Dropout(0.03)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv_res = nn.Conv2d(24, 24, 1)
        self.conv3 = nn.Conv2d(24, 16, 1)
        self.bn3 = nn.BatchNorm2d(16)
        self.conv4 = nn.Conv2d(16, 24, 3, padding=1)
        self.bn4 = nn.BatchNorm2d(24)
        self.dropout3 = nn.Dropout(0.03)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.conv5 = nn.Conv2d(24, 10, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout1(F.relu(self.bn1(self.conv1(x))))
        x = self.pool1(self.dropout2(F.relu(self.bn2(self.conv2(x)))))
        res = self.conv_res(x)
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.dropout3(F.relu(self.bn4(self.conv4(x))))
        x = self.pool2(x + res)
        return self.gap(self.conv5(x)).flatten(1)


class Gap19kNet(nn.Module):
    """Seed 003_716314f9133d09a3.txt, Net: six conv+BN blocks, GAP and a linear head; 19,114 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.pool1, self.drop1 = nn.MaxPool2d(2, 2), nn.Dropout(0.05)
        self.conv3, self.bn3 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv4, self.bn4 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.pool2, self.drop2 = nn.MaxPool2d(2, 2), nn.Dropout(0.05)
        self.conv5, self.bn5 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv6, self.bn6 = nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32)
        self.drop3 = nn.Dropout(0.05)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.drop1(self.pool1(F.relu(self.bn2(self.conv2(x)))))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.drop2(self.pool2(F.relu(self.bn4(self.conv4(x)))))
        x = F.relu(self.bn5(self.conv5(x)))
        x = self.drop3(F.relu(self.bn6(self.conv6(x))))
        return self.fc(self.gap(x).flatten(1))


def sep_bn(cin: int, cout: int) -> nn.Sequential:
    """Depthwise-separable 3x3: a per-channel 3x3 (no BN between, as in Xception), a 1x1 mixing
    the channels, then BN -> ReLU. ``9*cin + cin*cout`` weights where a full 3x3 has ``9*cin*cout``."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class RecordNet(nn.Module):
    """Our own recipe (configs/record.yaml): 99.4% with fewer than 4,000 parameters.

    A full 3x3 (1->16, 26x26), then depthwise-separable 3x3s: 16->24 (24), pool (12), 24->24 (10),
    24->24 (8), 24->32 (6), GAP, a 1x1 classifier. Separable convs buy three times the width of
    the first version (full 3x3s 1->8->8, pool, 8->10->12->12: 3,964 params, 99.26%) for fewer
    parameters. 3,800 parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 16),  # 26
            sep_bn(16, 24),  # 24
            nn.MaxPool2d(2),  # 12
            sep_bn(24, 24),  # 10
            sep_bn(24, 24),  # 8
            sep_bn(24, 32),  # 6
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(32, 10, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the config's stem and the `model:` key
    factory: Callable[[], nn.Module]
    seed: str  # seed recipe file (../shared/seeds/)
    claim: str  # the seed's stated result
    budget: int  # the most parameters the recipe allows
    claim_accuracy: Optional[float] = None  # the claim as a final test accuracy every seed must reach (sweeps)


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("model1", SkeletonNet, "004_3bd9a3d41f1d9b8d.txt", "Part-1: best test 98.87%, 8,716 params", 8716,
                  0.9887),
        ModelSpec("model2", LightGapNet, "004_3bd9a3d41f1d9b8d.txt", "Part-2: best test 98.69%, 3,964 params", 3964,
                  0.9869),
        ModelSpec(
            "model3", EC2Net, "004_3bd9a3d41f1d9b8d.txt",
            "Part-3: >= 99.4% within 15 epochs (best 99.48%), 7,926 params", 7926, 0.994,
        ),
        ModelSpec("model4", Model4, "000_cedc7f1e9801118b.txt", "Model_4: best test 99.1-99.3% in <= 15 epochs", 7204,
                  0.991),
        ModelSpec("fc_baseline", FCBaseline, "001_0b3a81bf58e92569.txt", "Model_1: best 98.80% in 11-12 epochs", 26698,
                  0.988),
        ModelSpec("fc_dropout", FCDropout, "001_0b3a81bf58e92569.txt", "Model_2: best 98.80% in 11-12 epochs", 15106,
                  0.988),
        ModelSpec("one_epoch", OneEpochNet, "002_1cec889a9c8ecd1e.txt", ">= 95% test accuracy after 1 epoch", 25000,
                  0.95),
        ModelSpec("gap_19k", Gap19kNet, "003_716314f9133d09a3.txt", ">= 99.4% within 20 epochs (99.49% at 20)", 20000,
                  0.994),
        ModelSpec("record", RecordNet, "(ours)", "target: >= 99.4% final in 15 epochs with < 4,000 params", 3999,
                  0.994),
    ]
}


def build_model(name: str) -> nn.Module:
    return MODELS[name].factory()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def summarize(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> list[dict]:
    """torchsummary-style rows: one per leaf module, with its output shape and parameters."""
    rows: list[dict] = []
    hooks = []

    def hook(module: nn.Module, _inp, out) -> None:
        rows.append(
            {
                "layer": f"{type(module).__name__}-{len(rows) + 1}",
                "output_shape": [-1, *list(out.shape[1:])],
                "params": sum(p.numel() for p in module.parameters(recurse=False)),
            }
        )

    for m in model.modules():
        if not list(m.children()):
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(input_shape, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return rows
