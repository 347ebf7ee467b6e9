"""Training augmentation on uint8 images: two executors, one sampler.

Random geometry (random resized crop, rotation, shift, optional flip) and intensity jitter
(contrast around the image mean, brightness) are sampled once by :func:`sample_geometry` /
:func:`sample_jitter` and applied by either

- :func:`augment_uint8`: OpenCV ``warpAffine`` + a lookup table per image, on uint8, in the
  loader worker (the fast path on CPUs: thousands of images/s per core), or
- :func:`train_transform`: ``grid_sample`` on a whole ``(N, 1, S, S)`` uint8 batch on any
  torch device (the GPU path: the batch travels as uint8 and is augmented on the GPU).

Both draw from the same distribution. Horizontal flip is off by default: the heart's side is
anatomy, not noise. Geometry uses continuous pixel coordinates (pixel ``i`` spans
``[i, i + 1)``); a sampled matrix maps output coordinates to source coordinates.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cxrkit.models.inputs import normalize
from cxrkit.train.config import AugmentConfig


def sample_geometry(
    n: int, src: int, dst: int, cfg: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """``(n, 2, 3)`` affine maps from ``dst``-pixel output coordinates to ``src`` coordinates:
    a random crop (area fraction ``cfg.scale``, aspect ``cfg.ratio``) anywhere inside the
    image, shifted by up to ``cfg.translate`` of the side, rotated by up to ``cfg.rotate_deg``,
    mirrored with probability 0.5 when ``cfg.hflip``."""
    area = rng.uniform(*cfg.scale, n)
    ratio = np.exp(rng.uniform(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), n))
    w = np.minimum(np.sqrt(area * ratio), 1.0) * src
    h = np.minimum(np.sqrt(area / ratio), 1.0) * src
    shift = cfg.translate * src
    cx = src / 2 + rng.uniform(-1, 1, n) * (src - w) / 2 + rng.uniform(-1, 1, n) * shift
    cy = src / 2 + rng.uniform(-1, 1, n) * (src - h) / 2 + rng.uniform(-1, 1, n) * shift
    angle = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg, n))
    sx, sy = w / dst, h / dst
    if cfg.hflip:
        sx = sx * np.where(rng.random(n) < 0.5, -1.0, 1.0)
    cos, sin = np.cos(angle), np.sin(angle)
    a = np.stack([np.stack([cos * sx, -sin * sy], -1), np.stack([sin * sx, cos * sy], -1)], 1)
    centre = np.full((n, 2), dst / 2)
    t = np.stack([cx, cy], -1) - np.einsum("nij,nj->ni", a, centre)
    return np.concatenate([a, t[:, :, None]], axis=2)


def sample_jitter(n: int, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """``(n, 2)``: contrast factor around the image mean, and brightness shift in [0, 1] units."""
    return np.stack(
        [
            rng.uniform(1 - cfg.contrast, 1 + cfg.contrast, n),
            rng.uniform(-cfg.brightness, cfg.brightness, n),
        ],
        axis=1,
    )


def augment_uint8(
    images: np.ndarray, size: int, cfg: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """CPU executor: ``(N, S, S)`` uint8 -> augmented ``(N, size, size)`` uint8 (OpenCV)."""
    n, src = images.shape[0], images.shape[-1]
    maps = sample_geometry(n, src, size, cfg, rng)
    jitter = sample_jitter(n, cfg, rng)
    # cv2 puts pixel centres at integers: shift continuous coordinates by half a pixel.
    maps[:, :, 2] += maps[:, :, 0] * 0.5 + maps[:, :, 1] * 0.5 - 0.5
    out = np.empty((n, size, size), dtype=np.uint8)
    levels = np.arange(256, dtype=np.float32)
    for i in range(n):
        cv2.warpAffine(
            images[i],
            maps[i].astype(np.float32),
            (size, size),
            dst=out[i],
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        contrast, brightness = jitter[i]
        if contrast != 1.0 or brightness != 0.0:
            mean = float(out[i].mean())
            lut = (levels - mean) * contrast + mean + brightness * 255.0
            cv2.LUT(out[i], np.clip(lut + 0.5, 0, 255).astype(np.uint8), dst=out[i])
    return out


def train_transform(
    images: torch.Tensor,
    size: int,
    mean: float,
    std: float,
    cfg: AugmentConfig,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """Device executor: ``(N,1,S,S)`` uint8 on any device -> normalised ``(N,1,size,size)``."""
    rng = rng or np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
    n, src, device = images.shape[0], images.shape[-1], images.device
    maps = sample_geometry(n, src, size, cfg, rng)
    # Continuous pixel coordinates -> grid_sample's [-1, 1] (align_corners=False).
    a = maps[:, :, :2] * (size / src)
    t = (maps[:, :, 2] * 2 + maps[:, :, :2].sum(axis=2) * size) / src - 1
    theta = torch.as_tensor(np.concatenate([a, t[:, :, None]], 2), dtype=torch.float32)
    grid = F.affine_grid(theta.to(device), [n, 1, size, size], align_corners=False)
    x = F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    ).div_(255.0)
    jitter = torch.as_tensor(sample_jitter(n, cfg, rng), dtype=torch.float32, device=device)
    contrast, brightness = jitter[:, 0].view(n, 1, 1, 1), jitter[:, 1].view(n, 1, 1, 1)
    centre = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - centre) * contrast + centre + brightness).clamp_(0.0, 1.0)
    return normalize(x, mean, std)
