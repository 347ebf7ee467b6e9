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

**Antialiasing: training sees the pixels evaluation sees.** The evaluation transform
(:func:`cxrkit.models.inputs.to_unit`) resizes the cache image with ``F.interpolate``
(bilinear, ``antialias=True``): a triangle filter as wide as the downscale factor. A bilinear
warp taken straight from the cache size ``S`` to a much smaller input size reads only the 2x2
source pixels nearest each output pixel, so fine detail aliases (moiré) in training that
evaluation never shows. Both executors therefore work in two steps, planned once for both by
:func:`shrink_plan` so that they still agree on the same draw:

1. **shrink** the whole image, with the evaluation transform's own filter, to the side
   ``m = round(S / k)``, where ``k = sqrt(|det A|)`` is the sampled map's downscale (source
   pixels per output pixel; rotation, flip and crop aspect leave it unchanged). Nothing is
   shrunk where ``m`` would be ``S`` (``k`` at most about 1: a zoom-in, or a cache no larger
   than the input), so those draws are warped exactly as before;
2. **warp** bilinearly from that ``m x m`` image with the map rescaled by ``m / S``, now at a
   scale of about 1 (within ``0.5 / m``; ``ratio ** +-0.5`` per axis for a crop of aspect
   ``ratio``), where a bilinear warp does not alias.

With augmentation off (scale and ratio ``(1, 1)``, no rotation, shift or jitter) ``m`` is the
input size and the warp the identity, so training output is ``eval_transform``'s output: to
float rounding on the device path, to its uint8 rounding (0.5 / 255) on the CPU path (a test
checks both on 256 -> 128, 200 -> 64 and 300 -> 224, and that the former direct warp misses by
18 to 59 gray levels there). Sampling is untouched: the same seed gives the same crops,
rotations and jitter as before.

The device path shrinks with :func:`~cxrkit.models.inputs.resize` itself, the images of one
side together (about 20 distinct sides in a batch with the default crop scale ``(0.85, 1)``,
whatever its size), pads them with zeros into one canvas, which is what ``grid_sample``'s zero
padding reads anyway, and warps the batch in one ``grid_sample`` call. The CPU path shrinks with
:func:`shrink_uint8`: the same weights, computed as torch computes them, applied as two sparse
matrix products in float32 (about 3 times faster than ``F.interpolate`` on one core) and
rounded to uint8 once, before the unchanged uint8 warp. OpenCV has no such filter:
``INTER_AREA`` (a box) differs from it by up to 34 gray levels on the test image and is, at a
factor of 2, the very 2x2 average the direct warp took. The shrink costs the CPU loader about
a third of its speed (``cxrkit bench loader``, figures in docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F

from cxrkit.models.inputs import normalize, resize
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


def shrink_plan(maps: np.ndarray, src: int) -> tuple[np.ndarray, np.ndarray]:
    """The antialiasing step shared by both executors (see the module docstring).

    ``maps`` ``(n, 2, 3)`` from :func:`sample_geometry` (output -> ``src``-pixel coordinates)
    -> ``sides`` ``(n,)``: the side each ``src x src`` image is first shrunk to (``src``: not
    shrunk), and the maps from output coordinates to those shrunk images' coordinates."""
    a = maps[:, :, :2]
    downscale = np.sqrt(np.abs(a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]))
    sides = np.rint(src / np.maximum(downscale, 1.0)).clip(1, src).astype(np.int64)
    return sides, maps * (sides / src)[:, None, None]


@functools.lru_cache(maxsize=512)
def _shrink_weights(src: int, side: int) -> scipy.sparse.csr_matrix:
    """``(side, src)`` sparse: :func:`~cxrkit.models.inputs.resize` along one axis, as a
    matrix. The weights are computed as torch's ``upsample_bilinear2d_aa`` computes them (in
    float32, PIL's rule: a triangle as wide as the scale around each output centre, cut to the
    image, normalised), so ``W @ image @ W.T`` is ``F.interpolate(antialias=True)`` to float
    rounding."""
    f32 = np.float32
    scale = f32(src) / f32(side)  # >= 1: only used to shrink
    centre = scale * (np.arange(side, dtype=f32) + f32(0.5))
    lo = np.maximum((centre - scale + f32(0.5)).astype(np.int64), 0)
    hi = np.minimum((centre + scale + f32(0.5)).astype(np.int64), src)
    taps = lo[:, None] + np.arange(int((hi - lo).max()))
    w = f32(1.0) - np.abs((taps - centre[:, None] + f32(0.5)).astype(f32) * (f32(1.0) / scale))
    w = np.where(taps < hi[:, None], np.maximum(w, f32(0.0)), f32(0.0))
    w = (w / w.sum(axis=1, keepdims=True)).astype(f32)
    rows = np.repeat(np.arange(side), taps.shape[1])
    cols = np.minimum(taps, src - 1).ravel()
    return scipy.sparse.csr_matrix((w.ravel(), (rows, cols)), shape=(side, src))


