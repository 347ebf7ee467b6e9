"""``MODEL_CARD.md``: the model card a reviewer reads, written from the run's own files.

Every figure comes from a file cxrkit wrote, never from a person's typing: the checkpoint's
card (training data, validation metrics, thresholds and calibration with their provenance,
the input gate), the prepared folders' manifests (datasets, split policy, patient counts,
label policies) where they still exist, and an ``eval`` folder's ``metrics.json``
(per-finding performance with patient-bootstrap intervals, subgroups, the shortcut audit).
What is not there is said to be missing, with the command that makes it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cxrkit.data.storage import is_uri
from cxrkit.deploy.gate import CHECKS
from cxrkit.errors import UserError
from cxrkit.evaluate.audit_output import audit_table
from cxrkit.files import atomic_write_text
from cxrkit.models.gate_threshold import threshold_summary

MODEL_CARD_MD = "MODEL_CARD.md"
DISCLAIMER = (
    "**Research software, not a medical device.** This model has not been clinically "
    "validated. Its outputs are not a diagnosis and must not be used for clinical decisions."
)
FEW_POSITIVES = 50  # training positives below which a finding is named as a limitation
GAP_MIN_POSITIVES = 10  # subgroups compared for a limitation need this many positives each


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ci(pair: Any) -> str:
    if not pair or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in pair):
        return "n/a"
    return f"{pair[0]:.3f}–{pair[1]:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def read_evaluation(folder: str | Path, checkpoint: str | Path) -> dict[str, Any]:
    """``metrics.json`` of an ``eval`` folder, refused when it evaluated another model."""
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise UserError(f"--evaluation {folder} has no metrics.json; pass a `cxrkit eval` --out")
    metrics = json.loads(path.read_text())
    source = (metrics.get("source") or {}).get("checkpoint")
    if source is None:
        raise UserError(
            f"{path} evaluates a predictions CSV, not a checkpoint; pass the folder of "
            f"`cxrkit eval --checkpoint {checkpoint} --data PREP`"
        )
    if Path(source).resolve() != Path(checkpoint).resolve():
        raise UserError(
            f"{path} evaluated {source}, not {checkpoint}; the card would describe another "
            "model: evaluate this checkpoint and pass that folder"
        )
    return metrics


def _manifest_headers(card: dict[str, Any]) -> list[dict[str, Any] | None]:
    """Each training dataset's manifest header, or None where the folder is gone."""
    headers: list[dict[str, Any] | None] = []
    for d in (card.get("training_data") or {}).get("datasets") or []:
        where = d.get("prepared", "")
        path = None if is_uri(where) else Path(where) / "manifest.json"
        headers.append(json.loads(path.read_text()) if path and path.is_file() else None)
    return headers


def _training(card: dict[str, Any]) -> list[str]:
    data = card.get("training_data") or {}
    lines = ["## Training data", ""]
    if data.get("description") and not data.get("datasets"):  # an imported model
        return [*lines, f"- {data.get('source', 'Elsewhere')}: {data['description']} (not by "
                "cxrkit: no split or patient counts are known here)."]  # fmt: skip
    count = lambda key: f"{data[key]:,}" if isinstance(data.get(key), int) else "n/a"  # noqa: E731
    for d, h in zip(data.get("datasets", []), _manifest_headers(card), strict=True):
        lines.append(f"- **{d['dataset']}** from `{d['prepared']}`; split: {d['split_policy']}.")
        if h is None:
            lines.append(
                "  - (its prepared folder is gone: patient counts and label policy unknown)"
            )
            continue
        images, patients = h["split"].get("images", {}), h["split"].get("patients", {})
        counts = ", ".join(
            f"{s} {images.get(s, 0):,} images / {patients.get(s, 0):,} patients"
            for s in ("train", "val", "test")
        )
        lines.append(f"  - {counts}; no patient is in two splits (checked at every load).")
        for key, value in (h.get("label_policy") or {}).items():
            lines.append(f"  - label policy, {key}: {value}")
    lines.append(
        f"- Trained on {count('n_train')} images, validated on {count('n_val')} (datasets "
        f"combined by {data.get('combine', 'n/a')})."
    )
    return lines


