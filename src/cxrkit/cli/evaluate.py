"""``cxrkit eval`` and ``cxrkit compare``: their arguments and what they run."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cxrkit.cli.devices import add_device_arguments, device_options
from cxrkit.errors import UserError

if TYPE_CHECKING:
    from cxrkit.deploy.ranks import Launch
    from cxrkit.evaluate.runs import EvalResult

AddParser = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.8,0.9; got {text!r}") from None


PATIENT_COL_HELP = (
    "with a labels CSV: its patient column (default: one named patient_id / Patient ID; "
    "without one, each image is its own patient and the report says so)"
)


def add_evaluate_parsers(add: AddParser) -> None:
    """Add ``eval`` and ``compare`` through ``add(name, fn, help)`` (the parser's helper)."""
    s = add(
        "eval",
        cmd_eval,
        "evaluate a checkpoint or any tool's predictions: metrics with "
        "confidence intervals, operating points, calibration, subgroups, an HTML report",
    )
    s.add_argument("--checkpoint", help="a cxrkit checkpoint (predicts --data)")
    s.add_argument("--data", help="prepared folder, with --checkpoint")
    add_device_arguments(s, default=None)  # with --checkpoint only
    s.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="with --checkpoint: prediction processes, one per GPU (cuda:0..N-1) or N sharing "
        "the CPU, each predicting a shard; the metrics are computed over the whole set "
        "(default 1; under torchrun or srun every rank is one of them: leave this out)",
    )
    s.add_argument(
        "--predictions",
        help="a predictions CSV from any tool: an image column and "
        "one probability column per finding",
    )
    s.add_argument(
        "--labels",
        help="with --predictions: a prepared folder, a labels CSV (an image column, one "
        "0/1/blank column per finding), or a dataset's own label file with --dataset "
        "(e.g. --dataset nih --labels Data_Entry_2017.csv)",
    )
    s.add_argument("--dataset", help="the dataset whose label file --labels is")
    s.add_argument("--patient-col", help=PATIENT_COL_HELP)
    s.add_argument("--split", default="test", help="split to evaluate (default test)")
    s.add_argument(
        "--out", required=True, help="folder for metrics.json, per_class.csv, report.html"
    )
    s.add_argument(
        "--threshold-method",
        default="f1",
        help="f1, youden, sensitivity:0.9 or specificity:0.9 (tuned on val only)",
    )
    s.add_argument(
        "--calibration",
        default="temperature",
        help="none, temperature, platt, isotonic, or auto (best on val); fitted on val",
    )
    s.add_argument(
        "--specificities",
        type=_floats,
        default=(0.8, 0.9, 0.95),
        help="report sensitivity at these specificities (default 0.8,0.9,0.95)",
    )
    s.add_argument(
        "--sensitivities",
        type=_floats,
        default=(0.8, 0.9),
        help="report specificity at these sensitivities (default 0.8,0.9)",
    )
    s.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples for 95%% intervals, by patient (0 = none)",
    )
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    s.add_argument("--by", default="", help="subgroup columns, e.g. sex,age_band,view")
    s.add_argument(
        "--audit",
        action="store_true",
        help="shortcut audit: a metadata-only baseline (view, sex, age band, site) beside the "
        "model, the model's AUROC within each of their values and, with --checkpoint, a "
        "linear probe of what the embeddings encode; metrics.json['audit'], audit.csv",
    )
    s.add_argument(
        "--audit-columns",
        help="the audit's metadata columns, e.g. view,sex,age_band (implies --audit; default: "
        "those of view, sex, age_band and site/scanner the labels have)",
    )
    s.add_argument(
        "--audit-folds",
        type=int,
        default=5,
        help="cross-validation folds of the audit's regressions, grouped by patient (default 5)",
    )
    s.add_argument("--no-report", action="store_true", help="skip report.html")
    card = s.add_mutually_exclusive_group()
    card.add_argument(
        "--write-card",
        action="store_true",
        help="store the thresholds/calibration tuned here in the checkpoint's card even when "
        "it was not trained on this data (by default only then, or to replace ones tuned on "
        "the same validation patients)",
    )
    card.add_argument(
        "--no-write-card",
        action="store_true",
        help="never store thresholds/calibration in the checkpoint's model card",
    )

    s = add(
        "compare",
        cmd_compare,
        "two models' predictions on the same images: AUROC of each and their difference "
        "with a paired patient-bootstrap interval and p-value (DeLong's beside it)",
    )
    s.add_argument("a", help="predictions CSV of model A")
    s.add_argument("b", help="predictions CSV of model B")
    s.add_argument(
        "--labels", required=True, help="prepared folder, labels CSV or dataset label file"
    )
    s.add_argument("--dataset", help="the dataset whose label file --labels is")
    s.add_argument("--patient-col", help=PATIENT_COL_HELP)
    s.add_argument("--split", default="test", help="split of a prepared folder ('' = all)")
    s.add_argument("--bootstrap", type=int, default=1000, help="paired patient resamples")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    s.add_argument("--out", required=True, help="folder for compare.json")


def _launched_rank() -> int | None:
    """This process's rank when torchrun or srun started several, else None (torch is
    imported only under a launcher: ``eval --predictions`` runs no model)."""
    if not {"TORCHELASTIC_RUN_ID", "SLURM_PROCID"} & set(os.environ):
        return None
    from cxrkit.deploy.ranks import launched

    launch = launched()
    return None if launch is None else launch.rank


