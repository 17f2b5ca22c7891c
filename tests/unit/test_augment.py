import math

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from core.config import AugmentConfig
from trainer.augment import MEAN, STD, BatchAugment, inverse_affine, normalize, warp


def images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 6:22, 9:19] = torch.randint(50, 256, (n, 1, 16, 10), generator=g, dtype=torch.uint8)
    return x


def one(v):
    return torch.tensor([float(v)])


@pytest.mark.parametrize("angle,translate,scale,shear", [
    (17.0, (3, -2), 1.1, (8.0, 0.0)),
    (-30.0, (0, 5), 0.9, (-5.0, 3.0)),
    (0.0, (-4, 0), 1.0, (0.0, 0.0)),
])
def test_warp_equals_torchvision_affine(angle, translate, scale, shear):
    x = torch.rand(1, 1, 28, 28)
    ref = TF.affine(x, angle=angle, translate=list(translate), scale=scale, shear=list(shear),
                    interpolation=InterpolationMode.BILINEAR)
    inv = inverse_affine(one(angle), one(translate[0]), one(translate[1]), one(scale), one(shear[0]), one(shear[1]))
    assert torch.allclose(warp(x, inv), ref, atol=1e-5)


def test_rotation_is_counter_clockwise_like_torchvision_rotate_with_fill():
    x = torch.rand(1, 1, 28, 28)
    ref = TF.rotate(x, 25.0, interpolation=InterpolationMode.BILINEAR, fill=[0.3])
    z = torch.zeros(1)
    assert torch.allclose(warp(x, inverse_affine(one(-25.0), z, z, torch.ones(1), z, z), fill=0.3), ref, atol=1e-5)


def test_identity_at_zero_strength():
    x = images()
    aug = BatchAugment(AugmentConfig())
    assert not AugmentConfig().active
    assert torch.allclose(aug(x), normalize(x))
    # explicit zero ranges and probabilities are the identity too
    cfg = AugmentConfig(rotation=0, translate=(0, 0), scale=(1, 1), shear=0, crop_p=0, brightness=0, contrast=0)
    assert torch.allclose(BatchAugment(cfg)(x), normalize(x))


def angles_of(inv):
    # for pure rotations the inverse matrix is [[cos, -sin], [sin, cos]] of the clockwise angle
    return torch.rad2deg(torch.atan2(inv[:, 1, 0], inv[:, 0, 0]))


def test_rotation_angles_cover_the_configured_range_and_no_more():
    aug = BatchAugment(AugmentConfig(rotation=15))
    inv = aug.sample_matrices(4000, torch.Generator().manual_seed(0), "cpu")
    a = angles_of(inv)
    assert a.abs().max() <= 15.0 + 1e-4
    assert a.min() < -14 and a.max() > 14  # uniform over (-15, 15)
    assert abs(a.mean().item()) < 0.5


def test_shifts_are_whole_pixels_within_translate_fraction():
    aug = BatchAugment(AugmentConfig(translate=(0.1, 0.2)))
    inv = aug.sample_matrices(4000, torch.Generator().manual_seed(0), "cpu")
    tx, ty = -inv[:, 0, 2], -inv[:, 1, 2]
    assert torch.equal(tx, tx.round()) and torch.equal(ty, ty.round())
    assert tx.abs().max() == 3 and ty.abs().max() == 6  # round(uniform(-2.8, 2.8)), round(uniform(-5.6, 5.6))


def test_scale_range():
    aug = BatchAugment(AugmentConfig(scale=(0.9, 1.1)))
    inv = aug.sample_matrices(2000, torch.Generator().manual_seed(0), "cpu")
    s = 1 / inv[:, 0, 0]
    assert s.min() >= 0.9 - 1e-6 and s.max() <= 1.1 + 1e-6 and s.min() < 0.91 and s.max() > 1.09


def test_center_crop_then_resize_happens_with_its_probability_and_zooms_by_28_over_22():
    aug = BatchAugment(AugmentConfig(crop_p=0.1, crop_size=22))
    inv = aug.sample_matrices(20000, torch.Generator().manual_seed(0), "cpu")
    zoomed = torch.isclose(inv[:, 0, 0], torch.tensor(22 / 28))
    assert 0.09 < zoomed.float().mean().item() < 0.11
    # on an image, the zoom matches CenterCrop(22) + Resize(28) up to resampling
    x = images(1).float() / 255
    ref = TF.resize(TF.center_crop(x, 22), [28, 28], interpolation=InterpolationMode.BILINEAR, antialias=False)
    out = warp(x, torch.diag(torch.tensor([22 / 28, 22 / 28, 1.0]))[None])
    assert (out - ref).abs().mean() < 0.03


def test_brightness_factor_statistics():
    x = torch.full((20000, 1, 28, 28), 100, dtype=torch.uint8)
    out = BatchAugment(AugmentConfig(brightness=0.2))(x, torch.Generator().manual_seed(0))
    factor = (out * STD + MEAN)[:, 0, 0, 0] / (100 / 255)
    assert factor.min() >= 0.8 - 1e-4 and factor.max() <= 1.2 + 1e-4
    assert abs(factor.mean().item() - 1.0) < 0.01
    assert abs(factor.std().item() - 0.4 / math.sqrt(12)) < 0.01  # uniform(0.8, 1.2)


def test_contrast_keeps_the_mean_and_scales_deviations():
    # mid-grey images, so no pixel clips at 0 or 255 (torchvision clamps too)
    x = torch.randint(80, 170, (2000, 1, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    out = BatchAugment(AugmentConfig(contrast=0.5))(x, torch.Generator().manual_seed(0)) * STD + MEAN
    base = x.float() / 255
    assert torch.allclose(out.mean(dim=(1, 2, 3)), base.mean(dim=(1, 2, 3)), atol=1e-4)
    ratio = out.std(dim=(1, 2, 3)) / base.std(dim=(1, 2, 3))  # each image's contrast factor
    # ColorJitter(contrast=0.5) draws the factor from uniform(0.5, 1.5): the whole range, and no more
    assert ratio.min() >= 0.5 - 1e-3 and ratio.max() <= 1.5 + 1e-3
    assert ratio.min() < 0.55 and ratio.max() > 1.45
    assert abs(ratio.mean().item() - 1.0) < 0.03 and abs(ratio.std().item() - 1 / math.sqrt(12)) < 0.02


def test_fill_value_paints_uncovered_area():
    x = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    cfg = AugmentConfig(translate=(0.5, 0.5), fill=255)
    out = BatchAugment(cfg)(x.expand(200, -1, -1, -1), torch.Generator().manual_seed(0)) * STD + MEAN
    shifted = out.amax(dim=(1, 2, 3)) > 0.99  # wherever the image moved, white fill came in
    assert shifted.float().mean() > 0.8


def test_same_generator_seed_gives_the_same_batch():
    x, aug = images(), BatchAugment(AugmentConfig(rotation=10, translate=(0.1, 0.1), brightness=0.2))
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