def _performance(card: dict[str, Any], evaluation: dict[str, Any] | None) -> list[str]:
    lines = ["## Performance", ""]
    val = card.get("val_metrics") or {}
    if evaluation is None and not val:
        return [*lines, "No figures: the model was not trained by cxrkit and no evaluation "
                "was given (`cxrkit eval --checkpoint ... --data PREP`, then `--evaluation "
                "EVALDIR`)."]  # fmt: skip
    if evaluation is None:
        lines += [
            "No held-out evaluation was given to `cxrkit export` (`--evaluation EVALDIR`, the "
            "folder of `cxrkit eval --checkpoint ... --data PREP`). Validation AUROC at the "
            f"best epoch ({val.get('n_images', 'n/a')} images, no interval):",
            "",
            *_table(
                ["finding", "validation AUROC"],
                [[f, _num(v)] for f, v in (val.get("auroc") or {}).items()],
            ),
        ]
        return lines
    boot = evaluation.get("bootstrap") or {}
    lines += [
        f"On the **{evaluation.get('split')}** split: {evaluation.get('n_images')} images, "
        f"{evaluation.get('n_patients')} patients; 95% intervals from {boot.get('n', 0)} "
        f"{boot.get('unit', 'patient')}-level bootstrap resamples. "
        + _operating_point(card, evaluation),
        "",
    ]
    rows = [
        [f, _num(m.get("auroc")), _ci(m.get("auroc_ci")), _num(m.get("ap")), _ci(m.get("ap_ci")),
         _num(m.get("sensitivity")), _num(m.get("specificity")), str(m.get("n_positive"))]
        for f, m in evaluation.get("per_class", {}).items()
    ]  # fmt: skip
    macro = evaluation.get("macro", {})
    rows.append(["**macro**", _num(macro.get("auroc")), _ci(macro.get("auroc_ci")),
                 _num(macro.get("ap")), _ci(macro.get("ap_ci")), "", "", ""])  # fmt: skip
    header = ["finding", "AUROC", "95% CI", "AP", "95% CI", "sensitivity", "specificity",
              "positives"]  # fmt: skip
    lines += _table(header, rows)
    return lines


def _operating_point(card: dict[str, Any], evaluation: dict[str, Any]) -> str:
    """Which thresholds the sensitivity and specificity columns were computed at: ``eval``
    tunes its own on the validation split it was given; the card holds them only when
    ``eval`` wrote them (``metrics["card"]``)."""
    tuned = evaluation.get("thresholds") or {}
    written = (evaluation.get("card") or {}).get("written")
    same = (card.get("thresholds") or {}).get("values") == tuned.get("values")
    where = f"tuned by {tuned.get('method')} on that evaluation's {tuned.get('split')} split"
    if written and same:
        return f"Sensitivity and specificity at the thresholds {where}, the card's (below)."
    reason = (evaluation.get("card") or {}).get("reason", "not written")
    return (
        f"Sensitivity and specificity at the thresholds {where}, which are **not** the "
        f"card's below ({reason})."
    )


def _subgroups(evaluation: dict[str, Any] | None) -> list[str]:
    groups = (evaluation or {}).get("subgroups") or {}
    if not groups.get("rows"):
        return ["## Subgroups", "", "No subgroup table (the evaluation had no sex, age or view)."]
    rows = [
        [r["column"], str(r["group"]), r["finding"], str(r["n"]), str(r["n_positive"]),
         _num(r["auroc"]), _ci(r.get("auroc_ci"))]
        for r in groups["rows"]
    ]  # fmt: skip
    return [
        "## Subgroups",
        "",
        f"AUROC inside each group of {', '.join(groups.get('by', []))} (groups of at least "
        f"{groups.get('min_size')} images).",
        "",
        *_table(["by", "group", "finding", "images", "positives", "AUROC", "95% CI"], rows),
    ]