def cmd_eval(a: argparse.Namespace) -> int:
    from cxrkit.evaluate.results import format_table
    from cxrkit.evaluate.runs import EvalOptions, evaluate_checkpoint, evaluate_predictions

    options = EvalOptions(
        split=a.split,
        threshold_method=a.threshold_method,
        calibration=a.calibration,
        specificities=a.specificities,
        sensitivities=a.sensitivities,
        n_boot=a.bootstrap,
        seed=a.seed,
        by=tuple(c for c in a.by.split(",") if c) if a.by else (),
        report=not a.no_report,
        audit=a.audit or bool(a.audit_columns),
        audit_columns=tuple(c.strip() for c in a.audit_columns.split(",") if c.strip())
        if a.audit_columns
        else None,
        audit_folds=a.audit_folds,
    )
    if (a.checkpoint is None) == (a.predictions is None):
        raise UserError("give either --checkpoint (with --data) or --predictions (with --labels)")
    if a.checkpoint is not None:
        from cxrkit.models.devices import resolve_runtime

        if a.data is None:
            raise UserError("--checkpoint needs --data PREP (a prepared folder)")
        from cxrkit.deploy.ranks import launch_for

        launch = launch_for(a.devices, device_options(a)["device"])
        if launch is None or launch.zero:
            print(resolve_runtime(**device_options(a)).line())

        def run() -> EvalResult | None:
            return evaluate_checkpoint(
                a.checkpoint,
                a.data,
                a.out,
                options=options,
                write_card=True if a.write_card else False if a.no_write_card else None,
                devices=a.devices,
                launch=launch,
                **device_options(a),
            )

        if launch is None:
            r = run()
        elif not launch.zero:
            return _other_rank(launch, run)
        else:  # rank 0 evaluates, then tells every rank how it ended (the same exit code)
            done: list[EvalResult] = []
            launch.on_zero(lambda: done.append(run()))
            r = done[0]
        card = r.metrics["card"]
        print(f"model card {'updated' if card['written'] else 'kept'}: {card['reason']}")
    else:
        if a.devices != 1:
            raise UserError("--devices runs a model: it goes with --checkpoint")
        if a.device is not None or a.precision is not None:
            raise UserError(
                "--device and --precision run a model: they go with --checkpoint, not with "
                "--predictions (already computed)"
            )
        if a.labels is None:
            raise UserError(
                "--predictions needs --labels (a prepared folder, a labels CSV, or a "
                "dataset's label file with --dataset)"
            )
        rank = _launched_rank()
        if rank not in (None, 0):
            return 0  # rank 0 evaluates the file alone: N copies would race for --out
        if rank == 0:
            print("launched ranks: rank 0 evaluates --predictions alone (it runs no model)")
        r = evaluate_predictions(
            a.predictions,
            a.labels,
            a.out,
            dataset=a.dataset,
            patient_col=a.patient_col,
            options=options,
        )
    m = r.metrics
    print(format_table(m))
    if m.get("audit"):
        from cxrkit.evaluate.audit_output import format_audit

        print(format_audit(m["audit"]))
    missing = m.get("missing") or {}
    if missing.get("in_predictions_only") or missing.get("in_labels_only"):
        print(
            f"not evaluated: {missing['in_predictions_only']} predicted image(s) without "
            f"labels, {missing['in_labels_only']} labelled image(s) without predictions"
        )
    for note in m.get("notes", []):
        print(f"note: {note}")
    if missing.get("not_evaluated_findings"):
        print(f"no predictions for: {', '.join(missing['not_evaluated_findings'])} (not evaluated)")
    print(
        f"{m['n_images']} images; {r.out / 'metrics.json'}, {r.out / 'per_class.csv'}"
        + (f", {r.out / 'audit.csv'}" if m.get("audit") else "")
        + (f", {r.out / 'report.html'}" if options.report else "")
    )
    return 0


def _other_rank(launch: Launch, run: Callable[[], EvalResult | None]) -> int:
    """A rank other than 0: predict its shard (inside ``run``), then wait for rank 0's outcome.
    A UserError here is rank 0's too (the same checks on the same files): rank 0 prints it."""
    from cxrkit.deploy.ranks import RankFailed

    try:
        run()
    except (UserError, RankFailed):  # a check every rank failed, or a collective's failure
        launch.on_zero(lambda: None)
        raise RankFailed() from None
    launch.on_zero(lambda: None)  # RankFailed when rank 0 failed
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from cxrkit.evaluate.compare import compare

    result = compare(
        a.a,
        a.b,
        a.labels,
        a.out,
        dataset=a.dataset,
        patient_col=a.patient_col,
        split=a.split or None,
        n_boot=a.bootstrap,
        seed=a.seed,
    )
    print(f"{'Class':<20} {'AUROC A':>8} {'AUROC B':>8} {'diff':>7} {'95% CI':>16} {'p':>8}")

    def num(v: float | None, spec: str) -> str:
        return format(v, spec) if v is not None else "n/a"

    for name, row in result["per_class"].items():
        low, high = row["ci_diff"]
        ci = f"{num(low, '.3f')} to {num(high, '.3f')}"
        print(
            f"{name:<20} {num(row['auc_a'], '8.4f'):>8} {num(row['auc_b'], '8.4f'):>8} "
            f"{num(row['diff'], '7.4f'):>7} {ci:>16} {num(row['p_value'], '8.3g'):>8}"
        )
    print(f"CI and p: {result['interval']} ({result['n_patients']} patients)")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"{result['n_images']} images in both files; {Path(a.out) / 'compare.json'}")
    return 0
