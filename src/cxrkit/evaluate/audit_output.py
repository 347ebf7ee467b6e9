"""The shortcut audit (:mod:`cxrkit.evaluate.audit`) as ``audit.csv`` and as the lines
``cxrkit eval --audit`` prints.

``audit.csv`` is tidy: one row per figure, with the columns of :data:`COLUMNS`:

* ``part``: ``baseline``, ``strata`` or ``probe``;
* ``finding`` (``macro`` for the average over findings; empty for the probe), ``column`` (the
  metadata column: the baseline's features joined by ``+``, the stratum's or the probe's
  target), ``group`` (the stratum's value; empty otherwise);
* ``estimator``: ``model``, ``metadata baseline``, ``model - baseline`` (paired difference)
  or ``embedding probe``;
* ``auroc`` (the difference for ``model - baseline``), ``ci_low``/``ci_high`` (95%, patient
  bootstrap), ``n``, ``n_positive``, ``n_patients``, ``p_value``, ``reason`` (why a figure
  is empty) and ``caution`` (why a figure is fragile: few positives per metadata degree of
  freedom for the baseline).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

COLUMNS = ("part", "finding", "column", "group", "estimator", "auroc", "ci_low", "ci_high")
COLUMNS += ("n", "n_positive", "n_patients", "p_value", "reason", "caution")
STRATA_KEYS = ("finding", "column", "group", "n", "n_positive", "n_patients", "auroc", "reason")


def _row(**values: Any) -> dict[str, Any]:
    interval = values.pop("ci", None) or (None, None)
    values["ci_low"], values["ci_high"] = interval
    return {k: values.get(k) for k in COLUMNS}


def audit_table(audit: dict[str, Any]) -> pd.DataFrame:
    """``audit.csv`` (module docstring) from ``metrics["audit"]``."""
    rows = []
    base = audit.get("baseline") or {}
    features = "+".join(base.get("features") or [])
    if base.get("reason"):
        rows.append(_row(part="baseline", column=features, reason=base["reason"]))
    entries = {**(base.get("per_class") or {}), "macro": base.get("macro") or {}}
    estimators = {
        "model": ("model_auroc", None),
        "metadata baseline": ("baseline_auroc", "caution"),
        "model - baseline": ("difference", None),
    }
    for finding, e in entries.items():
        for estimator, (key, caution) in estimators.items() if e else ():
            rows.append(
                _row(
                    part="baseline",
                    finding=finding,
                    column=features,
                    estimator=estimator,
                    auroc=e.get(key),
                    ci=e.get(f"{key}_ci"),
                    n=e.get("n"),
                    n_positive=e.get("n_positive"),
                    p_value=e.get("p_value") if key == "difference" else None,
                    reason=e.get("reason"),
                    caution=e.get(caution) if caution else None,
                )
            )
    for r in (audit.get("strata") or {}).get("rows") or []:
        cells = {k: r.get(k) for k in STRATA_KEYS}
        rows.append(_row(part="strata", estimator="model", ci=r.get("auroc_ci"), **cells))
    probe = audit.get("probe") or {}
    if not probe.get("available"):
        for column in (audit.get("columns") or {}).get("used") or [""]:
            rows.append(
                _row(
                    part="probe",
                    column=column,
                    estimator="embedding probe",
                    reason=probe.get("reason"),
                )
            )
    for column, t in (probe.get("targets") or {}).items():
        rows.append(
            _row(
                part="probe",
                column=column,
                estimator="embedding probe",
                auroc=t.get("auroc"),
                ci=t.get("auroc_ci"),
                n=t.get("n"),
                n_patients=t.get("n_patients"),
                reason=t.get("reason"),
            )
        )
    return pd.DataFrame.from_records(rows, columns=list(COLUMNS))


def _num(value: Any, ci: Any = None) -> str:
    text = "n/a" if value is None else f"{value:.3f}"
    return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def format_audit(audit: dict[str, Any]) -> str:
    """What ``eval --audit`` prints: the columns, the baseline beside the model per finding,
    the largest stratum gaps and the probe (or why there is none)."""
    cols = audit.get("columns") or {}
    lines = [f"shortcut audit on {', '.join(cols.get('used') or []) or 'no metadata column'}"]
    lines += [f"  not used: {c}: {why}" for c, why in (cols.get("unavailable") or {}).items()]
    base = audit.get("baseline") or {}
    if base.get("reason"):
        lines.append(f"metadata-only baseline: none ({base['reason']})")
    elif base.get("per_class"):
        cv = base.get("cv") or {}
        lines.append(
            f"metadata-only baseline ({cv.get('folds')}-fold, grouped by "
            f"{cv.get('grouped_by')}) beside the model, AUROC [95% CI]:"
        )
        head = f"  {'Finding':<20} {'model':>22} {'metadata only':>22}"
        lines += [head, "  " + "-" * (len(head) - 2)]
        for name, e in {**base["per_class"], "macro": base.get("macro") or {}}.items():
            model = _num(e.get("model_auroc"), e.get("model_auroc_ci"))
            meta = _num(e.get("baseline_auroc"), e.get("baseline_auroc_ci"))
            flag = " (few events for the metadata: noisy)" if e.get("caution") else ""
            lines.append(f"  {name:<20} {model:>22} {meta:>22}{flag}")
    gaps = (audit.get("strata") or {}).get("largest_gap") or {}
    for name, g in gaps.items():
        lines.append(
            f"strata: {name}: AUROC gap {g['gap']:.3f} between {g['column']} "
            f"{g['low_group']} (lowest) and {g['high_group']} (highest)"
        )
    probe = audit.get("probe") or {}
    if not probe.get("available"):
        lines.append(str(probe.get("reason")))
    for column, t in (probe.get("targets") or {}).items():
        what = _num(t.get("auroc"), t.get("auroc_ci")) if t.get("reason") is None else t["reason"]
        lines.append(f"embedding probe: {column} from the embeddings: AUROC {what}")
    return "\n".join(lines)
