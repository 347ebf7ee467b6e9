"""``cxrkit demo``: the whole flow on phantom data, offline, on a CPU, in a few minutes.

synth -> prepare -> train -> eval -> gate -> infer -> cam -> localise, each step the same
library call the corresponding subcommand makes, writing into one folder::

    OUT/phantom/      the phantom dataset (NIH layout)      OUT/prepared/  manifest + cache
    OUT/run/          run folder, checkpoints/best.ckpt     OUT/eval/      metrics.json
    OUT/predictions.csv                                      OUT/cam/       Grad-CAM overlays
    OUT/localization/ Grad-CAM pointing game and IoU on the test split's boxes
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cxrkit.data.prepare import prepare
from cxrkit.data.synth.dataset import generate_dataset
from cxrkit.deploy.batch import write_predictions
from cxrkit.deploy.export import export_bundle
from cxrkit.deploy.gate_fit import fit_gate
from cxrkit.deploy.model_card import MODEL_CARD_MD
from cxrkit.deploy.predictor import Predictor
from cxrkit.evaluate.results import format_table
from cxrkit.evaluate.runs import EvalOptions, evaluate_checkpoint
from cxrkit.explain import localization as loc
from cxrkit.explain.cam import cam_image
from cxrkit.files import claim_folder
from cxrkit.train.config import load_config, resolve_recipe
from cxrkit.train.fit import fit

T = TypeVar("T")


def _step(name: str, fn: Callable[[], T], timings: dict[str, float]) -> T:
    print(f"\n== {name}", flush=True)
    start = time.perf_counter()
    result = fn()
    timings[name] = time.perf_counter() - start
    print(f"   {name}: {timings[name]:.1f} s", flush=True)
    return result


def run_demo(
    out: str | Path = "runs/demo",
    *,
    overwrite: bool = False,
    n_patients: int | None = None,
    epochs: int | None = None,
    workers: int = 2,
    image_size: int = 256,
    n_cam: int = 3,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns the test metrics dict and prints the results table."""
    out = Path(out)
    claim_folder(out, "demo", overwrite=overwrite)
    overrides = [] if epochs is None else [f"trainer.max_epochs={epochs}"]
    config = load_config(resolve_recipe("demo"), overrides)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _step(
        "synth",
        lambda: generate_dataset(
            out / "phantom",
            n_patients=n_patients or 600,
            size=image_size,
            seed=config.seed,
            workers=workers,
        ),
        timings,
    )
    manifest = _step(
        "prepare",
        lambda: prepare("nih", out / "phantom", out / "prepared", size=image_size, workers=workers),
        timings,
    )
    result = _step("train", lambda: fit(config, out / "prepared", out / "run"), timings)
    evaluated = _step(
        "eval",
        lambda: evaluate_checkpoint(
            result.best,
            out / "prepared",
            out / "eval",
            options=EvalOptions(by=("sex", "age_band", "view"), audit=True),
        ),
        timings,
    )
    gate = _step("gate", lambda: fit_gate(result.best, out / "prepared", progress=False), timings)
    print(f"   {gate.describe()}")
    bundle = _step(
        "export",
        lambda: export_bundle(result.best, out / "bundle", evaluation=evaluated.out),
        timings,
    )
    predictor = Predictor.from_checkpoint(result.best)
    test_paths = [Path(p) for p in manifest.rows("test")["path"]]
    _step(
        "infer",
        lambda: write_predictions(predictor, test_paths, out / "predictions.csv"),
        timings,
    )
    overlays = _step(
        "cam", lambda: _cams(predictor, out, evaluated.out / "predictions_test.csv", n_cam), timings
    )
    located = _step("localise", lambda: _localise(predictor, out), timings)
    total = time.perf_counter() - t0
    metrics = evaluated.metrics
    print(
        "\nResults on the phantom test split "
        f"({metrics['n_images']} images; 95% CI by patient bootstrap; thresholds and "
        "temperature calibration fitted on val):\n"
    )
    print(format_table(metrics))
    print(f"\nGrad-CAM localisation on the test split's boxes:\n{located}")
    print(
        f"\nreport:       {evaluated.out / 'report.html'}\n"
        f"metrics:      {evaluated.metrics_file}\npredictions:  {out / 'predictions.csv'}\n"
        f"checkpoint:   {result.best}\nmodel card:   {bundle / MODEL_CARD_MD}\n"
        f"overlays:     {', '.join(map(str, overlays))}\n"
        f"logs:         {out / 'run' / 'logs' / 'metrics.csv'} "
        f"(tensorboard --logdir {out / 'run' / 'tensorboard'})"
    )
    print(
        "time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f"; total {total:.0f} s"
    )
    return metrics


def _localise(predictor: Predictor, out: Path) -> str:
    """Grad-CAM pointing game and top-10% IoU against the phantom's boxes on the test split
    (``cxrkit cam --evaluate``), written to ``out/localization``; returns the table."""
    phantom = out / "phantom"
    result = loc.evaluate_localization(
        predictor,
        loc.read_boxes(phantom / "BBox_List_2017.csv"),
        phantom / "images",
        image_ids=loc.read_image_list(phantom / "test_list.txt"),
        progress=False,
    )
    settings = {"boxes": str(phantom / "BBox_List_2017.csv"), "split": "test"}
    loc.write_localization(result, out / "localization", {**settings, "top_percent": 10.0})
    return loc.format_table(result, 10.0)


def _cams(predictor: Predictor, out: Path, predictions_csv: Path, n: int) -> list[Path]:
    """Overlays for the ``n`` test images most confidently positive for some finding."""
    import pandas as pd

    table = pd.read_csv(predictions_csv)
    probs = table[[f"prob_{f}" for f in predictor.findings]]
    chosen = probs.max(axis=1).sort_values(ascending=False).index[:n]
    manifest_paths = pd.read_csv(out / "prepared" / "manifest.csv", dtype=str)
    path_of = dict(zip(manifest_paths["image_id"], manifest_paths["path"], strict=True))
    written: list[Path] = []
    for i in chosen:
        results = cam_image(predictor, path_of[table.loc[i, "image_id"]], out / "cam")
        written += [r.overlay_path for r in results if r.overlay_path is not None]
    return written
