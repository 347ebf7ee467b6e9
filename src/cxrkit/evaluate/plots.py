"""Figures for ``report.html``: small-multiple ROC, PR and reliability panels as PNG data URIs.

Each figure function draws one panel per class holding both positive and negative labels (Agg
backend, no pyplot state) and returns a ``data:image/png;base64,...`` string, or None when no
class qualifies. Unknown labels (NaN in ``y_true``) are masked per class.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxrkit.evaluate.metrics import threshold_counts

DPI = 100
PANEL = 2.3  #: side of one square panel in inches
MARGINS = (0.6, 0.15, 0.5, 0.5, 0.75, 0.95)  #: left, right, top, bottom, between columns, rows
MAX_COLUMNS = 4
N_BINS = 10  #: equal-width probability bins of the reliability diagrams
CURVE, AFTER, POINT, GUIDE = "#1f5fa8", "#c2410c", "#111827", "#9ca3af"
STYLE = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.6,
    "legend.fontsize": 7,
    "legend.frameon": False,
}


def finite(value: Any) -> bool:
    """Whether ``value`` is a real, finite number (not None, NaN or a bool)."""
    numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    return numeric and math.isfinite(value)


def fmt(value: Any) -> str:
    """``value`` to 3 decimals, or "n/a" when it is not a finite number."""
    return f"{value:.3f}" if finite(value) else "n/a"


def evaluable_columns(y_true: np.ndarray) -> list[int]:
    """Indices of the columns of ``y_true`` with at least one positive and one negative label."""
    return [
        j for j in range(y_true.shape[1]) if (y_true[:, j] == 1).any() and (y_true[:, j] == 0).any()
    ]


def curves_figure(
    kind: str,
    y_true: np.ndarray,
    y_score: np.ndarray,
    names: Sequence[str],
    thresholds: Sequence[float | None],
    titles: Sequence[str],
) -> str | None:
    """ROC (``kind="roc"``) or precision-recall (``kind="pr"``) curves, one panel per evaluable
    column (None when there is none); ``thresholds`` mark the operating points and ``titles``
    are the second title lines (e.g. the AUROC)."""
    cols = evaluable_columns(y_true)
    if not cols:
        return None
    with rc_context(STYLE):
        fig, axes = _grid(len(cols))
        for j, ax in zip(cols, axes, strict=True):
            y, s, t = y_true[:, j], y_score[:, j], thresholds[j]
            _, tp, fp = threshold_counts(y, s)
            n_pos, n_neg = tp[-1], fp[-1]
            op_tp, op_fp, _, _ = confusion_counts(y, s, t) if t is not None else (0, 0, 0, 0)
            if kind == "roc":
                ax.plot(np.r_[0, fp / n_neg], np.r_[0, tp / n_pos], color=CURVE, lw=1.5)
                ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color=GUIDE)
                ax.set(xlabel="1 − specificity", ylabel="sensitivity")
                point = (op_fp / n_neg, op_tp / n_pos)
            else:
                recall, precision = tp / n_pos, tp / (tp + fp)
                ax.step(np.r_[0, recall], np.r_[precision[0], precision], where="pre", color=CURVE)
                ax.axhline(
                    n_pos / (n_pos + n_neg), ls="--", lw=0.8, color=GUIDE, label="prevalence"
                )
                ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)")
                point = (op_tp / n_pos, op_tp / (op_tp + op_fp)) if op_tp + op_fp else None
            if t is not None and point is not None:
                ax.plot(*point, "o", ms=5, color=POINT, label=f"threshold {t:.3f}")
            ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=f"{names[j]}\n{titles[j]}")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="lower right" if kind == "roc" else "best")
        return _data_uri(fig)


def reliability_figure(
    y_true: np.ndarray,
    y_score: np.ndarray,
    calibrated: np.ndarray | None,
    names: Sequence[str],
    titles: Sequence[str],
) -> str | None:
    """Reliability diagrams (observed frequency against mean predicted probability per bin),
    one panel per evaluable column (None when there is none), before and, given
    ``calibrated``, after calibration."""
    cols = evaluable_columns(y_true)
    if not cols:
        return None
    with rc_context(STYLE):
        fig, axes = _grid(len(cols))
        for j, ax in zip(cols, axes, strict=True):
            ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color=GUIDE, label="perfect")
            series = [("uncalibrated", y_score, CURVE)]
            if calibrated is not None:
                series.append(("calibrated", calibrated, AFTER))
            for label, probs, color in series:
                mean_p, observed = _reliability(y_true[:, j], probs[:, j])
                ax.plot(mean_p, observed, "o-", ms=3.5, lw=1.2, color=color, label=label)
            ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=f"{names[j]}\n{titles[j]}")
            ax.set(xlabel="mean predicted probability", ylabel="observed frequency")
            ax.legend(loc="upper left")
        return _data_uri(fig)


def confusion_counts(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` of the calls ``score >= threshold`` among the labelled samples."""
    called = s >= threshold
    cells = (called & (y == 1), called & (y == 0), ~called & (y == 1), ~called & (y == 0))
    tp, fp, fn, tn = (int(c.sum()) for c in cells)
    return tp, fp, fn, tn


