"""The ``cxrkit`` command: a thin layer that parses arguments, calls library functions and
prints. User errors (:class:`cxrkit.errors.UserError`) print one line and exit with code 2.

Exit codes: 0 success; 2 bad input (message on stderr); 3 ``infer`` finished but some files
could not be read (their rows say why); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from cxrkit import __version__
from cxrkit.errors import UserError

EXIT_USER_ERROR, EXIT_PARTIAL = 2, 3  # 3: infer wrote every row but some images failed
RECIPES = Path(__file__).parent / "configs"


def resolve_recipe(name: str) -> Path:
    """A config path, or the name of a recipe shipped with cxrkit (``demo``, ...)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = RECIPES / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    from cxrkit.errors import did_you_mean

    recipes = [p.stem for p in RECIPES.glob("*.yaml")]
    raise did_you_mean(name, recipes, what="config file or recipe") from None


def cmd_synth(a: argparse.Namespace) -> int:
    from cxrkit.synth import generate_dataset

    s = generate_dataset(
        a.out,
        n_patients=a.n_patients,
        size=a.size,
        seed=a.seed,
        workers=a.workers,
        overwrite=a.overwrite,
    )
    print(
        f"wrote {s.n_images} images of {s.n_patients} patients to {s.out} "
        f"in {s.seconds:.1f} s ({s.n_images / max(s.seconds, 1e-9):.0f} images/s)"
    )
    print("prevalence: " + ", ".join(f"{k} {v:.1%}" for k, v in s.prevalence.items()))
    return 0


def cmd_datasets(a: argparse.Namespace) -> int:
    from cxrkit.datasets import list_datasets

    for spec in list_datasets():
        print(f"{spec.name:<10} {spec.title}\n{'':<10} layout: {spec.layout}")
    return 0


