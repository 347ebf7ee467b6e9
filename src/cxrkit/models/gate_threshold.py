"""Where the input gate draws its line: thresholds on calibration scores.

A gate's threshold is a high quantile of the scores of images known to be in distribution
(the calibration scores). Two rules:

* :func:`conformal_threshold`: the ``ceil((n + 1)(1 - a))``-th smallest of ``n`` scores. A new
  exchangeable image exceeds it with probability at most ``a`` *on average over the draw of
  the calibration images*; one draw of a small set can sit far from that average (on the
  demo's 127 validation films, test shares of 1.0-9.7% between the 10th and 90th percentile
  of patient-wise redraws).
* :func:`pac_threshold`: the ``(n - k)``-th smallest, with ``k`` the largest count for which
  ``P(Binomial(n, a) <= k) <= 1 - confidence``. Then *with probability at least
  ``confidence`` over the draw* the share of new exchangeable images above it is at most
  ``a`` (a training-conditional, or tolerance-interval, guarantee: if the true ``1 - a``
  quantile ``t`` were above the threshold, at most ``k`` of the scores would exceed ``t``,
  which has probability ``P(Binomial(n, a) <= k)``). It needs more scores, hence the
  held-out training scores of :func:`out_of_fold_scores`.

:func:`out_of_fold_scores` scores each training image with a gate fitted without its patient:
``GroupKFold`` by patient, so no film is scored by a fit that saw another film of the same
patient. The ``RULE_*`` strings name the rule in the card's ``threshold_rule``, and
:func:`threshold_summary` puts a card's threshold in words for ``cxrkit gate`` and
``MODEL_CARD.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import binom
from sklearn.model_selection import GroupKFold

from cxrkit.errors import UserError

DEFAULT_CONFIDENCE = 0.9  #: the probability, over the calibration draw, that the rate holds
FOLDS = 5  #: folds of the held-out training scores
#: below this p-value the validation images exceed the pooled threshold too often to be
#: exchangeable with the held-out training images (see :func:`exceeds_too_often`)
CONSISTENCY_P = 0.01
#: a fold's fit must keep this share of the training rows at least (with 5 folds 60%: no
#: patient holds so many films that scoring them leaves a small fit)
MIN_FIT_SHARE = 1.0 - 2.0 / FOLDS

#: the card's ``threshold_rule``: how the threshold was set
RULE_PAC = (
    "pac: at most false_alarm_rate of in-distribution images flagged with probability "
    f"confidence, on held-out training scores ({FOLDS} folds by patient) and val scores"
)
RULE_VAL = "conformal (1 - false_alarm_rate) quantile of val scores"
RULE_VAL_FALLBACK = (
    f"{RULE_VAL} (val images exceeded the pooled threshold too often to be like the "
    "held-out training images)"
)
RULE_VAL_FEW = (
    f"{RULE_VAL} (too few patients or calibration images for held-out training scores, or one "
    "patient with too many of the films)"
)


def check_confidence(confidence: float) -> float:
    """``confidence`` as a float in (0, 1); a UserError otherwise."""
    if not (isinstance(confidence, int | float) and 0.0 < float(confidence) < 1.0):
        raise UserError(f"the gate's confidence must be in (0, 1), e.g. 0.9; got {confidence}")
    return float(confidence)


def threshold_summary(gate: dict[str, Any]) -> str:
    """A card ``gate`` entry's threshold in words: its value, what it was set on, the promise
    and the shares it flags there (``cxrkit gate``'s line and ``MODEL_CARD.md`` both)."""
    g, rate = gate, gate["false_alarm_rate"]
    if g.get("threshold_rule") == RULE_PAC:
        return (
            f"{g['threshold']:.1f}, set on {g['n_held_out']} held-out training images ({FOLDS} "
            f"folds by patient) and {g['n_val']} validation images so that at most {rate:.1%} "
            f"of in-distribution images are flagged with {g['confidence']:.0%} confidence; it "
            f"flags {g['held_out_false_alarm_rate']:.1%} of those training and "
            f"{g['val_false_alarm_rate']:.1%} of those validation images"
        )
    rule = str(g.get("threshold_rule", RULE_VAL))
    reason = rule[len(RULE_VAL) :].strip(" ()") if rule.startswith(RULE_VAL) else ""
    return (
        f"{g['threshold']:.1f}, set on {g['n_val']} validation images so that {rate:.1%} of "
        f"in-distribution images are flagged on average; it flags "
        f"{g['val_false_alarm_rate']:.1%} of them"
        + (f" (on validation alone: {reason})" if reason else "")
    )


def conformal_threshold(scores: np.ndarray, false_alarm_rate: float) -> float:
    """The ``ceil((n + 1)(1 - a))``-th smallest of ``scores`` ``(n,)``: a new exchangeable
    score exceeds it with probability at most ``a``. Needs ``n >= ceil(1 / a) - 1``
    (:func:`min_validation_images`): with fewer, the rank passes ``n`` and no threshold keeps
    that promise (the largest score only bounds the rate by ``1 / (n + 1)``), a UserError."""
    if len(scores) < min_validation_images(false_alarm_rate):
        raise UserError(
            f"a false-alarm rate of {false_alarm_rate:g} needs at least "
            f"{min_validation_images(false_alarm_rate)} validation images to set its threshold, "
            f"got {len(scores)}; ask a rate of at least {1 / (len(scores) + 1):.3g} or prepare "
            "a larger validation split"
        )
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    rank = math.ceil((len(ordered) + 1) * (1.0 - false_alarm_rate))
    return float(ordered[min(rank, len(ordered)) - 1])


def min_validation_images(false_alarm_rate: float) -> int:
    """The fewest validation scores for which :func:`conformal_threshold` keeps its promise."""
    return max(1, math.ceil(1.0 / false_alarm_rate - 1e-9) - 1)


def allowed_exceedances(n: int, false_alarm_rate: float, confidence: float) -> int:
    """``k`` of :func:`pac_threshold` for ``n`` scores; -1 when even ``k = 0`` is too many
    (``(1 - a)^n > 1 - confidence``: too few scores for the promise)."""
    counts = np.arange(n + 1)
    ok = counts[binom.cdf(counts, n, false_alarm_rate) <= 1.0 - confidence]
    return int(ok.max()) if len(ok) else -1


def min_calibration_images(false_alarm_rate: float, confidence: float) -> int:
    """The fewest scores for which :func:`pac_threshold` keeps its promise (45 for a rate of
    5% at 90% confidence, 230 for 1%)."""
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - false_alarm_rate) - 1e-9)