def _grid(n: int) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` square panels, at most :data:`MAX_COLUMNS` per row.

    Fixed margins in inches (constrained layout doubles the drawing time): left for the tick
    and axis labels, top for two title lines, between rows for an axis label and a title.
    """
    ncols, (left, right, top, bottom, gap_x, gap_y) = min(MAX_COLUMNS, n), MARGINS
    nrows = math.ceil(n / ncols)
    width = left + right + ncols * PANEL + (ncols - 1) * gap_x
    height = top + bottom + nrows * PANEL + (nrows - 1) * gap_y
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(left / width, bottom / height, 1 - right / width, 1 - top / height)
    fig.subplots_adjust(wspace=gap_x / PANEL, hspace=gap_y / PANEL)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def _reliability(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean predicted probability and observed positive fraction of the non-empty bins."""
    keep = ~np.isnan(y)
    y, p = y[keep], p[keep]
    bins = np.clip(np.digitize(p, np.linspace(0, 1, N_BINS + 1)[1:-1]), 0, N_BINS - 1)
    count = np.bincount(bins, minlength=N_BINS)
    used = count > 0
    mean_p = np.bincount(bins, weights=p, minlength=N_BINS)[used] / count[used]
    observed = np.bincount(bins, weights=y, minlength=N_BINS)[used] / count[used]
    return mean_p, observed


def _data_uri(fig: Figure) -> str:
    """Render ``fig`` with Agg to PNG and return it as a base64 data URI."""
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def audit_figure(
    names: Sequence[str],
    model: Sequence[tuple[float | None, Sequence[float] | None]],
    baseline: Sequence[tuple[float | None, Sequence[float] | None]],
) -> str | None:
    """The shortcut audit's dot plot: per finding (one row each, ``names``), the model's and the
    metadata-only baseline's AUROC as dots with their intervals as bars; ``model`` and
    ``baseline`` hold one ``(auroc, [low, high] or None)`` pair per name. None when no AUROC
    is defined."""
    rows = [i for i, (m, b) in enumerate(zip(model, baseline, strict=True)) if finite(m[0])]
    if not rows:
        return None
    with rc_context(STYLE):
        height = 0.9 + 0.28 * len(rows)
        fig = Figure(figsize=(6.4, height), dpi=DPI)
        fig.subplots_adjust(left=1.9 / 6.4, right=0.97, top=1 - 0.45 / height, bottom=0.45 / height)
        ax = fig.add_subplot()
        series = (("model", model, CURVE, -0.12), ("metadata only", baseline, AFTER, 0.12))
        for label, values, color, offset in series:
            for k, i in enumerate(rows):
                auroc, ci = values[i]
                if not finite(auroc):
                    continue
                y = len(rows) - 1 - k + offset
                if ci is not None and all(finite(v) for v in ci):
                    ax.plot(ci, [y, y], color=color, lw=1.2)
                ax.plot(auroc, y, "o", ms=4, color=color, label=label)
                label = None  # one legend entry per series
        ax.axvline(0.5, ls="--", lw=0.8, color=GUIDE)
        ax.set_yticks(range(len(rows)), [names[i] for i in reversed(rows)])
        low = min(ax.get_xlim()[0], 0.45)
        ax.set(xlabel="AUROC (95% CI)", ylim=(-0.6, len(rows) - 0.4), xlim=(low, 1.01))
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=2)
        return _data_uri(fig)
