"""Masked multilabel losses against torch's reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrkit.errors import UserError
from cxrkit.train.config import LossConfig
from cxrkit.train.losses import (
    AsymmetricLoss,
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


def test_asymmetric_loss_against_a_hand_computed_value() -> None:
    # One positive and two negatives; p = sigmoid(logit).
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    loss = AsymmetricLoss(gamma_neg=2.0, gamma_pos=1.0, clip=0.1)(logits, labels)
    p = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0])))
    positive = -((1 - p[0]) ** 1) * np.log(p[0])  # 0.5 * log 2
    shifted = np.maximum(p[1:] - 0.1, 0)  # 0.7808, 0.1689
    negatives = -(shifted**2) * np.log(1 - shifted)
    want = (positive + negatives.sum()) / 3
    assert float(loss) == pytest.approx(want, rel=1e-6)
    # Written out: (0.5 ln 2 + 0.7808^2 * -ln 0.2192 + 0.1689^2 * -ln 0.8311) / 3
    #            = (0.34657 + 0.92528 + 0.00528) / 3
    assert float(loss) == pytest.approx(0.425712, abs=1e-5)


def test_asymmetric_loss_with_zero_focusing_and_clip_is_masked_bce() -> None:
    labels = LABELS.clone()
    labels[::4, 2] = float("nan")
    plain = AsymmetricLoss(gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    torch.testing.assert_close(plain(LOGITS, labels), MaskedBCE()(LOGITS, labels))


def test_asymmetric_loss_masks_nan_and_discards_easy_negatives() -> None:
    asl = AsymmetricLoss()  # gamma_neg 4, gamma_pos 0, clip 0.05
    labels = LABELS.clone()
    labels[::3, 1] = float("nan")
    moved = LOGITS.clone()
    moved[::3, 1] += 50  # masked entries do not count
    torch.testing.assert_close(asl(moved, labels), asl(LOGITS, labels))
    easy_negative = torch.tensor([[-4.0]])  # p = 0.018 < clip: no loss, no gradient
    easy_negative.requires_grad_(True)
    value = asl(easy_negative, torch.zeros(1, 1))
    value.backward()
    assert value.item() == 0.0 and easy_negative.grad.item() == 0.0
    saturated = torch.tensor([[30.0, -30.0]], requires_grad=True)
    AsymmetricLoss(gamma_neg=0.5, gamma_pos=0.5, clip=0.05)(saturated, torch.ones(1, 2)).backward()
    assert torch.isfinite(saturated.grad).all()


def test_asymmetric_loss_is_selectable_by_name() -> None:
    cfg = LossConfig(name="asymmetric", asl_gamma_neg=3.0, asl_gamma_pos=1.0, asl_clip=0.0)
    loss = create_loss(cfg, np.ones(4), np.ones(4))
    assert isinstance(loss, AsymmetricLoss) and (loss.gamma_neg, loss.gamma_pos) == (3.0, 1.0)
    with pytest.raises(UserError, match="did you mean 'asymmetric'"):
        create_loss(LossConfig(name="asymetric"), np.ones(2), np.ones(2))
    with pytest.raises(UserError, match="asl_clip"):
        create_loss(LossConfig(name="asymmetric", asl_clip=1.5), np.ones(2), np.ones(2))
