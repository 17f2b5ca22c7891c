"""Batched on-device augmentation: one resampling pass per batch instead of PIL per image.

Geometry (CenterCrop+Resize with a probability, RandomRotation, RandomAffine with
translate/scale/shear) is composed into one inverse affine matrix per image, using exactly
torchvision's ``_get_inverse_affine_matrix`` convention, and applied with a single
``affine_grid`` + ``grid_sample`` (bilinear). Then ColorJitter's brightness and contrast, then
normalization. Parameters mean what they mean in the torchvision transforms the seeds use.

    aug = BatchAugment(cfg.augment); x = aug(images_uint8, generator)  # float, normalized
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from core.config import AugmentConfig

MEAN, STD = 0.1307, 0.3081  # MNIST training-set pixel statistics (the seeds' Normalize)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N,1,28,28) or float in [0,1] -> normalized float."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return (x - MEAN) / STD


def _uniform(n: int, lo: float, hi: float, gen: Optional[torch.Generator], device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def inverse_affine(angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, scale: torch.Tensor,
                   shear_x: torch.Tensor, shear_y: torch.Tensor) -> torch.Tensor:
    """Batched torchvision ``_get_inverse_affine_matrix`` about the image center -> (N, 3, 3).

    Coordinates are pixels relative to the image center, y down. ``angle`` follows
    ``F.affine`` (clockwise positive); pass ``-angle`` for ``F.rotate`` semantics.
    """
    rot = torch.deg2rad(angle)
    sx = torch.deg2rad(shear_x)
    sy = torch.deg2rad(shear_y)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    m = torch.zeros(angle.shape[0], 3, 3, dtype=angle.dtype, device=angle.device)
    m[:, 0, 0], m[:, 0, 1] = d / scale, -b / scale
    m[:, 1, 0], m[:, 1, 1] = -c / scale, a / scale
    m[:, 0, 2] = m[:, 0, 0] * -tx + m[:, 0, 1] * -ty
    m[:, 1, 2] = m[:, 1, 0] * -tx + m[:, 1, 1] * -ty
    m[:, 2, 2] = 1.0
    return m


def warp(x: torch.Tensor, inv: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Resample float images (N,C,H,W) through inverse matrices in centered pixel coords.

    Matches torchvision's tensor ``F.affine``/``F.rotate`` with bilinear interpolation.
    """
    n, c, h, w = x.shape
    theta = inv[:, :2, :].clone()
    theta[:, 0, 1] *= h / w
    theta[:, 1, 0] *= w / h
    theta[:, 0, 2] /= 0.5 * w
    theta[:, 1, 2] /= 0.5 * h
    grid = F.affine_grid(theta.to(x.dtype), [n, c, h, w], align_corners=False)
    if fill == 0:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # torchvision blends a sampled mask with the fill value for bilinear interpolation
    ones = torch.ones(n, 1, h, w, dtype=x.dtype, device=x.device)
    out = F.grid_sample(torch.cat([x, ones], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    img, mask = out[:, :c], out[:, c:]
    return img * mask + (1.0 - mask) * fill


class BatchAugment:
    """Samples per-image parameters the way torchvision's transforms do, applies them in one pass.

    Order, as in the seeds' Compose: [CenterCrop(crop_size)+Resize(28) with p=crop_p] ->
    RandomRotation -> RandomAffine(translate, scale, shear) -> ColorJitter(brightness,
    contrast) -> Normalize. The three geometric steps become one matrix (one interpolation,
    where the seeds resample up to three times).
    """

    def __init__(self, cfg: AugmentConfig, size: int = 28) -> None:
        self.cfg = cfg
        self.size = size

    def sample_matrices(self, n: int, gen: Optional[torch.Generator], device) -> Optional[torch.Tensor]:
        cfg, size = self.cfg, self.size
        zeros = torch.zeros(n, device=device)
        inv = None
        # CenterCrop(k) then Resize(size): output pixel p (centered) reads input p * k / size.
        if cfg.crop_p > 0:
            hit = torch.rand(n, generator=gen, device=device) < cfg.crop_p
            s = torch.where(hit, torch.full_like(zeros, cfg.crop_size / size), torch.ones_like(zeros))
            inv = torch.diag_embed(torch.stack([s, s, torch.ones_like(s)], 1))
        lo, hi = cfg.rotation_range
        if (lo, hi) != (0.0, 0.0):
            angle = _uniform(n, lo, hi, gen, device)
            if cfg.rotation_p < 1:
                angle = torch.where(torch.rand(n, generator=gen, device=device) < cfg.rotation_p, angle, zeros)
            # RandomRotation is counter-clockwise: F.rotate passes -angle to the affine matrix
            rot = inverse_affine(-angle, zeros, zeros, torch.ones_like(zeros), zeros, zeros)
            inv = rot if inv is None else inv @ rot
        if cfg.translate != (0.0, 0.0) or cfg.scale != (1.0, 1.0) or cfg.shear_range != (0.0, 0.0):
            max_dx, max_dy = cfg.translate[0] * size, cfg.translate[1] * size
            tx = torch.round(_uniform(n, -max_dx, max_dx, gen, device))  # torchvision rounds shifts to pixels
            ty = torch.round(_uniform(n, -max_dy, max_dy, gen, device))
            scale = _uniform(n, cfg.scale[0], cfg.scale[1], gen, device)
            shx = _uniform(n, *cfg.shear_range, gen, device)
            aff = inverse_affine(zeros, tx, ty, scale, shx, zeros)
            # the later transform's inverse is applied first: out(p) = in(M_first @ M_later @ p)
            inv = aff if inv is None else inv @ aff
        return inv

    def __call__(self, images: torch.Tensor, gen: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 (N,1,H,W) on any device -> augmented, normalized float (N,1,H,W)."""
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images
        cfg, n, device = self.cfg, images.shape[0], images.device
        inv = self.sample_matrices(n, gen, device)
        if inv is not None:
            x = warp(x, inv, fill=cfg.fill / 255.0)
        if cfg.brightness > 0:
            f = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, gen, device).view(n, 1, 1, 1)
            x = (x * f).clamp_(0, 1)
        if cfg.contrast > 0:
            f = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen, device).view(n, 1, 1, 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (f * x + (1 - f) * mean).clamp_(0, 1)
        return normalize(x)