def cmd_prepare(a: argparse.Namespace) -> int:
    from cxrkit.prepare import SplitPolicy, prepare
    from cxrkit.preprocess import Clahe

    m = prepare(
        a.dataset,
        a.root,
        a.out,
        size=a.size,
        workers=a.workers,
        overwrite=a.overwrite,
        split=SplitPolicy(val_fraction=a.val_fraction, test_fraction=a.test_fraction, seed=a.seed),
        options={k[4:]: v for k, v in vars(a).items() if k.startswith("opt_")},
        clahe=Clahe(clip_limit=a.clahe) if a.clahe else None,
    )
    h = m.header
    print(f"prepared {h['counts']['prepared']} images of {h['dataset']} into {m.folder}")
    print("counts: " + ", ".join(f"{k} {v}" for k, v in h["counts"].items()))
    print(
        f"split ({h['split']['policy']}): "
        + ", ".join(
            f"{k} {v} images / {h['split']['patients'][k]} patients"
            for k, v in h["split"]["images"].items()
        )
    )
    if h["counts"]["failed_to_read"]:
        print(f"unreadable images are listed in {m.folder / 'failed_images.csv'}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from cxrkit.config import load_config
    from cxrkit.fit import fit

    config = load_config(resolve_recipe(a.config), a.set)
    result = fit(config, a.data, a.out, overwrite=a.overwrite)
    print(
        f"trained {result.epochs} epoch(s) in {result.seconds:.0f} s; best validation macro "
        f"AUROC {result.best_score:.4f}"
    )
    print(f"best checkpoint: {result.best}\nlast checkpoint: {result.last}")
    return 0


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.8,0.9; got {text!r}") from None


def cmd_eval(a: argparse.Namespace) -> int:
    from cxrkit.eval_runs import EvalOptions, evaluate_checkpoint, evaluate_predictions
    from cxrkit.evaluation import format_table

    options = EvalOptions(
        split=a.split, threshold_method=a.threshold_method, calibration=a.calibration,
        specificities=a.specificities, sensitivities=a.sensitivities, n_boot=a.bootstrap,
        seed=a.seed, by=tuple(c for c in a.by.split(",") if c) if a.by else (),
        report=not a.no_report,
    )
    if (a.checkpoint is None) == (a.predictions is None):
        raise UserError("give either --checkpoint (with --data) or --predictions (with --labels)")
    if a.checkpoint is not None:
        if a.data is None:
            raise UserError("--checkpoint needs --data PREP (a prepared folder)")
        r = evaluate_checkpoint(a.checkpoint, a.data, a.out, options=options,
                                write_card=not a.no_write_card)
    else:
        if a.labels is None:
            raise UserError("--predictions needs --labels (a prepared folder, or a dataset's "
                            "label file with --dataset)")
        r = evaluate_predictions(a.predictions, a.labels, a.out, dataset=a.dataset,
                                 options=options)
    m = r.metrics
    print(format_table(m))
    missing = m.get("missing") or {}
    if missing.get("in_predictions_only") or missing.get("in_labels_only"):
        print(f"not evaluated: {missing['in_predictions_only']} predicted image(s) without "
              f"labels, {missing['in_labels_only']} labelled image(s) without predictions")
    print(f"{m['n_images']} images; {r.out / 'metrics.json'}, {r.out / 'per_class.csv'}"
          + (f", {r.out / 'report.html'}" if options.report else ""))
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from cxrkit.eval_runs import compare

    result = compare(a.a, a.b, a.labels, a.out, dataset=a.dataset, split=a.split or None)
    print(f"{'Class':<20} {'AUROC A':>8} {'AUROC B':>8} {'diff':>7} {'p (DeLong)':>11}")
    def num(v: float | None, spec: str) -> str:
        return format(v, spec) if v is not None else "n/a"

    for name, row in result["per_class"].items():
        print(f"{name:<20} {num(row['auc_a'], '8.4f'):>8} {num(row['auc_b'], '8.4f'):>8} "
              f"{num(row['diff'], '7.4f'):>7} {num(row['p_value'], '11.4g'):>11}")
    print(f"{result['n_images']} images in both files; {Path(a.out) / 'compare.json'}")
    return 0


def cmd_infer(a: argparse.Namespace) -> int:
    from cxrkit.infer_run import resolve_sources, write_predictions
    from cxrkit.inference import Predictor

    predictor = Predictor.from_checkpoint(a.checkpoint, batch_size=a.batch_size,
                                          precision=a.precision, tta=a.tta, backend=a.backend)
    paths = resolve_sources(a.source)
    tags = tuple(t for t in a.dicom_tags.split(",") if t) if a.dicom_tags else ()
    s = write_predictions(predictor, paths, a.out, workers=a.workers, resume=a.resume,
                          overwrite=a.overwrite, dicom_tags=tags)
    print(f"{s.ok} image(s) predicted, {s.failed} failed"
          + (f", {s.skipped} already done (resumed)" if s.skipped else "") + f"; wrote {a.out}")
    return EXIT_PARTIAL if s.failed else 0


def cmd_cam(a: argparse.Namespace) -> int:
    from cxrkit.inference import Predictor

    methods = [m.strip() for m in a.method.split(",") if m.strip()]
    if a.evaluate:
        from cxrkit import localization as loc

        if a.boxes is None or a.images is None:
            raise UserError("--evaluate needs --boxes BBox_List.csv and --images DIR")
        boxes = loc.read_boxes(a.boxes)
        ids = loc.read_image_list(a.split_file) if a.split_file else None
        predictor = Predictor.from_checkpoint(a.checkpoint)
        result = loc.evaluate_localization(
            predictor, boxes, a.images, methods=methods, top_percent=a.top_percent,
            tolerance=a.tolerance, image_ids=ids,
        )
        settings = {"checkpoint": str(a.checkpoint), "boxes": str(a.boxes),
                    "images": str(a.images), "split_file": a.split_file,
                    "top_percent": a.top_percent, "tolerance_px": a.tolerance}
        path = loc.write_localization(result, a.out, settings)
        print(loc.format_table(result, a.top_percent))
        print(f"wrote {path} and {path.with_name('per_image.csv')}")
        return 0
    from cxrkit.explain import cam_folder

    if a.image is None:
        raise UserError("give --image FILE|DIR, or --evaluate with --boxes and --images")
    if len(methods) != 1:
        raise UserError("overlays take one --method; several are for --evaluate")
    predictor = Predictor.from_checkpoint(a.checkpoint)
    done = cam_folder(predictor, a.image, a.out, targets=a.target, method=methods[0])
    if len(done.written) == 1:
        for r in next(iter(done.written.values())):
            print(f"{r.finding}: p={r.probability:.3f} -> {r.overlay_path}")
    for path, reason in done.failed:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"{len(done.written)} image(s) explained, {len(done.failed)} unreadable; wrote {a.out}")
    return EXIT_PARTIAL if done.failed else 0