def _audit(evaluation: dict[str, Any] | None) -> list[str]:
    """The shortcut audit's rows (``audit.csv``'s table, :func:`audit_table`) as Markdown."""
    audit = (evaluation or {}).get("audit")
    if not audit:
        return ["## Shortcut audit", "", "Not run: `cxrkit eval --checkpoint ... --audit`."]
    table = audit_table(audit).fillna("")
    rows = [
        [str(r.part), str(r.finding), str(r.column), str(r.group), str(r.estimator),
         _num(r.auroc if r.auroc != "" else None), _ci([r.ci_low, r.ci_high] if r.ci_low != ""
         else None), str(r.reason)]
        for r in table.itertuples()
    ]  # fmt: skip
    return [
        "## Shortcut audit",
        "",
        "How much of each finding metadata alone predicts (a logistic regression on the "
        "columns named, cross-validated by patient), the model inside each stratum, and what "
        "the model's embeddings encode of the metadata (a linear probe). Intervals: patient "
        "bootstrap.",
        "",
        *_table(
            ["part", "finding", "column", "group", "estimator", "AUROC", "95% CI", "note"], rows
        ),  # fmt: skip
    ]


def _operating_points(card: dict[str, Any]) -> list[str]:
    lines = ["## Thresholds and calibration", ""]
    t = card.get("thresholds")
    if not t:
        lines.append("- No tuned thresholds: every finding is called at 0.5.")
    else:
        skip = ("values", "method", "patients_sha256")
        where = ", ".join(f"{k}: {v}" for k, v in t.items() if k not in skip)
        lines.append(f"- Thresholds tuned by {t.get('method')} ({where}).")
        lines += [f"  - {f}: {v:.3g}" for f, v in (t.get("values") or {}).items()]
    c = card.get("calibration")
    lines.append(
        f"- Calibration: {c['method']}, fitted on the same validation images."
        if c
        else "- No calibration: probabilities are the network's sigmoid outputs."
    )
    return lines


def _gate(card: dict[str, Any]) -> list[str]:
    g = card.get("gate")
    if not g:
        return ["## Input gate", "", "No input gate fitted: the model answers on any image. "
                "Fit one with `cxrkit gate --checkpoint CKPT --data PREP`."]  # fmt: skip
    return [
        "## Input gate",
        "",
        f"- Method: {g.get('method')}, on {g.get('features', 'the penultimate features')}.",
        f"- Fitted on {g.get('n_train', 'n/a')} training images; threshold {threshold_summary(g)}.",
        f"- Before it, structural checks: {', '.join(CHECKS)}. A flagged image is reported "
        "(`ood_score`, `in_distribution`), or refused with `--refuse-ood`.",
    ]


def _limitations(card: dict[str, Any], evaluation: dict[str, Any] | None) -> list[str]:
    found = []
    few = {f: n for f, n in ((card.get("training_data") or {}).get("train_positives") or {}).items()
           if n < FEW_POSITIVES}  # fmt: skip
    if few:
        listed = ", ".join(f"{f} ({n})" for f, n in few.items())
        found.append(f"Few training positives (< {FEW_POSITIVES}): {listed}.")
    if evaluation is None:
        found.append("No held-out evaluation is attached to this card.")
    else:
        train = {d.get("prepared") for d in (card.get("training_data") or {}).get("datasets") or []}
        data = (evaluation.get("source") or {}).get("data")
        if data and str(Path(data).resolve()) in train:
            found.append(
                "Evaluated on a held-out split of the training datasets only: no external "
                "validation on another hospital's data."
            )
        if evaluation.get("split") != "test":
            found.append(
                f"The figures are on the {evaluation.get('split')} split, not a held-out "
                "test split: optimistic."
            )
        for s in evaluation.get("skipped_classes") or []:
            found.append(f"{s} was not evaluated (no positives or negatives in the test split).")
        rows = (evaluation.get("subgroups") or {}).get("rows") or []
        by: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in rows:
            ci = r.get("auroc_ci")
            if ci and None not in ci and r.get("n_positive", 0) >= GAP_MIN_POSITIVES:
                by.setdefault((r["column"], r["finding"]), []).append(r)
        for (column, finding), groups in by.items():
            low = max(groups, key=lambda r: r["auroc_ci"][0])
            high = min(groups, key=lambda r: r["auroc_ci"][1])
            if low["auroc_ci"][0] > high["auroc_ci"][1]:  # disjoint 95% intervals
                found.append(
                    f"{finding}: AUROC {low['auroc']:.3f} for {column} {low['group']} but "
                    f"{high['auroc']:.3f} for {high['group']}, with disjoint 95% intervals."
                )
    if not card.get("gate"):
        found.append("No input gate: images unlike the training data are not flagged.")
    found.append("Labels of public datasets are mined from reports and carry their noise.")
    return ["## Known limitations", "", *(f"- {x}" for x in found)]