def pac_threshold(scores: np.ndarray, false_alarm_rate: float, confidence: float) -> float:
    """The ``(n - k)``-th smallest of ``scores`` ``(n,)`` (module docstring): with probability
    ``confidence`` over the draw of the scores, new exchangeable scores exceed it with
    probability at most ``false_alarm_rate``. A UserError with too few scores."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    k = allowed_exceedances(len(ordered), false_alarm_rate, confidence)
    if k < 0:
        raise UserError(
            f"a false-alarm rate of {false_alarm_rate:g} at {confidence:.0%} confidence needs "
            f"at least {min_calibration_images(false_alarm_rate, confidence)} calibration "
            f"images, got {len(ordered)}; ask a larger rate or prepare more images"
        )
    return float(ordered[len(ordered) - 1 - k])


def exceeds_too_often(scores: np.ndarray, threshold: float, false_alarm_rate: float) -> bool:
    """True when so many of ``scores`` ``(n,)`` exceed ``threshold`` that a share of at most
    ``false_alarm_rate`` is implausible: ``P(Binomial(n, a) >= count) < CONSISTENCY_P``."""
    count = int(np.sum(np.asarray(scores) > threshold))
    return bool(binom.sf(count - 1, len(scores), false_alarm_rate) < CONSISTENCY_P)


def out_of_fold_scores(
    fit_score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    train: np.ndarray,
    groups: np.ndarray,
    folds: int = FOLDS,
) -> np.ndarray | None:
    """``(N,)`` held-out scores of training rows ``train`` ``(N, D)``: ``fit_score(fit_rows,
    score_rows)`` fits on the rows of the other folds and scores the fold's rows; folds by
    ``groups`` ``(N,)`` (patient ids, compared as text). None when there are fewer patients
    than folds, or a fold would fit on fewer than 10 rows or under :data:`MIN_FIT_SHARE` of
    them (one patient with most of the films: its held-out scores would come from a small
    fit, run high and set the line too loose)."""
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != len(train):
        raise UserError(f"{groups.shape} patient ids for {len(train)} training rows")
    groups = groups.astype(str)
    if len(np.unique(groups)) < folds:
        return None
    splits = list(GroupKFold(n_splits=folds).split(train, groups=groups))
    smallest = min(len(fit_rows) for fit_rows, _ in splits)
    if smallest < max(10, MIN_FIT_SHARE * len(train)):
        return None
    scores = np.empty(len(train), dtype=np.float64)
    for fit_rows, held_out in splits:
        scores[held_out] = fit_score(train[fit_rows], train[held_out])
    return scores
