"""Benchmark the shortcut audit's metadata-only baseline on the real NIH metadata.

Reads NIH's Data_Entry CSV (all 112,120 images; no image is needed) with
:func:`cxrkit.data.datasets.nih.read_labels`, and for each feature set (``--sets``, columns
joined by ``+``) fits :func:`cxrkit.evaluate.audit.metadata_baseline`: an L2 logistic
regression per finding on one-hot metadata, ``--folds``-fold cross-validation grouped by
patient. Prints per-finding and macro AUROC (:func:`cxrkit.evaluate.metrics.roc_auc`) with
``--boot`` patient-bootstrap 95% intervals, three ways: the out-of-fold probabilities pooled
as they are (how issue 16 measured), the same ranked within each fold first (what ``eval
--audit`` reports: :func:`cxrkit.evaluate.probe.fold_percentiles`), and the mean of the
per-fold AUROCs (a reference without the pooling question, no interval).

``--eval`` also times ``cxrkit eval --predictions P --dataset nih --labels META --audit`` end
to end on all images, with random predictions (their AUROC is meaningless; the time is the
point), written to a temporary folder.

``--probe IMAGES DIM`` times the embedding probe on random embeddings (sex encoded along one
direction, view and age band not at all) for the first IMAGES images' metadata.

    .venv/bin/python benchmarks/bench_audit.py [--metadata PATH] [--boot 1000] [--eval]
        [--probe 25000 1024]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.datasets.nih import read_labels
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.evaluate.audit import metadata_baseline
from cxrkit.evaluate.bootstrap import bootstrap_ci
from cxrkit.evaluate.metrics import roc_auc
from cxrkit.evaluate.probe import embedding_probe
from cxrkit.evaluate.results import add_age_band

DEFAULT = Path(__file__).resolve().parents[2] / "shared/data/nih-sample"
DEFAULT = DEFAULT / "Data_Entry_2017_v2020.csv.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metadata", type=Path, default=DEFAULT, help="NIH Data_Entry CSV")
    parser.add_argument("--sets", nargs="+", default=["view", "view+sex+age_band"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--boot", type=int, default=1000, help="patient resamples (0 = none)")
    parser.add_argument("--eval", action="store_true", help="also time `eval --audit`")
    parser.add_argument(
        "--probe",
        type=int,
        nargs=2,
        metavar=("IMAGES", "DIM"),
        help="also time the embedding probe on the first IMAGES images' metadata with random "
        "DIM-dimensional embeddings (sex encoded along one direction), e.g. 25000 1024",
    )
    args = parser.parse_args()
    if not args.metadata.is_file():
        raise SystemExit(f"no NIH metadata at {args.metadata}; pass --metadata")
    start = time.perf_counter()
    table = add_age_band(read_labels(args.metadata))
    findings = list(NIH_FINDINGS)
    y = table[findings].to_numpy(np.float64)
    patients = table["patient_id"].to_numpy()
    print(
        f"{len(table):,} images, {len(np.unique(patients)):,} patients, read in "
        f"{time.perf_counter() - start:.1f} s ({args.metadata.name})"
    )
    for spec in args.sets:
        columns = spec.split("+")
        t0 = time.perf_counter()
        base = metadata_baseline(table, y, columns, patients, n_folds=args.folds)
        fit_s = time.perf_counter() - t0
        print(
            f"\n{spec}: {len(base.features)} one-hot features, {args.folds}-fold grouped by "
            f"patient, fit in {fit_s:.1f} s"
        )
        per_fold = np.nanmean(
            [roc_auc(y[base.folds == k], base.probabilities[base.folds == k])
             for k in np.unique(base.folds)],
            axis=0,
        )  # fmt: skip
        pooled = {
            "pooled probabilities": auroc_with_ci(y, base.probabilities, patients, args.boot),
            "fold percentiles (eval --audit)": auroc_with_ci(y, base.scores, patients, args.boot),
        }
        head = "".join(f"{k:>32}" for k in pooled) + f"{'mean of per-fold AUROCs':>26}"
        print(f"  {'finding':<20}{head}")
        for j, name in enumerate([*findings, "macro"]):
            cells = "".join(f"{v[j]:>32}" for v in pooled.values())
            mean = np.nanmean(per_fold) if name == "macro" else per_fold[j]
            print(f"  {name:<20}{cells}{mean:>26.3f}")
    print(f"\n({args.boot} patient resamples per column of intervals)")
    if args.eval:
        time_eval(args.metadata, table, findings, args.boot)
    if args.probe:
        time_probe(table.iloc[: args.probe[0]].reset_index(drop=True), args.probe[1], args.boot)


def auroc_with_ci(y: np.ndarray, scores: np.ndarray, patients: np.ndarray, boot: int) -> list:
    """Per finding then macro: ``"AUROC [low, high]"`` text, ``boot`` patient resamples."""
    auroc = roc_auc(y, scores)
    ci = None
    if boot:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PPV etc. at 0.5: not reported
            ci = bootstrap_ci(y, scores, thresholds=0.5, groups=patients, n_boot=boot, seed=0)
    pairs = [*(ci["auroc"] if ci else [None] * len(auroc)), ci["macro_auroc"] if ci else None]
    return [
        f"{a:.3f}" + (f" [{p[0]:.3f}, {p[1]:.3f}]" if p is not None else "")
        for a, p in zip([*auroc, np.nanmean(auroc)], pairs, strict=True)
    ]


def time_eval(metadata: Path, table: pd.DataFrame, findings: list[str], boot: int) -> None:
    """Time ``cxrkit eval --predictions --audit`` (in-process, import included once)."""
    from cxrkit.cli.parser import main as cli

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        preds = table[["image_id"]].copy()
        for f in findings:
            preds[f"prob_{f}"] = rng.random(len(table)).round(4)
        path = Path(tmp) / "preds.csv"
        preds.to_csv(path, index=False)
        argv = ["eval", "--predictions", str(path), "--dataset", "nih", "--labels", str(metadata)]
        argv += ["--out", str(Path(tmp) / "ev"), "--bootstrap", str(boot), "--calibration"]
        argv += ["none", "--no-report"]
        timings = {}
        for label, extra in (("without --audit", []), ("with --audit", ["--audit"])):
            t0 = time.perf_counter()
            cli([*argv, *extra])  # the same folder: eval replaces its own files
            timings[label] = time.perf_counter() - t0
        print(
            "\n`cxrkit eval --predictions` on all images, random scores, "
            f"{boot} patient resamples, no report: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        )


def time_probe(table: pd.DataFrame, dim: int, boot: int) -> None:
    """Time :func:`embedding_probe` (view, sex, age_band) on random float32 embeddings."""
    rng = np.random.default_rng(0)
    male = (table["sex"] == "M").to_numpy(float)
    embeddings = rng.normal(size=(len(table), dim)) + 0.1 * np.outer(male, rng.normal(size=dim))
    embeddings = embeddings.astype(np.float32)
    print(f"\nembedding probe, {len(table):,} images x {dim} dims, {boot} patient resamples:")
    for column in ("view", "sex", "age_band"):
        t0 = time.perf_counter()
        found = embedding_probe(
            embeddings, table, [column], table["patient_id"].to_numpy(), n_boot=boot
        )["targets"][column]
        print(
            f"  {column:<10} AUROC {found['auroc']:.3f} ({found['kind']}, "
            f"{len(found['values'])} values): {time.perf_counter() - t0:.1f} s"
        )


if __name__ == "__main__":
    main()
