"""Masked multilabel losses against torch's reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrkit.config import LossConfig
from cxrkit.errors import UserError
from cxrkit.losses import (
    FocalLoss,
    MaskedBCE,
    auto_pos_weight,
    class_balanced_weights,
    create_loss,
)

torch.manual_seed(0)
LOGITS = torch.randn(16, 4)
LABELS = (torch.rand(16, 4) > 0.6).float()


def test_masked_bce_equals_torch_bce_without_nan() -> None:
    want = F.binary_cross_entropy_with_logits(LOGITS, LABELS)
    torch.testing.assert_close(MaskedBCE()(LOGITS, LABELS), want)


def test_masked_bce_ignores_nan_entries() -> None:
    labels = LABELS.clone()
    labels[::3, 1] = float("nan")
    mask = ~torch.isnan(labels)
    want = F.binary_cross_entropy_with_logits(LOGITS[mask], labels[mask])
    torch.testing.assert_close(MaskedBCE()(LOGITS, labels), want)
    # Changing the logits of masked entries changes nothing.
    moved = LOGITS.clone()
    moved[::3, 1] += 100
    torch.testing.assert_close(MaskedBCE()(moved, labels), want)


def test_pos_weight_matches_torch() -> None:
    pw = torch.tensor([1.0, 2.0, 5.0, 0.5])
    want = F.binary_cross_entropy_with_logits(LOGITS, LABELS, pos_weight=pw)
    torch.testing.assert_close(MaskedBCE(pos_weight=pw)(LOGITS, LABELS), want)


def test_focal_with_gamma_zero_is_bce_and_down_weights_easy_examples() -> None:
    torch.testing.assert_close(FocalLoss(0.0)(LOGITS, LABELS), MaskedBCE()(LOGITS, LABELS))
    easy = torch.full((2, 1), 6.0)
    target = torch.ones(2, 1)
    assert FocalLoss(2.0)(easy, target) < 0.01 * MaskedBCE()(easy, target)


def test_auto_pos_weight_and_class_balanced_weights() -> None:
    pos, neg = np.array([10.0, 0.0, 500.0]), np.array([90.0, 100.0, 500.0])
    np.testing.assert_allclose(auto_pos_weight(pos, neg), [9.0, 1.0, 1.0])
    wp, wn = class_balanced_weights(np.array([10.0]), np.array([990.0]), 0.999)
    assert wp[0] > wn[0]
    np.testing.assert_allclose((wp + wn) / 2, [1.0])


def test_class_balanced_loss_weights_each_term() -> None:
    loss = create_loss(LossConfig(name="class_balanced"), np.array([2.0] * 4), np.array([14.0] * 4))
    wp, wn = class_balanced_weights(np.array([2.0]), np.array([14.0]), 0.999)
    elementwise = F.binary_cross_entropy_with_logits(LOGITS, LABELS, reduction="none")
    want = (elementwise * torch.where(LABELS > 0, float(wp[0]), float(wn[0]))).mean()
    torch.testing.assert_close(loss(LOGITS, LABELS), want)


def test_registry_errors() -> None:
    with pytest.raises(UserError, match="did you mean 'focal'"):
        create_loss(LossConfig(name="focall"), np.ones(2), np.ones(2))
    with pytest.raises(UserError, match="pos_weight"):
        create_loss(LossConfig(pos_weight="sometimes"), np.ones(2), np.ones(2))
