"""Image transforms on whole uint8 batches, on whichever device the batch is (CPU or GPU).

The loader only slices the uint8 cache; every pixel operation happens here, batched:
``(N, 1, S, S)`` uint8 -> ``(N, 1, size, size)`` float32 normalised for the backbone.
Training adds a random resized crop, small rotation and shift (one affine grid per image),
and brightness/contrast jitter. Horizontal flip is off by default: the heart's side is
anatomy, and a flipped dextrocardia-like image is not a realistic training sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxrkit.config import AugmentConfig


def to_unit(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, 1, S, S)`` uint8 -> ``(N, 1, size, size)`` float in [0, 1] (antialiased)."""
    x = images.float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x


def normalize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(x - mean) / std`` for [0, 1] inputs."""
    return (x - mean) / std


def eval_transform(images: torch.Tensor, size: int, mean: float, std: float) -> torch.Tensor:
    """Deterministic: resize and normalise. ``(N,1,S,S)`` uint8 -> ``(N,1,size,size)`` float."""
    return normalize(to_unit(images, size), mean, std)


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def random_affine_grid(n: int, size: int, cfg: AugmentConfig, device: torch.device) -> torch.Tensor:
    """``(n, size, size, 2)`` sampling grids: random resized crop + rotation + shift per image."""
    area = _uniform(n, *cfg.scale, device)
    log_r = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), device)
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    # Crop centre anywhere the crop stays inside the image, plus the configured shift.
    cx = (torch.rand(n, device=device) * 2 - 1) * (1 - w) + _uniform(
        n, -1, 1, device
    ) * cfg.translate
    cy = (torch.rand(n, device=device) * 2 - 1) * (1 - h) + _uniform(
        n, -1, 1, device
    ) * cfg.translate
    angle = _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, device) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([w * cos, -h * sin, cx], dim=1),
            torch.stack([w * sin, h * cos, cy], dim=1),
        ],
        dim=1,
    )
    if cfg.hflip:
        flip = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
        theta[:, :, 0] *= flip[:, None]
    return F.affine_grid(theta, [n, 1, size, size], align_corners=False)


def train_transform(
    images: torch.Tensor, size: int, mean: float, std: float, cfg: AugmentConfig
) -> torch.Tensor:
    """Random augmentation of a uint8 batch ``(N,1,S,S)`` -> normalised ``(N,1,size,size)``."""
    n, device = images.shape[0], images.device
    x = to_unit(images, size)
    x = F.grid_sample(
        x,
        random_affine_grid(n, size, cfg, device),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    if cfg.contrast > 0 or cfg.brightness > 0:
        contrast = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, device).view(n, 1, 1, 1)
        brightness = _uniform(n, -cfg.brightness, cfg.brightness, device).view(n, 1, 1, 1)
        centre = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - centre) * contrast + centre + brightness).clamp_(0.0, 1.0)
    return normalize(x, mean, std)
