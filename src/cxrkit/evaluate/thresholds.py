"""Per-class decision thresholds that turn scores into positive/negative calls.

Tune thresholds on the validation split only and apply them unchanged to the test split:
thresholds chosen on test labels make the reported sensitivity and specificity optimistic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from cxrkit.errors import UserError, did_you_mean
from cxrkit.evaluate.metrics import (
    Floats,
    Ints,
    one_class_columns,
    threshold_counts,
    validate_inputs,
)

#: Threshold used for a class that lacks positives or negatives in the tuning split.
FALLBACK_THRESHOLD = 0.5


def _f1(tp: Ints, fp: Ints, n_pos: int, n_neg: int) -> Floats:
    """F1 = 2 tp / (2 tp + fp + fn), where tp + fn = n_pos."""
    return 2 * tp / (tp + fp + n_pos)


def _youden(tp: Ints, fp: Ints, n_pos: int, n_neg: int) -> Ints:
    """Youden's J = tp / n_pos - fp / n_neg, scaled by n_pos * n_neg to compare exactly."""
    return tp * n_neg - fp * n_pos


_OBJECTIVES: dict[str, Callable[[Ints, Ints, int, int], np.ndarray]] = {
    "f1": _f1,
    "youden": _youden,
}
#: Methods that maximise an objective. Also accepted: ``sensitivity:<target>`` (the highest
#: threshold whose sensitivity reaches the target, i.e. the most specific such operating point)
#: and ``specificity:<target>`` (the lowest threshold whose specificity reaches the target,
#: i.e. the most sensitive one).
METHODS = tuple(_OBJECTIVES)
TARGETS = ("sensitivity", "specificity")


def _target_index(method: str, tp: Ints, fp: Ints) -> int:
    """Index into the descending thresholds for a ``sensitivity:x``/``specificity:x`` method."""
    kind, _, value = method.partition(":")
    target = float(value)
    n_pos, n_neg = int(tp[-1]), int(fp[-1])
    if kind == "sensitivity":
        return int(np.argmax(tp >= target * n_pos - 1e-9))  # tp rises: first that reaches it
    ok = np.flatnonzero(n_neg - fp >= target * n_neg - 1e-9)
    return int(ok[-1]) if ok.size else 0  # fp rises: last that still reaches it


def check_method(method: str) -> None:
    """Raise a UserError for an unknown method or a target outside (0, 1]."""
    kind, sep, value = method.partition(":")
    if sep and kind in TARGETS:
        try:
            if 0 < float(value) <= 1:
                return
        except ValueError:
            pass
        raise UserError(
            f"threshold method {method!r}: the target must be a number in (0, 1], e.g. {kind}:0.9"
        )
    if method not in _OBJECTIVES:
        raise did_you_mean(
            method, [*_OBJECTIVES, "sensitivity:0.9", "specificity:0.9"], what="threshold method"
        )


def tune_thresholds(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    method: str = "f1",
    classes: Sequence[str] | None = None,
) -> Floats:
    """Choose one threshold per class, calling ``score >= threshold`` positive.

    Tune on the **validation split only**; reusing test labels here biases every test figure.

    Args:
        y_true: ``(n_samples, n_classes)`` labels, 1 present, 0 absent, NaN unknown (masked).
        y_score: ``(n_samples, n_classes)`` scores (probabilities or logits), no NaN.
        method: ``"f1"`` maximises F1; ``"youden"`` maximises Youden's J = sensitivity +
            specificity - 1. Ties go to the higher threshold.
        classes: optional class names, used in warnings.

    Returns:
        ``(n_classes,)`` thresholds, each one of the class's labelled scores. A class without
        both positive and negative labels gets :data:`FALLBACK_THRESHOLD` and a warning.

    Raises:
        UserError: unknown ``method``. ValueError: malformed inputs.
    """
    check_method(method)
    y, s = validate_inputs(y_true, y_score)
    skipped = one_class_columns(
        y, what="tune_thresholds", classes=classes, outcome=f"threshold {FALLBACK_THRESHOLD}"
    )
    out = np.full(y.shape[1], FALLBACK_THRESHOLD)
    for j in np.flatnonzero(~skipped):
        thresholds, tp, fp = threshold_counts(y[:, j], s[:, j])
        if method in _OBJECTIVES:
            objective = _OBJECTIVES[method](tp, fp, int(tp[-1]), int(fp[-1]))
            out[j] = thresholds[np.argmax(objective)]  # first maximum = highest threshold
        else:
            out[j] = thresholds[_target_index(method, tp, fp)]
    return out
