"""``report.html``: a self-contained evaluation report for clinical reviewers.

One HTML file with inline CSS and figures embedded as base64 PNG (matplotlib, Agg); no scripts
and no external URLs. Any metrics key may be absent or None and is then shown as "n/a". Curves,
reliability diagrams and confusion counts are recomputed from ``y_true`` and ``y_score`` with
unknown labels (NaN) masked per class; thresholds apply to ``y_score`` (score >= threshold).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit import __version__
from cxrkit.evaluate.audit_report import audit_section
from cxrkit.evaluate.html import NA, figure, integer, note, num, table
from cxrkit.evaluate.plots import (
    confusion_counts,
    curves_figure,
    evaluable_columns,
    finite,
    fmt,
    reliability_figure,
)

DISCLAIMER = (
    "<strong>Research software, not a medical device.</strong> These results describe a model on "
    "a retrospective dataset. They are not clinically validated and must not be used to diagnose "
    "or treat patients."
)
RATE_KEY = re.compile(r"^(sens_at_spec|spec_at_sens)_(\d+(?:\.\d+)?)$")
DEFAULT_RATE_KEYS = {"sens_at_spec_0.8", "sens_at_spec_0.9", "sens_at_spec_0.95"}
DEFAULT_RATE_KEYS |= {"spec_at_sens_0.8", "spec_at_sens_0.9"}
SECTIONS = {
    "dataset": "Dataset and prevalence",
    "performance": "Per-class performance",
    "roc": "ROC curves",
    "pr": "Precision-recall curves",
    "calibration": "Calibration",
    "thresholds": "Thresholds and operating points",
    "subgroups": "Subgroups",
    "audit": "Shortcut audit",
    "warnings": "Warnings",
    "details": "Configuration and versions",
}
RATE_LABELS = {"sens": "Sens@Spec", "spec": "Spec@Sens"}
CSS = (Path(__file__).parent / "report.css").read_text()


def write_report(
    path: str | Path,
    metrics: dict,
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    uncalibrated: np.ndarray | None = None,
    title: str = "cxrkit evaluation",
) -> Path:
    """Write the evaluation report ``path`` (one self-contained HTML file) and return its path.

    ``y_true`` ``(n, C)`` holds 1/0/NaN (unknown, masked per class), ``y_score`` ``(n, C)`` the
    model's final probabilities (calibrated if it was; the thresholds apply to these) and
    ``uncalibrated`` ``(n, C)`` the same before calibration, or None; columns follow
    ``metrics["classes"]``. Raises ``ValueError`` when the shapes disagree.
    """
    y_true, y_score = np.asarray(y_true, dtype=float), np.asarray(y_score, dtype=float)
    default = [f"class {j}" for j in range(y_score.shape[-1])]
    names = [str(c) for c in metrics.get("classes") or default]
    uncalibrated = None if uncalibrated is None else np.asarray(uncalibrated, dtype=float)
    arrays = {"y_true": y_true, "y_score": y_score, "uncalibrated": uncalibrated}
    for label, array in arrays.items():
        if array is not None and array.shape != (y_score.shape[0], len(names)):
            raise ValueError(
                f"expected {label} of shape (n_images, {len(names)}) to match the "
                f"{len(names)} classes and y_score {y_score.shape}; got {array.shape}"
            )
    body = _Report(metrics, names, y_true, y_score, uncalibrated).render()
    html = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width,initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style></head>\n<body><main>\n"
        f"{_header(metrics, title, names)}{body}\n</main></body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def _header(metrics: dict, title: str, names: list[str]) -> str:
    """Title, disclaimer, headline counts, sources and the section links."""
    n_skipped = len(metrics.get("skipped_classes") or [])
    items = [
        ("Split", escape(str(metrics.get("split") or "n/a"))),
        ("Images", integer(metrics.get("n_images"))),
        ("Patients", integer(metrics.get("n_patients"))),
        ("Classes evaluated", f"{len(names) - n_skipped} of {len(names)}"),
        ("Confidence intervals", _bootstrap_text(metrics.get("bootstrap")) or NA),
    ]
    items += [(escape(k.capitalize()), escape(str(v))) for k, v in _dict(metrics, "source").items()]
    meta = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in items)
    nav = " ".join(f'<a href="#{key}">{label}</a>' for key, label in SECTIONS.items())
    return (
        f"<header><h1>{escape(title)}</h1>"
        f'<div class="disclaimer">{DISCLAIMER}</div><dl class="meta">{meta}</dl>'
        f"<nav>{nav}</nav></header>"
    )


@dataclass
class _Report:
    """The report body: one method per section, each returning HTML."""

    metrics: dict
    names: list[str]
    y_true: np.ndarray
    y_score: np.ndarray
    uncalibrated: np.ndarray | None

    def __post_init__(self) -> None:
        given = _dict(self.metrics, "per_class")
        self.per_class = per_class = {n: given.get(n) or {} for n in self.names}
        tuned = _dict(_dict(self.metrics, "thresholds"), "values")
        self.thresholds = [_first(m.get("threshold"), tuned.get(n)) for n, m in per_class.items()]
        self.plotted = evaluable_columns(self.y_true)
        left = ", ".join(n for j, n in enumerate(self.names) if j not in self.plotted)
        self.not_plotted = f" Not plotted (one label value only): {left}." if left else ""
        self.skipped = [str(c) for c in self.metrics.get("skipped_classes") or []]

    def render(self) -> str:
        sections = (self.dataset, self.performance, self.curves, self.calibration)
        sections += (self.operating_points, self.subgroups, self.audit, self.warnings)
        sections += (self.details,)
        stamp = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
        footer = f"<footer>Generated by cxrkit {__version__} on {stamp}. {DISCLAIMER}</footer>"
        return "".join(section() for section in sections) + footer

    def dataset(self) -> str:
        """Labelled, unknown and positive counts and prevalence per class; unmatched images."""
        rows = []
        for j, name in enumerate(self.names):
            y = self.y_true[:, j]
            n_lab, n_pos = int((~np.isnan(y)).sum()), int((y == 1).sum())
            prev = n_pos / n_lab if n_lab else None
            bar = f'<span class="bar"><span style="width:{100 * prev:.1f}%"></span></span>'
            cells = [
                self.name(name),
                integer(n_lab),
                integer(int(np.isnan(y).sum())),
                integer(n_pos),
            ]
            rows.append(cells + [(bar if finite(prev) else "") + num(prev)])
        heads = ["Class", "Labelled", "Unknown label", "Positive", "Prevalence"]
        html = _h2("dataset") + table(heads, rows)
        html += note("Unknown labels (missing or uncertain) are excluded per class.")
        missing = self.metrics.get("missing") or {}
        only = [integer(missing.get(f"in_{k}_only")) for k in ("predictions", "labels")]
        examples = escape(", ".join(str(e) for e in (missing.get("examples") or [])[:10]))
        text = f"Images with predictions but no labels: {only[0]}; with labels but no "
        text += f"predictions: {only[1]}{f'; e.g. {examples}' if examples else ''}."
        return html + (note(text) if missing else "")

    def performance(self) -> str:
        """The per-class metrics table with macro, micro and weighted rows and skipped classes."""
        found = {k for m in self.per_class.values() for k in m if RATE_KEY.match(k)}
        rate_keys = sorted(found | DEFAULT_RATE_KEYS, key=lambda k: (k[:4], float(k[13:])))
        keys = ("auroc", "ap", "prevalence", "threshold", "sensitivity", "specificity", "ppv")
        keys += ("npv", "f1", *rate_keys)
        heads = ["Class", "AUROC", "AP", "Prevalence", "Threshold", "Sensitivity", "Specificity"]
        heads += ["PPV", "NPV", "F1"] + [f"{RATE_LABELS[k[:4]]} {k[13:]}" for k in rate_keys]
        rows = [
            [self.name(n)] + [num(m.get(k), m.get(f"{k}_ci")) for k in keys]
            for n, m in self.per_class.items()
        ]
        aggregates = []
        for kind in ("macro", "micro", "weighted"):
            agg = _dict(self.metrics, kind)
            cells = [kind] + [num(agg.get(k), agg.get(f"{k}_ci")) for k in ("auroc", "ap")]
            aggregates.append(cells + [""] * (len(heads) - 3))
        marks = [""] * len(rows) + ["agg first", "agg", "agg"]
        html = _h2("performance") + table(heads, rows + aggregates, marks)
        if self.skipped:
            html += note(
                "Not evaluable (only one label value among labelled images): "
                f"<strong>{escape(', '.join(self.skipped))}</strong>."
            )
        boot = _bootstrap_text(self.metrics.get("bootstrap"))
        return html + note(
            f"Grey brackets: bootstrap confidence intervals ({boot or 'where computed'}). "
            "Sensitivity, specificity, PPV, NPV and F1 are at the listed threshold; "
            "Sens@Spec&nbsp;x is the best sensitivity with specificity at least x (Spec@Sens "
            "likewise). Macro: mean over evaluable classes; micro: all labelled image-class pairs "
            "pooled; weighted: weighted by positives."
        )

    def curves(self) -> str:
        """ROC and precision-recall small multiples with the operating points marked."""
        html, data = "", (self.y_true, self.y_score, self.names, self.thresholds)
        dot = "Black dot: operating point at the threshold (score \u2265 threshold positive). "
        for kind, metric in (("roc", "auroc"), ("pr", "ap")):
            titles = [f"{metric.upper()} {fmt(m.get(metric))}" for m in self.per_class.values()]
            html += _h2(kind) + figure(
                curves_figure(kind, *data, titles),
                (dot if any(self.thresholds[j] is not None for j in self.plotted) else "")
                + f"Dashed: chance level{' (prevalence)' if kind == 'pr' else ''}."
                + self.not_plotted,
            )
        return html

    def calibration(self) -> str:
        """Reliability diagrams (before/after calibration) and the Brier/ECE table."""
        html, method = _h2("calibration"), self.metrics.get("calibration")
        if method:
            html += note(
                f"Calibration: {escape(str(method.get('method') or 'n/a'))}, fitted on the "
                f"{escape(str(method.get('split') or 'n/a'))} split."
            )
        elif self.uncalibrated is None:
            html += note("No calibration was applied in this run.")
        titles = [f"ECE {fmt(m.get('ece'))}" for m in self.per_class.values()]
        before, after_scores = self.y_score, None
        if self.uncalibrated is not None:
            before, after_scores = self.uncalibrated, self.y_score
            after = [fmt(m.get("ece_calibrated")) for m in self.per_class.values()]
            titles = [f"{t} \u2192 {e}" for t, e in zip(titles, after, strict=True)]
        uri = reliability_figure(self.y_true, before, after_scores, self.names, titles)
        html += figure(
            uri,
            "Reliability diagrams: observed frequency of the finding against the mean predicted "
            f"probability in 10 equal-width bins.{self.not_plotted}",
        )
        heads = ["Class", "Brier", "ECE", "Brier (calibrated)", "ECE (calibrated)"]
        keys = ("brier", "ece", "brier_calibrated", "ece_calibrated")
        rows = [[self.name(n)] + [num(m.get(k)) for k in keys] for n, m in self.per_class.items()]
        return html + table(heads, rows) + note("Lower is better for Brier score and ECE.")

    def operating_points(self) -> str:
        """Thresholds, how they were chosen, and the confusion counts they give on this split."""
        html, info = _h2("thresholds"), self.metrics.get("thresholds")
        if info:
            html += note(
                f"Chosen by {escape(str(info.get('method') or 'n/a'))} on the "
                f"{escape(str(info.get('split') or 'n/a'))} split and applied unchanged to the "
                f"{escape(str(self.metrics.get('split') or 'n/a'))} split."
            )
        rows = []
        for j, (name, t) in enumerate(zip(self.names, self.thresholds, strict=True)):
            if not finite(t):
                rows.append([self.name(name), NA] + [NA] * 5)
                continue
            tp, fp, fn, tn = confusion_counts(self.y_true[:, j], self.y_score[:, j], t)
            rows.append([self.name(name), num(t)] + [integer(c) for c in (tp + fp, tp, fp, fn, tn)])
        heads = ["Class", "Threshold", "Called positive", "TP", "FP", "FN", "TN"]
        return html + table(heads, rows) + note("Counts over labelled images only.")

    def subgroups(self) -> str:
        """Per-subgroup AUROC with the largest gap per finding highlighted."""
        html, groups = _h2("subgroups"), self.metrics.get("subgroups") or {}
        if not groups.get("rows"):
            return html + note("No subgroup analysis in this run.")
        gaps = _dict(groups, "largest_gap")
        order = {n: i for i, n in enumerate([*self.names, *(groups.get("by") or [])])}

        def position(r: dict) -> tuple:
            col, finding, group = (str(r.get(k)) for k in ("column", "finding", "group"))
            return order.get(finding, len(order)), order.get(col, len(order)), col, group

        rows, marks = [], []
        for r in sorted(groups["rows"], key=position):
            gap = gaps.get(r.get("finding")) or {}
            ends = {gap.get("low_group"): "low", gap.get("high_group"): "high"}
            mark = ends.get(r.get("group"), "") if gap.get("column") == r.get("column") else ""
            marks.append(f"gap-{mark}" if mark else "")
            cells = [escape(str(r.get(k))) for k in ("finding", "column", "group")]
            cells[2] += f'<span class="tag {mark}">{mark}est</span>' if mark else ""
            cells += [integer(r.get("n")), integer(r.get("n_positive"))]
            rows.append(cells + [num(r.get("auroc"), r.get("auroc_ci"))])
        heads = ["Finding", "Attribute", "Group", "Images", "Positive", "AUROC"]
        html += table(heads, rows, marks, text_cols=3)
        gap_rows = [
            [escape(str(v)) for v in (f, g.get("column"), g.get("low_group"), g.get("high_group"))]
            + [num(g.get("gap"))]
            for f, g in gaps.items()
            if g
        ]
        if gap_rows:
            html += "<h3>Largest AUROC gap per finding</h3>"
            heads = ["Finding", "Attribute", "Lowest AUROC", "Highest AUROC", "Gap"]
            html += table(heads, gap_rows, text_cols=4)
        return html + note("Small subgroups give wide intervals: read gaps against the CIs.")

    def audit(self) -> str:
        """The shortcut audit: baseline, strata, probe (:mod:`cxrkit.evaluate.audit_report`)."""
        return _h2("audit") + audit_section(self.metrics.get("audit"), self.names)

    def warnings(self) -> str:
        """The warnings raised while computing the metrics."""
        items = "".join(f"<li>{escape(str(w))}</li>" for w in self.metrics.get("warnings") or [])
        return _h2("warnings") + (f'<ul class="warnings">{items}</ul>' if items else note("None."))

    def details(self) -> str:
        """Collapsible configuration, versions and analysis settings as JSON."""
        html, get = _h2("details"), self.metrics.get
        settings = {k: get(k) for k in ("bootstrap", "thresholds", "calibration", "source")}
        parts = [("Configuration", get("config")), ("Versions", get("versions"))]
        for label, value in [*parts, ("Analysis settings", settings)]:
            text = "n/a" if value is None else json.dumps(value, indent=2, default=str)
            html += f"<details><summary>{label}</summary><pre>{escape(text)}</pre></details>"
        return html

    def name(self, name: str) -> str:
        """A class name cell, tagged when the class was skipped."""
        return escape(name) + ('<span class="tag">skipped</span>' if name in self.skipped else "")


def _h2(anchor: str) -> str:
    return f'<h2 id="{anchor}">{SECTIONS[anchor]}</h2>'


def _first(*values: Any) -> Any:
    """The first value that is not None."""
    return next((v for v in values if v is not None), None)


def _dict(d: dict | None, key: str) -> dict:
    """``d[key]`` when it is a dict, else an empty dict (absent or None)."""
    value = (d or {}).get(key)
    return value if isinstance(value, dict) else {}


def _bootstrap_text(boot: dict | None) -> str:
    """The bootstrap settings as text (``1000 bootstrap resamples by patient, seed 0``) or ""."""
    if not boot:
        return ""
    n, unit, seed = (_first(boot.get(k), "?") for k in ("n", "unit", "seed"))
    return escape(f"{n} bootstrap resamples by {unit}, seed {seed}")
