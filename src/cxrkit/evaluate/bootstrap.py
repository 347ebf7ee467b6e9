"""Bootstrap confidence intervals for multilabel evaluation, resampling patients or images.

Every resample is a vector of counts (how often each patient, or image, was drawn). For each
class the labelled samples are sorted once into segments: the positive tie groups by descending
score, the negatives between consecutive groups and those tied with a group. One sparse matrix
per class maps draw counts to segment weights, so a batch of resamples costs one sparse product
plus cumulative sums over the segments, and every figure (AUROC, AP, confusion at a threshold,
sensitivity at specificity, ...) is read off those sums exactly as scikit-learn and
:mod:`cxrkit.evaluate.metrics` compute it on the resampled data (sample weights = counts).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from functools import cached_property

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

from cxrkit.evaluate.metrics import RATE_TOLERANCE, Floats, Ints, roc_auc, validate_inputs

#: Elements (rows x resamples) of the largest float64 array of one batch: about 32 MB.
BATCH_ELEMENTS = 1 << 22
#: Intervals need at least this fraction of resamples where the figure is defined.
MIN_VALID_FRACTION = 0.5
_CONFUSION = ("sensitivity", "specificity", "ppv", "npv", "f1")


def bootstrap_weights(
    n_samples: int, *, groups: ArrayLike | None, n_boot: int, seed: int
) -> Iterator[Ints]:
    """Yield bootstrap count matrices ``(batch, n_samples)``, ``n_boot`` rows in all.

    Without ``groups`` each resample draws ``n_samples`` images with replacement. With
    ``groups`` ``(n_samples,)`` (patient ids, any sortable values) it draws as many patients as
    there are, with replacement, and every image of a patient gets the patient's draw count.
    The rows are the resamples :func:`bootstrap_distribution` uses for the same ``seed``.
    """
    clusters, n_clusters = _clusters(n_samples, groups)
    batch = _batch_size(n_samples, n_boot)
    for counts in _cluster_counts(n_clusters, n_boot=n_boot, seed=seed, batch=batch):
        yield counts.T.astype(np.int64)[:, clusters]


def bootstrap_distribution(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    thresholds: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    specificities: Sequence[float] = (0.8, 0.9, 0.95),
    sensitivities: Sequence[float] = (0.8, 0.9),
) -> dict[str, Floats]:
    """Every figure on every resample: per-class keys ``(n_boot, n_classes)``, others ``(n_boot,)``.

    ``y_true``/``y_score`` as in :mod:`cxrkit.evaluate.metrics` ``(n_samples, n_classes)``, NaN
    labels masked per class; ``thresholds`` ``(n_classes,)`` or a scalar (``score >= t`` is
    positive).
    Per class: ``"auroc"``, ``"ap"``, ``"sensitivity"``, ``"specificity"``, ``"ppv"``, ``"npv"``,
    ``"f1"``, ``"sens_at_spec_<s>"``, ``"spec_at_sens_<s>"``; NaN on resamples where the class
    lacks positives or negatives (or a rate is 0/0). ``"macro_auroc"``/``"macro_ap"``: mean
    over the classes defined on that resample (as :func:`cxrkit.evaluate.metrics.summarize` skips
    one-label classes); ``"micro_auroc"``: all labelled (sample, class) pairs pooled.
    """
    y, s = validate_inputs(y_true, y_score)
    n_samples, n_classes = y.shape
    t = np.broadcast_to(_thresholds(thresholds, n_classes), (n_classes,))
    for target in (*specificities, *sensitivities):
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"expected target rates between 0 and 1; got {target!r}")
    clusters, n_clusters = _clusters(n_samples, groups)
    rankings = [_Ranking(y[:, j], s[:, j], clusters, n_clusters, t[j]) for j in range(n_classes)]
    labelled = ~np.isnan(y)
    image = np.broadcast_to(clusters[:, None], y.shape)[labelled]
    micro = _Ranking(y[labelled], s[labelled], image, n_clusters, None)
    batch = _batch_size(max(n_clusters, micro.matrix.shape[0]), n_boot)
    keys = [
        "auroc",
        "ap",
        *_CONFUSION,
        *(f"sens_at_spec_{v:g}" for v in specificities),
        *(f"spec_at_sens_{v:g}" for v in sensitivities),
    ]
    out = {key: np.full((n_boot, n_classes), np.nan) for key in keys}
    out["micro_auroc"] = np.full(n_boot, np.nan)
    done = 0
    for counts in _cluster_counts(n_clusters, n_boot=n_boot, seed=seed, batch=batch):
        rows = slice(done, done + counts.shape[1])
        for j, ranking in enumerate(rankings):
            figures = ranking.figures(counts, specificities, sensitivities)
            for key, values in figures.items():
                out[key][rows, j] = values
        out["micro_auroc"][rows] = micro.curves(counts).auroc()
        done = rows.stop
    for key in ("auroc", "ap"):
        defined = ~np.isnan(out[key])
        total = np.where(defined, out[key], 0.0).sum(axis=1)
        count = defined.sum(axis=1)
        out[f"macro_{key}"] = np.divide(total, count, out=np.full(n_boot, np.nan), where=count > 0)
    return out


def bootstrap_ci(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    thresholds: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    specificities: Sequence[float] = (0.8, 0.9, 0.95),
    sensitivities: Sequence[float] = (0.8, 0.9),
    classes: Sequence[str] | None = None,
) -> dict[str, Floats]:
    """Percentile ``1 - alpha`` intervals ``[low, high]`` of :func:`bootstrap_distribution`.

    Per-class figures give ``(n_classes, 2)``, ``"macro_auroc"``, ``"macro_ap"`` and
    ``"micro_auroc"`` give ``(2,)``. Each interval uses the resamples where its figure is
    defined; with fewer than half of them defined it is NaN and one :class:`UserWarning` per
    call lists those figures (by class name, given ``classes=``). Pass patient ids as
    ``groups`` so images of one patient are resampled together.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"expected alpha between 0 and 1; got {alpha!r}")
    samples = bootstrap_distribution(
        y_true,
        y_score,
        thresholds=thresholds,
        groups=groups,
        n_boot=n_boot,
        seed=seed,
        specificities=specificities,
        sensitivities=sensitivities,
    )
    n_classes = samples["auroc"].shape[1]
    if classes is not None and len(classes) != n_classes:
        raise ValueError(f"expected {n_classes} class names, one per column; got {classes}")
    quantiles = [alpha / 2, 1 - alpha / 2]
    intervals, too_few = {}, {}
    for key, values in samples.items():
        columns = values.reshape(n_boot, -1)
        bounds = np.full((columns.shape[1], 2), np.nan)
        for j in range(columns.shape[1]):
            defined = columns[~np.isnan(columns[:, j]), j]
            if defined.size >= MIN_VALID_FRACTION * n_boot:
                bounds[j] = np.quantile(defined, quantiles)
            else:
                name = key if values.ndim == 1 else _class_name(classes, j)
                too_few.setdefault(name, []).append(f"{key} ({defined.size}/{n_boot})")
        intervals[key] = bounds if values.ndim == 2 else bounds[0]
    if too_few:
        listed = "; ".join(f"{name}: {', '.join(figures)}" for name, figures in too_few.items())
        message = (
            "bootstrap_ci: NaN interval where fewer than half the resamples define the figure "
            f"(a class lacking positives or negatives, or a rate with nothing to count): {listed}"
        )
        warnings.warn(message, UserWarning, stacklevel=2)
    return intervals


