"""The "Shortcut audit" section of ``report.html``, from ``metrics["audit"]``
(:mod:`cxrkit.evaluate.audit`): the columns used, the metadata-only baseline beside the model
(table and dot plot), the model within each stratum and the embedding probe."""

from __future__ import annotations

from html import escape
from typing import Any

from cxrkit.evaluate.html import figure, integer, note, num, table
from cxrkit.evaluate.plots import audit_figure

EXPLAIN_BASELINE = (
    "A logistic regression per finding on the metadata alone ({features}), cross-validated in "
    "{folds} folds grouped by {unit}: each image is scored by a model that never saw its "
    "patient. A finding the metadata alone ranks well (AUROC far above 0.5) may be learnt from "
    "who is imaged how rather than from the image; compare it with the model's AUROC on the "
    "same images. Difference: model minus metadata only, paired over the same resamples."
)
EXPLAIN_STRATA = (
    "The model's AUROC within each value of each column: a finding that works only in one "
    "stratum (e.g. on AP films, the ill patients) leans on that stratum. Empty cells say why."
)
EXPLAIN_PROBE = (
    "A logistic regression on the model's standardised embeddings, cross-validated by patient, "
    "predicting each column: AUROC near 0.5 means the embedding does not encode it linearly, "
    "near 1 that it does (one-vs-rest, averaged over the values, for more than two values)."
)


def audit_section(audit: dict[str, Any] | None, names: list[str]) -> str:
    """The section's body (after its heading) for ``audit`` (None: no audit in this run);
    ``names`` are the findings in report order."""
    if not audit:
        return note("No shortcut audit in this run (<code>cxrkit eval --audit</code>).")
    cols = audit.get("columns") or {}
    levels = cols.get("levels") or {}
    used = [
        f"<strong>{escape(c)}</strong> ("
        + escape(", ".join(f"{v} {n:,}" for v, n in (levels.get(c) or {}).items()))
        + ")"
        for c in cols.get("used") or []
    ]
    html = note("Columns: " + ("; ".join(used) or "none usable") + ".")
    unavailable = cols.get("unavailable") or {}
    if unavailable:
        html += note(
            "Not used: " + "; ".join(f"{escape(c)}: {escape(w)}" for c, w in unavailable.items())
        )
    bands = ", ".join(cols.get("age_bands") or [])
    html += note(f"age_band: years in the bands {escape(bands)} (from the age column).")
    html += _baseline(audit.get("baseline") or {}, names)
    html += _strata(audit.get("strata") or {}, names)
    html += _probe(audit.get("probe") or {})
    items = "".join(f"<li>{escape(str(n))}</li>" for n in audit.get("notes") or [])
    return html + (f'<ul class="warnings">{items}</ul>' if items else "")


def _baseline(base: dict[str, Any], names: list[str]) -> str:
    html = "<h3>Metadata-only baseline</h3>"
    if base.get("reason"):
        return html + note(f"No baseline: {escape(base['reason'])}.")
    cv = base.get("cv") or {}
    html += note(
        EXPLAIN_BASELINE.format(
            features=escape(", ".join(base.get("features") or [])),
            folds=cv.get("folds"),
            unit=escape(str(cv.get("grouped_by"))),
        )
    )
    per_class = base.get("per_class") or {}
    rows, pairs = [], {"model": [], "base": []}
    shown = [n for n in names if n in per_class] + ["macro"]
    for name in shown:
        e = per_class.get(name) if name != "macro" else base.get("macro") or {}
        rows.append(
            [escape(name), integer(e.get("n_positive"))]
            + [num(e.get(k), e.get(f"{k}_ci")) for k in ("model_auroc", "baseline_auroc")]
            + [num(e.get("difference"), e.get("difference_ci")), num(e.get("p_value"))]
            + [escape(e.get("reason") or e.get("caution") or "")]
        )
        pairs["model"].append((e.get("model_auroc"), e.get("model_auroc_ci")))
        pairs["base"].append((e.get("baseline_auroc"), e.get("baseline_auroc_ci")))
    heads = ["Finding", "Positive", "Model AUROC", "Metadata-only AUROC", "Difference", "p"]
    marks = [""] * (len(rows) - 1) + ["agg first"]
    html += table([*heads, "Note"], rows, marks)
    uri = audit_figure(shown, pairs["model"], pairs["base"])
    caption = "Model (blue) and metadata-only baseline (orange) AUROC with 95% intervals."
    return html + (figure(uri, caption) if uri else "")


def _strata(strata: dict[str, Any], names: list[str]) -> str:
    html = "<h3>The model within each stratum</h3>"
    if not strata.get("rows"):
        return html + note("No stratum: no usable column.")
    order = {n: i for i, n in enumerate(names)}
    rows = []
    for r in sorted(strata["rows"], key=lambda r: order.get(r.get("finding"), len(order))):
        cells = [escape(str(r.get(k))) for k in ("finding", "column", "group")]
        cells += [integer(r.get("n")), integer(r.get("n_positive"))]
        rows.append(cells + [num(r.get("auroc"), r.get("auroc_ci")), escape(r.get("reason") or "")])
    heads = ["Finding", "Attribute", "Group", "Images", "Positive", "AUROC", "Note"]
    return html + note(EXPLAIN_STRATA) + table(heads, rows, text_cols=3)


def _probe(probe: dict[str, Any]) -> str:
    html = "<h3>What the embeddings encode</h3>"
    if not probe.get("available"):
        return html + note(escape(str(probe.get("reason"))) + ".")
    rows = [
        [escape(column), escape(", ".join(t.get("values") or []))]
        + [integer(t.get("n")), integer(t.get("n_patients"))]
        + [num(t.get("auroc"), t.get("auroc_ci")), escape(t.get("kind") or "")]
        + [escape(t.get("reason") or "")]
        for column, t in (probe.get("targets") or {}).items()
    ]
    heads = ["Attribute", "Values", "Images", "Patients", "AUROC", "Kind", "Note"]
    dim = f" ({probe.get('dim')}-dimensional)" if probe.get("dim") else ""
    return html + note(EXPLAIN_PROBE + f" Embeddings{dim}.") + table(heads, rows, text_cols=2)
