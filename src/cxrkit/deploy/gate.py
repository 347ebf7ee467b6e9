"""The input gate at prediction time: is this image like the model's training images?

Every prediction of a model whose card has a ``gate`` (fitted by ``cxrkit gate`` or at the end
of ``cxrkit train``, :mod:`cxrkit.deploy.gate_fit`) carries a :class:`Verdict`:

* ``ood_score``: the feature distance of :class:`cxrkit.models.gate.FeatureGate` (penultimate
  features of the same forward pass that gave the probabilities), or ``inf`` when a structural
  check failed, so that ``in_distribution == (ood_score <= threshold)`` always holds and sorting
  by the score puts those images last. (In JSON, where ``inf`` does not exist, it is ``null``;
  the reasons say why.)
* ``in_distribution``: False when a structural check failed or the distance is above the
  threshold (set so that a share ``false_alarm_rate`` of validation images is flagged).
* ``reasons``: short strings, e.g. ``colour photograph``, ``blank image``,
  ``feature distance 412.3 > 97.1``; empty when in distribution.

The structural checks (:func:`structural_reasons`) look at the decoded file before the model:

* ``colour photograph``: :attr:`XRay.colour` above :data:`COLOUR_LIMIT` (the mean spread of
  R, G, B over pixels; skimage's colour photographs score 0.15-0.44, a radiograph saved as RGB
  0.00, skimage's Hubble deep field 0.02-0.03: mostly black with coloured stars);
* ``blank image``: gray-level standard deviation under :data:`BLANK_STD` (chest films: 28 or
  more on the NIH sample, 34 or more on the phantoms);
* ``saturated image``: more than :data:`SATURATED_FRACTION` of pixels at 0 or 255 (NIH sample at
  most 26%, phantoms at most 11%);
* ``aspect ratio A:1``: the long side over :data:`MAX_ASPECT` times the short one (film sizes
  are 35x43 cm, 43x35 cm or 35x35 cm: at most 1.23);
* ``inverted radiograph``: :func:`inversion_contrast` below :data:`INVERSION_LIMIT`. The
  heuristic: in a bone-bright frontal film the mediastinum and spine (the middle column) are
  brighter than the lung fields beside them; in a negative they are darker. Measured on the 118
  NIH sample films: contrast 0.047 or more (the 1% quantile 0.09), their negatives -0.047 or
  less; 800 phantoms 0.29 or more, negatives -0.29 or less. So no film and every negative of
  these was classified right; a lateral film or a non-chest image gives no meaningful value
  (and the feature distance judges those).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxrkit.io.xray import XRay
from cxrkit.models.gate import FeatureGate

COLOUR_LIMIT = 0.015
BLANK_STD = 4.0
SATURATED_FRACTION = 0.6
MAX_ASPECT = 2.0
INVERSION_LIMIT = -0.02
CHECKS = ("colour photograph", "blank image", "saturated image", "aspect ratio", "inverted")
NO_GATE_WARNING = (
    "no input gate: fit one with `cxrkit gate --checkpoint ... --data ...` "
    "(out-of-distribution images are not flagged)"
)
#: the pixels per side the pixel statistics look at most (a regular sub-sampling grid)
SAMPLES = 512


def _sampled(pixels: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> a regular grid of at most about ``SAMPLES x SAMPLES`` of its pixels."""
    step = max(1, max(pixels.shape) // SAMPLES)
    return pixels[::step, ::step]


def inversion_contrast(pixels: np.ndarray) -> float:
    """``(H, W)`` uint8 -> (median of the middle column - median of the lung fields) / 255.

    Middle column: rows 20-80%, columns 42-58%; lung fields: rows 25-65%, columns 18-35% and
    65-82%. Positive for a bone-bright frontal chest film, negative for its negative."""
    p = _sampled(pixels)
    h, w = p.shape
    middle = p[int(0.2 * h) : int(0.8 * h), int(0.42 * w) : int(0.58 * w)]
    rows = slice(int(0.25 * h), int(0.65 * h))
    lungs = np.concatenate(
        [
            p[rows, int(0.18 * w) : int(0.35 * w)].ravel(),
            p[rows, int(0.65 * w) : int(0.82 * w)].ravel(),
        ]
    )
    if not middle.size or not lungs.size:
        return 0.0
    return (float(np.median(middle)) - float(np.median(lungs))) / 255.0


def structural_reasons(xray: XRay) -> list[str]:
    """The structural checks of the module docstring on a decoded image; [] when all pass."""
    reasons = []
    if xray.colour > COLOUR_LIMIT:
        reasons.append("colour photograph")
    p = _sampled(xray.pixels)
    if float(p.std()) < BLANK_STD:
        reasons.append("blank image")
    elif float(((p == 0) | (p == 255)).mean()) > SATURATED_FRACTION:
        reasons.append("saturated image")
    height, width = xray.pixels.shape
    aspect = max(height, width) / max(1, min(height, width))
    if aspect > MAX_ASPECT:
        reasons.append(f"aspect ratio {aspect:.1f}:1")
    if not reasons and inversion_contrast(xray.pixels) < INVERSION_LIMIT:
        reasons.append("inverted radiograph")
    return reasons


@dataclass(frozen=True)
class Verdict:
    """One image's gate result (see the module docstring)."""

    ood_score: float
    in_distribution: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def csv_cells(self) -> list[str]:
        """The ``ood_score`` and ``in_distribution`` cells of an infer CSV row."""
        return [
            f"{self.ood_score:.4f}" if math.isfinite(self.ood_score) else "inf",
            str(int(self.in_distribution)),
        ]


class InputGate:
    """The card's feature gate plus the structural checks."""

    def __init__(self, features: FeatureGate, card_entry: dict[str, Any]):
        self.features = features
        self.entry = card_entry

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> InputGate | None:
        """The gate of ``card``; None for a card without one (an older model)."""
        entry = card.get("gate")
        return cls(FeatureGate.from_dict(entry), entry) if entry else None

    @property
    def threshold(self) -> float:
        return self.features.threshold

    @property
    def false_alarm_rate(self) -> float:
        return self.features.false_alarm_rate

    def judge(self, features: np.ndarray, structural: Sequence[Sequence[str]]) -> list[Verdict]:
        """``(N, D)`` features and each image's structural reasons -> ``N`` verdicts."""
        scores = self.features.score(features)
        flagged = self.features.flags(scores)
        verdicts = []
        for score, out, checks in zip(scores, flagged, structural, strict=True):
            reasons = list(checks)
            if out:
                reasons.append(f"feature distance {score:.1f} > {self.threshold:.1f}")
            verdicts.append(
                Verdict(
                    ood_score=math.inf if checks else float(score),
                    in_distribution=not reasons,
                    reasons=tuple(reasons),
                )
            )
        return verdicts

    def api(self, verdict: Verdict) -> dict[str, Any]:
        """``input_gate`` of a ``/v1/predict`` answer (``ood_score`` inf becomes null there)."""
        return {
            "ood_score": verdict.ood_score,
            "in_distribution": verdict.in_distribution,
            "reasons": list(verdict.reasons),
            "threshold": self.threshold,
            "false_alarm_rate": self.false_alarm_rate,
        }

    def summary(self) -> dict[str, Any]:
        """What ``/v1/model`` and records say about the gate (no arrays)."""
        summary = {k: v for k, v in self.entry.items() if k != "arrays"}
        summary["structural_checks"] = list(CHECKS)
        return summary


def refusal(verdict: Verdict) -> str:
    """The error of a ``--refuse-ood`` row: ``outside the training distribution (reasons)``."""
    return f"outside the training distribution ({'; '.join(verdict.reasons)})"
