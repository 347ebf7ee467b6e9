"""The model's input convention: how a uint8 image becomes what the network sees.

``(N, 1, S, S)`` uint8 (the letterboxed cache image) -> divided by 255 -> resized to the input
size (bilinear, antialiased) -> ``(x - mean) / std`` with the gray-level ``mean``/``std`` of
:func:`input_normalization`. Training's validation, evaluation, inference, CAMs and the
benchmarks all go through :func:`eval_transform` (or its two steps), so they see the same
pixels; training augmentation (:mod:`cxrkit.train.augment`) ends in :func:`normalize`, and
test-time augmentation (:func:`tta_views`) makes its views before it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, C, H, W)`` float -> ``(N, C, size, size)``: the one resize filter (bilinear,
    antialiased) that evaluation and training augmentation share."""
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def to_unit(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, 1, S, S)`` uint8 -> ``(N, 1, size, size)`` float in [0, 1] (antialiased)."""
    x = images.float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = resize(x, size)
    return x


def normalize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(x - mean) / std`` for [0, 1] inputs."""
    return (x - mean) / std


def eval_transform(images: torch.Tensor, size: int, mean: float, std: float) -> torch.Tensor:
    """Deterministic: resize and normalise. ``(N,1,S,S)`` uint8 -> ``(N,1,size,size)`` float."""
    return normalize(to_unit(images, size), mean, std)


def tta_views(images: torch.Tensor, size: int) -> list[torch.Tensor]:
    """``(N, 1, L, L)`` uint8 -> six ``(N, 1, size, size)`` [0, 1] views: identity, a 6%
    zoom-in and shifts of 3% left/right/up/down (zero padding, like the letterbox)."""
    x = to_unit(images, size)
    n = x.shape[0]
    views = [x]
    # (scale, dx, dy) in grid units: the image spans [-1, 1], so 0.06 is 3% of its width.
    for scale, dx, dy in (
        (0.94, 0.0, 0.0),
        (1.0, 0.06, 0.0),
        (1.0, -0.06, 0.0),
        (1.0, 0.0, 0.06),
        (1.0, 0.0, -0.06),
    ):
        theta = torch.tensor(
            [[scale, 0.0, dx], [0.0, scale, dy]], dtype=x.dtype, device=x.device
        ).expand(n, 2, 3)
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        views.append(
            torch.nn.functional.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
        )
    return views


def input_normalization(model: nn.Module) -> tuple[float, float]:
    """Gray-level ``(mean, std)`` for inputs in [0, 1]: the RGB means of the pretrained config."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = cfg.get("mean", (0.5, 0.5, 0.5))
    std = cfg.get("std", (0.5, 0.5, 0.5))
    return float(sum(mean) / len(mean)), float(sum(std) / len(std))