def shrink_uint8(image: np.ndarray, side: int) -> np.ndarray:
    """``(S, S)`` uint8 -> ``(side, side)`` uint8, ``side <= S``: the evaluation resize
    (:func:`~cxrkit.models.inputs.to_unit`) on the CPU: ``to_unit(image, side) * 255``
    rounded to the nearest level (within 0.5 of it, plus float32 rounding). Float32 sums of
    weights >= 0 that sum to 1 stay in [0, 255]."""
    w = _shrink_weights(image.shape[-1], side)
    # W A W^T computed as W (W A)^T, then transposed back (cv2.transpose: a fast transpose).
    rows = cv2.transpose(w @ image.astype(np.float32))
    return cv2.transpose(np.rint(w @ rows).astype(np.uint8))


def augment_uint8(
    images: np.ndarray, size: int, cfg: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """CPU executor: ``(N, S, S)`` uint8 -> augmented ``(N, size, size)`` uint8 (OpenCV).

    Each image is shrunk first where the draw downscales it (:func:`shrink_plan`); the
    loader's speed with it is in docs/benchmarks.md (``cxrkit bench loader``)."""
    n, src = images.shape[0], images.shape[-1]
    sides, maps = shrink_plan(sample_geometry(n, src, size, cfg, rng), src)
    jitter = sample_jitter(n, cfg, rng)
    # cv2 puts pixel centres at integers: shift continuous coordinates by half a pixel.
    maps[:, :, 2] += maps[:, :, 0] * 0.5 + maps[:, :, 1] * 0.5 - 0.5
    out = np.empty((n, size, size), dtype=np.uint8)
    levels = np.arange(256, dtype=np.float32)
    for i in range(n):
        image = images[i] if sides[i] == src else shrink_uint8(images[i], int(sides[i]))
        cv2.warpAffine(
            image,
            maps[i].astype(np.float32),
            (size, size),
            dst=out[i],
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        contrast, brightness = jitter[i]
        if contrast != 1.0 or brightness != 0.0:
            mean = cv2.sumElems(out[i])[0] / out[i].size  # = out[i].mean(), 20x faster
            lut = (levels - mean) * contrast + mean + brightness * 255.0
            cv2.LUT(out[i], np.clip(lut + 0.5, 0, 255).astype(np.uint8), dst=out[i])
    return out


def _shrink_batch(x: torch.Tensor, sides: np.ndarray) -> torch.Tensor:
    """``(N, 1, S, S)`` float -> ``(N, 1, M, M)``, ``M = max(sides)``: image ``i`` shrunk to
    ``sides[i]`` (images of one side together) in the top-left corner, zeros around it."""
    n, src = x.shape[0], x.shape[-1]
    big = int(sides.max())
    if (sides == src).all():
        return x
    if (sides == big).all():
        return resize(x, big)
    # One host-to-device copy of the image order by side; each group is a slice of it.
    order = np.argsort(sides, kind="stable")
    ordered = sides[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    index = torch.as_tensor(order, device=x.device)
    out = x.new_zeros((n, 1, big, big))
    for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), n], strict=True):
        side, group = int(ordered[start]), index[start:stop]
        part = x[group]
        out[group, :, :side, :side] = part if side == src else resize(part, side)
    return out


def train_transform(
    images: torch.Tensor,
    size: int,
    mean: float,
    std: float,
    cfg: AugmentConfig,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """Device executor: ``(N,1,S,S)`` uint8 on any device -> normalised ``(N,1,size,size)``.

    Each image is shrunk first where the draw downscales it (:func:`shrink_plan`)."""
    rng = rng or np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
    n, src, device = images.shape[0], images.shape[-1], images.device
    sides, maps = shrink_plan(sample_geometry(n, src, size, cfg, rng), src)
    x = _shrink_batch(images.float().div_(255.0), sides)
    side = x.shape[-1]
    # Continuous pixel coordinates -> grid_sample's [-1, 1] (align_corners=False).
    a = maps[:, :, :2] * (size / side)
    t = (maps[:, :, 2] * 2 + maps[:, :, :2].sum(axis=2) * size) / side - 1
    theta = torch.as_tensor(np.concatenate([a, t[:, :, None]], 2), dtype=torch.float32)
    grid = F.affine_grid(theta.to(device), [n, 1, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    jitter = torch.as_tensor(sample_jitter(n, cfg, rng), dtype=torch.float32, device=device)
    contrast, brightness = jitter[:, 0].view(n, 1, 1, 1), jitter[:, 1].view(n, 1, 1, 1)
    centre = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - centre) * contrast + centre + brightness).clamp_(0.0, 1.0)
    return normalize(x, mean, std)