def cmd_export(a: argparse.Namespace) -> int:
    from cxrkit.checkpoint import read_bundle_card
    from cxrkit.export import export_bundle

    out = export_bundle(a.checkpoint, a.out, onnx=not a.no_onnx, quantize=a.quantize,
                        data=a.data, opset=a.opset, overwrite=a.overwrite)
    card = read_bundle_card(out)
    files = ", ".join(f"{n} ({f['bytes'] / 1e6:.1f} MB)" for n, f in card["files"].items())
    print(f"exported {out}: model_card.json, {files}")
    if "onnx" in card:
        print(f"ONNX opset {card['onnx']['opset']}: onnxruntime matches PyTorch within "
              f"{card['onnx']['verified']['max_abs_logit_diff']:.1e} on the logits")
    val = (card.get("quantization") or {}).get("validation")
    if val:
        print(f"int8 validation macro AUROC {val['macro_auroc_int8']:.4f} vs fp32 "
              f"{val['macro_auroc_fp32']:.4f} (change {val['macro_auroc_change']:+.4f}, "
              f"{val['n_images']} images)")
    return 0


def cmd_bench_loader(a: argparse.Namespace) -> int:
    from cxrkit.bench import bench_loader

    result = bench_loader(a.data, image_size=a.image_size, batch_size=a.batch_size,
                          model=a.model)
    print("\n".join(result.lines()))
    return 0


def cmd_bench_infer(a: argparse.Namespace) -> int:
    from cxrkit.bench_infer import bench_infer

    result = bench_infer(a.images, checkpoint=a.checkpoint, backbone=a.backbone,
                         input_size=a.input_size, batch_size=a.batch_size, workers=a.workers,
                         precision=a.precision)
    print("\n".join(result.lines()))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from cxrkit.demo import run_demo

    run_demo(
        a.out, overwrite=a.overwrite, n_patients=a.n_patients, workers=a.workers, epochs=a.epochs
    )
    return 0


