"""Training augmentation (both executors) and the evaluation transform it must reduce to."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrkit.errors import UserError
from cxrkit.models.inputs import eval_transform
from cxrkit.train.augment import augment_uint8, train_transform
from cxrkit.train.config import AugmentConfig
from cxrkit.train.module import augment_on_device

IDENTITY = AugmentConfig(
    scale=(1.0, 1.0),
    ratio=(1.0, 1.0),
    rotate_deg=0.0,
    translate=0.0,
    brightness=0.0,
    contrast=0.0,
    hflip=False,
)


def _batch(n: int = 4, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)


def test_eval_transform_shape_range_and_normalisation() -> None:
    x = eval_transform(_batch(), 16, mean=0.5, std=0.25)
    assert x.shape == (4, 1, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -2.0 - 1e-6 and x.max() <= 2.0 + 1e-6
    same = eval_transform(_batch(), 32, mean=0.0, std=1.0)
    torch.testing.assert_close(same, _batch().float() / 255)


def test_identity_augmentation_equals_eval_transform() -> None:
    torch.manual_seed(1)
    got = train_transform(_batch(), 32, 0.4, 0.2, IDENTITY)
    torch.testing.assert_close(got, eval_transform(_batch(), 32, 0.4, 0.2), atol=1e-4, rtol=0)


def test_cpu_identity_augmentation_is_exact() -> None:
    images = _batch()[:, 0].numpy()
    out = augment_uint8(images, 32, IDENTITY, np.random.default_rng(0))
    np.testing.assert_array_equal(out, images)


def test_cpu_and_device_executors_agree_on_the_same_draw() -> None:
    smooth = torch.nn.functional.avg_pool2d(_batch(6, 64).float(), 5, 1, 2).to(torch.uint8)
    cfg = AugmentConfig(
        scale=(0.6, 1.0), rotate_deg=10.0, translate=0.05, brightness=0.1, contrast=0.2
    )
    cpu = augment_uint8(smooth[:, 0].numpy(), 48, cfg, np.random.default_rng(7)).astype(float)
    dev = train_transform(smooth, 48, 0.0, 1 / 255, cfg, np.random.default_rng(7))[:, 0].numpy()
    assert np.abs(cpu - dev).mean() < 1.0, "same crop/rotation/jitter, up to uint8 rounding"


def test_augmentation_placement() -> None:
    assert not augment_on_device(AugmentConfig(), "cpu")
    assert augment_on_device(AugmentConfig(), "cuda")
    assert augment_on_device(AugmentConfig(on="device"), "cpu")
    with pytest.raises(UserError, match="augment.on"):
        augment_on_device(AugmentConfig(on="gpu"), "cpu")


def test_random_augmentation_varies_per_image_and_keeps_shape() -> None:
    torch.manual_seed(2)
    images = _batch(1).repeat(6, 1, 1, 1)
    out = train_transform(images, 24, 0.5, 0.5, AugmentConfig())
    assert out.shape == (6, 1, 24, 24)
    assert not torch.allclose(out[0], out[1])


def test_no_horizontal_flip_by_default() -> None:
    image = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    image[..., :, 24:] = 255  # bright on the image right, like the heart
    cfg = AugmentConfig(
        scale=(0.9, 1.0), rotate_deg=3.0, translate=0.02, brightness=0.0, contrast=0.0
    )
    torch.manual_seed(3)
    out = train_transform(image.repeat(64, 1, 1, 1), 32, 0.0, 1.0, cfg)
    right, left = out[..., 16:].mean(dim=(1, 2, 3)), out[..., :16].mean(dim=(1, 2, 3))
    assert (right > left).all()
    flipped = train_transform(
        image.repeat(64, 1, 1, 1),
        32,
        0.0,
        1.0,
        AugmentConfig(hflip=True, brightness=0.0, contrast=0.0),
    )
    assert (flipped[..., 16:].mean(dim=(1, 2, 3)) < flipped[..., :16].mean(dim=(1, 2, 3))).any()