def paired_auroc_difference(
    y_true: ArrayLike,
    score_a: ArrayLike,
    score_b: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Floats]:
    """Paired bootstrap of AUROC(a) - AUROC(b) on the same images, ``(n_samples, n_classes)``
    inputs: each resample draws the same patients (``groups``) for both models.

    Returns ``(n_classes,)`` arrays: ``"diff"`` (on all the data), ``"ci_low"``/``"ci_high"``
    (percentile interval of the resampled differences) and ``"p_value"`` (two-sided: twice
    the smaller share of resampled differences on either side of 0, at most 1); NaN where a
    class lacks positives or negatives on too many resamples."""
    kwargs = {"thresholds": 0.5, "groups": groups, "n_boot": n_boot, "seed": seed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-class columns/resamples are NaN, handled below
        a = bootstrap_distribution(y_true, score_a, **kwargs)["auroc"]
        b = bootstrap_distribution(y_true, score_b, **kwargs)["auroc"]
        observed = roc_auc(y_true, score_a) - roc_auc(y_true, score_b)
    diffs = a - b  # (n_boot, C), the same resamples for both (same seed, labels and groups)
    n_classes = diffs.shape[1]
    out = {key: np.full(n_classes, np.nan) for key in ("ci_low", "ci_high", "p_value")}
    out["diff"] = observed
    for j in range(n_classes):
        defined = diffs[~np.isnan(diffs[:, j]), j]
        if defined.size < MIN_VALID_FRACTION * n_boot or np.isnan(observed[j]):
            continue
        out["ci_low"][j], out["ci_high"][j] = np.quantile(defined, [alpha / 2, 1 - alpha / 2])
        side = min((defined <= 0).mean(), (defined >= 0).mean())
        out["p_value"][j] = min(1.0, 2.0 * side)
    return out


class _Curves:
    """Weighted cumulative counts of one ranking over a batch of ``b`` resamples.

    ``pos_w`` ``(G, b)``: weight of each positive tie group (descending score); ``fp_from``
    ``(G + 1, b)``: 0, then the negative weight with score >= each group; ``tied`` ``(G, b)``:
    negative weight tied with each group (None without ties); ``n_pos``/``n_neg`` ``(b,)``
    totals; ``valid`` ``(b,)``: resamples with both.
    """

    def __init__(self, weights: Floats, n_groups: int, has_ties: bool) -> None:
        g = n_groups
        self.pos_w = weights[:g]
        self.fp_from = np.zeros((g + 2, weights.shape[1]))
        np.cumsum(weights[g : 2 * g + 1], axis=0, out=self.fp_from[1:])
        self.n_neg, self.fp_from = self.fp_from[-1], self.fp_from[:-1]
        self.tied = weights[2 * g + 1 :] if has_ties else None
        self.n_pos = self.pos_w.sum(axis=0)
        self.valid = (self.n_pos > 0) & (self.n_neg > 0)

    @cached_property
    def tp(self) -> Floats:
        """``(G + 1, b)``: 0, then the positive weight with score >= each group."""
        tp = np.zeros((self.pos_w.shape[0] + 1, self.pos_w.shape[1]))
        np.cumsum(self.pos_w, axis=0, out=tp[1:])
        return tp

    def auroc(self) -> Floats:
        """Mann-Whitney: each positive earns the negatives below it plus half of those tied."""
        lost = 2.0 * self.fp_from[1:] if self.tied is None else 2.0 * self.fp_from[1:] - self.tied
        pairs = self.n_pos * self.n_neg
        return self._where_valid(pairs - 0.5 * np.einsum("gb,gb->b", self.pos_w, lost), pairs)

    def average_precision(self) -> Floats:
        """Each positive group adds its recall share times precision at its own score."""
        tp = self.tp[1:]
        called = tp + self.fp_from[1:]
        precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
        return self._where_valid(np.einsum("gb,gb->b", self.pos_w, precision), self.n_pos)

    def sensitivity_at(self, specificity: float) -> Floats:
        """Best sensitivity over operating points with specificity >= target (less tolerance):
        call every group whose negatives at or above it fit the false-positive budget."""
        budget = self.n_neg * (1.0 - specificity + RATE_TOLERANCE)
        n_called = (self.fp_from[1:] <= budget).sum(axis=0)
        return self._where_valid(np.take_along_axis(self.tp, n_called[None], axis=0)[0], self.n_pos)

    def specificity_at(self, sensitivity: float) -> Floats:
        """Best specificity over operating points with sensitivity >= target (less tolerance):
        call the fewest groups that reach the needed positive weight."""
        n_called = (self.tp < self.n_pos * (sensitivity - RATE_TOLERANCE)).sum(axis=0)
        fp = np.take_along_axis(self.fp_from, n_called[None], axis=0)[0]
        return self._where_valid(self.n_neg - fp, self.n_neg)

    def _where_valid(self, num: Floats, den: Floats) -> Floats:
        """``num / den`` on resamples with positives and negatives, NaN on the others."""
        return np.divide(num, den, out=np.full(num.shape, np.nan), where=self.valid)


class _Ranking:
    """One column's labelled samples as a sparse ``(n_rows, n_clusters)`` segment matrix.

    Rows: the ``G`` positive tie groups by descending score; the ``G + 1`` negative segments
    (above group 0, from group 0 down to group 1, ..., from the last group down); with ties,
    the negatives tied with each group. Given a threshold, ``called`` ``(n_clusters,)`` counts
    each cluster's negatives with ``score >= threshold``.
    """

    def __init__(
        self, y: Floats, s: Floats, clusters: Ints, n_clusters: int, threshold: float | None
    ) -> None:
        keep = ~np.isnan(y)
        y, s, clusters = y[keep], s[keep], clusters[keep]
        levels = np.unique(s[y == 1])  # ascending distinct positive scores
        g = self.n_groups = levels.size
        above = g - np.searchsorted(levels, s, side="right")  # positive groups above each sample
        tied = (y == 0) & np.isin(s, levels)
        self.has_ties = bool(tied.any())
        row = np.r_[np.where(y == 1, above, g + above), 2 * g + 1 + above[tied]]
        col = np.r_[clusters, clusters[tied]]
        shape = (2 * g + 1 + g * self.has_ties, n_clusters)
        self.matrix = sp.csr_array((np.ones(row.size), (row, col)), shape=shape)
        if threshold is not None:
            self.pos_called = g - int(np.searchsorted(levels, threshold, side="left"))
            called = clusters[(y == 0) & (s >= threshold)]
            self.called = np.bincount(called, minlength=n_clusters).astype(float)

    def curves(self, counts: Floats) -> _Curves:
        """Cumulative counts for cluster draw counts ``(n_clusters, b)``."""
        return _Curves(self.matrix @ counts, self.n_groups, self.has_ties)

    def figures(
        self, counts: Floats, specificities: Sequence[float], sensitivities: Sequence[float]
    ) -> dict[str, Floats]:
        """Every per-class figure, each ``(b,)``, on resamples ``counts`` ``(n_clusters, b)``."""
        c = self.curves(counts)
        tp, fp = c.tp[self.pos_called], np.einsum("c,cb->b", self.called, counts)
        fn, tn = c.n_pos - tp, c.n_neg - fp
        with np.errstate(divide="ignore", invalid="ignore"):
            rates = {
                "sensitivity": tp / (tp + fn),
                "specificity": tn / (tn + fp),
                "ppv": tp / (tp + fp),
                "npv": tn / (tn + fn),
                "f1": 2 * tp / (2 * tp + fp + fn),
            }
        out = {"auroc": c.auroc(), "ap": c.average_precision()}
        out |= {key: np.where(c.valid, rate, np.nan) for key, rate in rates.items()}
        out |= {f"sens_at_spec_{v:g}": c.sensitivity_at(v) for v in specificities}
        return out | {f"spec_at_sens_{v:g}": c.specificity_at(v) for v in sensitivities}


def _cluster_counts(n_clusters: int, *, n_boot: int, seed: int, batch: int) -> Iterator[Floats]:
    """Yield draw counts ``(n_clusters, b)``, float64, one column per resample."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, batch):
        b = min(batch, n_boot - start)
        draws = rng.integers(0, n_clusters, size=(b, n_clusters))
        flat = (draws * b + np.arange(b)[:, None]).ravel()
        yield np.bincount(flat, minlength=n_clusters * b).reshape(n_clusters, b).astype(float)


def _clusters(n_samples: int, groups: ArrayLike | None) -> tuple[Ints, int]:
    """Cluster index of each sample ``(n_samples,)`` and the number of clusters."""
    if groups is None:
        return np.arange(n_samples), n_samples
    groups = np.asarray(groups)
    if groups.shape != (n_samples,):
        raise ValueError(f"expected one group id per sample, ({n_samples},); got {groups.shape}")
    names, index = np.unique(groups, return_inverse=True)
    return index.reshape(-1), names.size


def _batch_size(n_rows: int, n_boot: int) -> int:
    """Resamples per batch so that ``n_rows x batch`` stays within :data:`BATCH_ELEMENTS`."""
    if n_boot < 1:
        raise ValueError(f"expected n_boot >= 1; got {n_boot}")
    return max(1, min(n_boot, BATCH_ELEMENTS // max(n_rows, 1)))


def _thresholds(thresholds: ArrayLike, n_classes: int) -> Floats:
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape not in ((), (n_classes,)) or np.isnan(t).any():
        raise ValueError(
            f"expected one non-NaN threshold per class, shape ({n_classes},); got shape "
            f"{t.shape} with {int(np.isnan(t).sum())} NaN"
        )
    return t


def _class_name(classes: Sequence[str] | None, j: int) -> str:
    return f"class {str(classes[j])!r} (column {j})" if classes is not None else f"column {j}"