def _network(card: dict[str, Any]) -> list[str]:
    """The network, where its weights came from and the licence they ship with."""
    lines = ["## The network", "", f"- Backbone: `{card.get('backbone')}`."]
    enc = card.get("encoder")
    if enc:
        lines += [
            f"- Foundation encoder ({enc['family']}, {enc['architecture']}) from "
            f"`{enc['source']}`, native input {enc['native_size']} px, patch {enc['patch_size']}"
            f" px, pooled as the {enc['pooling']}.",
            f"- Channels: {enc['channels']}; mean {enc['mean']}, std {enc['std']} (from "
            f"{enc['normalization_source']}).",
        ]
    origin = card.get("origin")
    if origin:
        lines.append(f"- Imported from {origin.get('kind')}: {_origin_text(origin)}.")
    licence = card.get("licence") or (
        "not recorded: a timm backbone; the licence of its pretrained weights is on the timm "
        "model's page"
    )
    lines.append(f"- Licence of the weights: {licence}.")
    return lines


def _origin_text(origin: dict[str, Any]) -> str:
    """``arch densenet121-res224-nih, file x.pt, kept_outputs A, B``: one line of the origin."""
    show = lambda v: ", ".join(map(str, v)) if isinstance(v, list) else str(v)  # noqa: E731
    return "; ".join(f"{k} {show(v)}" for k, v in origin.items() if k != "kind" and v is not None)


def model_card_markdown(card: dict[str, Any], evaluation: dict[str, Any] | None = None) -> str:
    """The Markdown text of ``MODEL_CARD.md`` for ``card`` (and an eval's ``metrics.json``)."""
    findings = card.get("findings", [])
    lines = [
        f"# Model card: {card.get('backbone')} for {len(findings)} chest X-ray findings",
        "",
        DISCLAIMER,
        "",
        "## Intended use",
        "",
        "Research on multilabel finding detection in frontal chest radiographs "
        f"({', '.join(findings)}), on images like those it was trained on. Not for diagnosis, "
        "triage or any clinical decision; not for lateral films, children's films, CT, MR or "
        "photographs.",
        "",
        f"- Input: one-channel radiograph letterboxed to "
        f"{card.get('normalization', {}).get('letterbox_size')} px, resized to "
        f"{card.get('input_size')} px. Written by cxrkit {card.get('cxrkit_version')}.",
        "",
        *_network(card),
        "",
        *_training(card),
        "",
        *_performance(card, evaluation),
        "",
        *_subgroups(evaluation),
        "",
        *_audit(evaluation),
        "",
        *_operating_points(card),
        "",
        *_gate(card),
        "",
        *_limitations(card, evaluation),
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    out_dir: str | Path, card: dict[str, Any], evaluation: dict[str, Any] | None = None
) -> Path:
    """Write ``out_dir/MODEL_CARD.md``; returns its path."""
    path = Path(out_dir) / MODEL_CARD_MD
    atomic_write_text(path, model_card_markdown(card, evaluation))
    return path