def add_dataset_parsers(prepare: argparse.ArgumentParser, cpus: int) -> None:
    """One ``prepare <dataset>`` sub-command per registered dataset, with its own options."""
    from cxrkit.datasets import list_datasets

    sub = prepare.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for spec in list_datasets():
        s = sub.add_parser(
            spec.name, help=spec.title, description=f"{spec.title}. Expected layout: {spec.layout}"
        )
        s.add_argument("--root", required=True, help="the dataset folder as distributed")
        s.add_argument("--out", required=True, help="output folder for manifest + cache")
        s.add_argument("--size", type=int, default=256, help="cache image side (default 256)")
        s.add_argument("--val-fraction", type=float, default=0.1, help="patients for validation")
        s.add_argument(
            "--test-fraction",
            type=float,
            default=0.2,
            help="patients for test where the dataset has no official test split",
        )
        s.add_argument("--seed", type=int, default=0, help="split seed")
        s.add_argument("--workers", type=int, default=cpus, help="decoding processes")
        s.add_argument(
            "--overwrite", action="store_true", help="replace an existing prepared folder"
        )
        s.add_argument(
            "--clahe",
            type=float,
            default=None,
            metavar="CLIP",
            help="bake CLAHE with this clip limit (e.g. 2.0) into the cache; models trained on "
            "it apply the same at inference",
        )
        for opt in spec.options:
            s.add_argument(
                f"--{opt.name}",
                dest=f"opt_{opt.name.replace('-', '_')}",
                type=opt.type,
                default=opt.default,
                choices=opt.choices,
                nargs="+" if opt.multiple else None,
                help=f"{opt.help} (default: {opt.default})",
            )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cxrkit",
        description="Multilabel disease detection on chest X-rays: synth, prepare, train, eval, "
        "infer, cam. Research software, not a medical device.",
    )
    p.add_argument("--version", action="version", version=f"cxrkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cpus = os.cpu_count() or 1

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        return sp

    s = add("synth", cmd_synth, "write a phantom chest X-ray dataset in NIH ChestX-ray14 layout")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--n-patients", type=int, default=300, help="patients (1-5 images each)")
    s.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    s.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    s.add_argument("--workers", type=int, default=cpus, help="processes (default: all cores)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    add("datasets", cmd_datasets, "list the datasets `prepare` understands and their layouts")

    s = add("prepare", cmd_prepare, "parse a dataset, split it by patient, build the image cache")
    add_dataset_parsers(s, cpus)

    s = add("train", cmd_train, "train a model on a prepared dataset")
    s.add_argument("--config", required=True, help="YAML recipe file or shipped recipe name")
    s.add_argument(
        "--data",
        required=True,
        action="append",
        help="prepared folder (from `cxrkit prepare`); repeat to train on several",
    )
    s.add_argument("--out", required=True, help="run folder")
    s.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set trainer.max_epochs=3 model.pretrained=false",
    )
    s.add_argument("--overwrite", action="store_true", help="replace an existing run folder")

    s = add("eval", cmd_eval, "evaluate a checkpoint or any tool's predictions: metrics with "
            "confidence intervals, operating points, calibration, subgroups, an HTML report")
    s.add_argument("--checkpoint", help="a cxrkit checkpoint (predicts --data)")
    s.add_argument("--data", help="prepared folder, with --checkpoint")
    s.add_argument("--predictions", help="a predictions CSV from any tool: an image column and "
                   "one probability column per finding")
    s.add_argument("--labels", help="with --predictions: a prepared folder, or a dataset's own "
                   "label file with --dataset (e.g. --dataset nih --labels Data_Entry_2017.csv)")
    s.add_argument("--dataset", help="the dataset whose label file --labels is")
    s.add_argument("--split", default="test", help="split to evaluate (default test)")
    s.add_argument("--out", required=True, help="folder for metrics.json, per_class.csv, "
                   "report.html")
    s.add_argument("--threshold-method", default="f1",
                   help="f1, youden, sensitivity:0.9 or specificity:0.9 (tuned on val only)")
    s.add_argument("--calibration", default="temperature",
                   help="none, temperature, platt, isotonic, or auto (best on val); fitted on val")
    s.add_argument("--specificities", type=_floats, default=(0.8, 0.9, 0.95),
                   help="report sensitivity at these specificities (default 0.8,0.9,0.95)")
    s.add_argument("--sensitivities", type=_floats, default=(0.8, 0.9),
                   help="report specificity at these sensitivities (default 0.8,0.9)")
    s.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples for 95%% intervals, by patient (0 = none)")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    s.add_argument("--by", default="", help="subgroup columns, e.g. sex,age_band,view")
    s.add_argument("--no-report", action="store_true", help="skip report.html")
    s.add_argument("--no-write-card", action="store_true",
                   help="do not store thresholds/calibration in the checkpoint's model card")

    s = add("compare", cmd_compare, "two models' predictions on the same images: AUROC of each "
            "and the paired DeLong test")
    s.add_argument("a", help="predictions CSV of model A")
    s.add_argument("b", help="predictions CSV of model B")
    s.add_argument("--labels", required=True, help="prepared folder or dataset label file")
    s.add_argument("--dataset", help="the dataset whose label file --labels is")
    s.add_argument("--split", default="test", help="split of a prepared folder ('' = all)")
    s.add_argument("--out", required=True, help="folder for compare.json")

    s = add("infer", cmd_infer, "predict findings for images: a file, folder, glob, .txt list "
            "or .csv with a path column; one CSV row per image, streamed")
    s.add_argument("--checkpoint", required=True, help="checkpoint (or exported bundle)")
    s.add_argument("--source", required=True,
                   help="image file, folder (recursive), glob, .txt of paths or .csv with a path "
                   "column; PNG, JPEG and DICOM, mixed")
    s.add_argument("--out", required=True, help="output CSV")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--workers", type=int, default=1,
                   help="decoding processes running beside the model (default 1; 0 = none)")
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 on GPUs and CPUs with native bf16, else fp32")
    s.add_argument("--tta", action="store_true",
                   help="average six views (zoom/shifts; never a horizontal flip)")
    s.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"],
                   help="onnx / onnx-int8: run the bundle's model.onnx / model.int8.onnx with "
                   "onnxruntime on CPU (--checkpoint must be a bundle from `cxrkit export`)")
    s.add_argument("--dicom-tags", default="",
                   help="DICOM tags to copy into the CSV, e.g. PatientID,StudyDate (none by "
                   "default: no patient identifiers in the output unless asked)")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: skip images already in --out")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    s = add("cam", cmd_cam, "CAM overlays of an image or a folder for one or more findings, "
            "or (--evaluate) localisation scores against bounding boxes")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--image", help="an image file or a folder (recursive; overlays keep the "
                   "sub-folders)")
    s.add_argument(
        "--target", default="positive", help="a finding name, 'positive' (called findings) or 'all'"
    )
    s.add_argument("--method", default="gradcam", help="gradcam, gradcam++, hirescam, eigencam, "
                   "scorecam, layercam; with --evaluate a comma list, e.g. gradcam,hirescam")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--evaluate", action="store_true", help="score heatmaps against --boxes: "
                   "pointing game and IoU of the top-k%% region, per finding")
    s.add_argument("--boxes", help="with --evaluate: NIH-format BBox_List_2017.csv (.gz too)")
    s.add_argument("--images", help="with --evaluate: folder holding the boxed images")
    s.add_argument("--split-file", help="with --evaluate: only these images (names one per "
                   "line, e.g. NIH's test_list.txt)")
    s.add_argument("--top-percent", type=float, default=10.0,
                   help="with --evaluate: the top-k%% heatmap region for IoU (default 10)")
    s.add_argument("--tolerance", type=float, default=0.0,
                   help="with --evaluate: pointing-game tolerance in original pixels (default 0)")

    s = add("export", cmd_export, "export a checkpoint to a pickle-free bundle folder: "
            "model_card.json, model.safetensors and model.onnx (checked against PyTorch)")
    s.add_argument("--checkpoint", required=True, help="checkpoint (or bundle) to export")
    s.add_argument("--out", required=True, help="bundle folder")
    s.add_argument("--no-onnx", action="store_true", help="skip model.onnx")
    s.add_argument("--quantize", action="store_true",
                   help="also write model.int8.onnx (onnxruntime dynamic int8, for CPU)")
    s.add_argument("--data", help="with --quantize: prepared folder whose val split measures "
                   "the macro AUROC change of int8 (stored in the card)")
    s.add_argument("--opset", type=int, default=None, help="ONNX opset (default: exporter's)")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")

    s = add("bench", lambda a: 0, "throughput figures on this machine")
    bench = s.add_subparsers(dest="what", required=True, metavar="WHAT")
    b = bench.add_parser("loader", help="decode vs cached training input pipeline (images/s)")
    b.set_defaults(fn=cmd_bench_loader)
    b.add_argument("--data", required=True, help="prepared folder")
    b.add_argument("--image-size", type=int, default=224)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--model", default=None,
                   help="also time a train step of this backbone (e.g. densenet121)")

    b = bench.add_parser("infer", help="model-only and end-to-end inference images/s")
    b.set_defaults(fn=cmd_bench_infer)
    b.add_argument("--images", required=True, help="folder (or glob/list) of real images")
    b.add_argument("--checkpoint", help="time this model (default: an untrained --backbone)")
    b.add_argument("--backbone", default="densenet121")
    b.add_argument("--input-size", type=int, default=224)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--workers", type=int, default=1, help="decoding processes")
    b.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])

    s = add("demo", cmd_demo, "synth -> prepare -> train -> eval -> infer -> cam, offline on CPU")
    s.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    s.add_argument("--n-patients", type=int, default=None, help="phantom patients")
    s.add_argument("--epochs", type=int, default=None, help="training epochs")
    s.add_argument("--workers", type=int, default=cpus)
    s.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        return args.fn(args)
    except UserError as err:
        print(f"cxrkit {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"cxrkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
