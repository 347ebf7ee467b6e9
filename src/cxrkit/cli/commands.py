"""The ``cxrkit`` sub-commands: each parses nothing, calls library functions and prints.

Exit codes: 0 success; 2 bad input (:class:`cxrkit.errors.UserError`, message on stderr);
3 ``infer`` / ``cam`` finished but some images could not be read (their rows say why).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from cxrkit.errors import UserError

EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, EXIT_PARTIAL = 1, 2, 3  # 3: infer wrote every row but
# some images failed; 1: a bug, reported as one line and a log file (cli/parser.py main)


def comma_list(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; None or empty -> ``[]``."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def cmd_synth(a: argparse.Namespace) -> int:
    from cxrkit.data.synth.dataset import generate_dataset

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
    from cxrkit.data.datasets.base import list_datasets

    for spec in list_datasets():
        print(f"{spec.name:<10} {spec.title}\n{'':<10} layout: {spec.layout}")
    return 0


def cmd_prepare(a: argparse.Namespace) -> int:
    from cxrkit.data.prepare import SplitPolicy, prepare
    from cxrkit.data.preprocess import Clahe

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
        modalities=allowed_modalities(a.allow_modality),
        cache_format=a.cache_format,
        stage=a.stage,
    )
    h = m.header
    where = m.location or m.folder
    print(f"prepared {h['counts']['prepared']} images of {h['dataset']} into {where}")
    if h["cache"].get("format") == "litdata":
        print(f"images: LitData shards in {m.cache_entry()[1]}")
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
    from cxrkit.deploy.gate_fit import fit_trained_gate
    from cxrkit.train.config import load_config, resolve_recipe
    from cxrkit.train.fit import fit, resume
    from cxrkit.train.module import launched_as_rank_zero
    from cxrkit.train.run_folder import RUN_JSON, read_json

    if a.resume:
        extra = [f"--{k}" for k in ("config", "data", "out", "overwrite") if getattr(a, k)]
        if extra:
            raise UserError(
                f"--resume continues a run as it was started; drop {', '.join(extra)} "
                "(--set may extend trainer.max_epochs)"
            )
        result = resume(a.resume, a.set)
    else:
        missing = [f"--{k}" for k in ("config", "data", "out") if not getattr(a, k)]
        if missing:
            raise UserError(f"train needs {', '.join(missing)} (or --resume RUN)")
        result = fit(
            load_config(resolve_recipe(a.config), a.set), a.data, a.out, overwrite=a.overwrite
        )
    if not launched_as_rank_zero():  # DDP: the other ranks stay quiet
        return 0
    if result.already_finished:
        print(
            f"{result.run} already finished ({result.epochs} epoch(s), best validation macro "
            f"AUROC {result.best_score:.4f}); nothing to do"
        )
        return 0
    if result.resumed_from:
        where = result.resumed_from
        print(f"resumed {result.run} from epoch {where['epoch']}, step {where['step']}")
    print(
        f"trained {result.epochs} epoch(s) in {result.seconds:.0f} s; best validation macro "
        f"AUROC {result.best_score:.4f}"
    )
    print(f"best checkpoint: {result.best}\nlast checkpoint: {result.last}")
    init = read_json(result.run / RUN_JSON).get("init")
    if init:  # model.init: which head rows were carried over by finding name
        carried = ", ".join(init["carried_over"]) or "none"
        print(f"model.init {init['source']}: head rows carried over for {carried}")
        if init["new"]:
            print(f"new head rows (trained from scratch) for {', '.join(init['new'])}")
    try:
        print(fit_trained_gate(result.best).describe())
    except UserError as err:  # the model is trained and saved: a gate that cannot be fitted
        warnings.warn(f"no input gate fitted: {err}", UserWarning, stacklevel=1)  # is not fatal
    return 0


def allowed_modalities(text: str) -> tuple[str, ...] | None:
    """``--allow-modality``: the radiograph modalities plus those listed; ``any``: None."""
    from cxrkit.io.xray import RADIOGRAPH_MODALITIES

    extra = [m.upper() for m in comma_list(text)]
    if "ANY" in extra:
        return None
    return (*RADIOGRAPH_MODALITIES, *extra)


def cmd_cam(a: argparse.Namespace) -> int:
    from cxrkit.cli.devices import device_options, runtime_line
    from cxrkit.deploy.predictor import Predictor

    methods = comma_list(a.method)
    layers = comma_list(a.layer) or None
    if a.evaluate:
        from cxrkit.explain import localization as loc

        if a.boxes is None or a.images is None:
            raise UserError("--evaluate needs --boxes BBox_List.csv and --images DIR")
        boxes = loc.read_boxes(a.boxes)
        ids = loc.read_image_list(a.split_file) if a.split_file else None
        predictor = Predictor.from_checkpoint(a.checkpoint, **device_options(a))
        print(runtime_line(predictor))
        result = loc.evaluate_localization(
            predictor,
            boxes,
            a.images,
            methods=methods,
            top_percent=a.top_percent,
            tolerance=a.tolerance,
            image_ids=ids,
            layers=layers,
        )
        settings = {
            "checkpoint": str(a.checkpoint),
            "boxes": str(a.boxes),
            "images": str(a.images),
            "split_file": a.split_file,
            "top_percent": a.top_percent,
            "tolerance_px": a.tolerance,
        }
        path = loc.write_localization(result, a.out, settings)
        print(loc.format_table(result, a.top_percent))
        print(f"wrote {path} and {path.with_name('per_image.csv')}")
        return 0
    from cxrkit.explain.cam import cam_folder, cam_targets
    from cxrkit.explain.layers import describe_layers

    if a.image is None:
        raise UserError("give --image FILE|DIR, or --evaluate with --boxes and --images")
    if len(methods) != 1:
        raise UserError("overlays take one --method; several are for --evaluate")
    predictor = Predictor.from_checkpoint(a.checkpoint, **device_options(a))
    print(runtime_line(predictor))
    print(f"CAM layers: {describe_layers([layer for layer, _ in cam_targets(predictor, layers)])}")
    done = cam_folder(predictor, a.image, a.out, targets=a.target, method=methods[0], layers=layers)
    if len(done.written) == 1:
        for r in next(iter(done.written.values())):
            print(f"{r.finding}: p={r.probability:.3f} -> {r.overlay_path}")
    for path, reason in done.failed:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"{len(done.written)} image(s) explained, {len(done.failed)} unreadable; wrote {a.out}")
    return EXIT_PARTIAL if done.failed else 0


def cmd_export(a: argparse.Namespace) -> int:
    from cxrkit.deploy.export import export_bundle
    from cxrkit.models.checkpoint import read_bundle_card

    out = export_bundle(
        a.checkpoint,
        a.out,
        onnx=not a.no_onnx,
        quantize=a.quantize,
        data=a.data,
        opset=a.opset,
        overwrite=a.overwrite,
        evaluation=a.evaluation,
    )
    card = read_bundle_card(out)
    files = ", ".join(f"{n} ({f['bytes'] / 1e6:.1f} MB)" for n, f in card["files"].items())
    print(f"exported {out}: model_card.json, MODEL_CARD.md, {files}")
    if a.evaluation is None:
        print("MODEL_CARD.md has validation figures only: add --evaluation EVALDIR for test ones")
    if "onnx" in card:
        print(
            f"ONNX opset {card['onnx']['opset']}: onnxruntime matches PyTorch within "
            f"{card['onnx']['verified']['max_abs_logit_diff']:.1e} on the logits"
        )
    val = (card.get("quantization") or {}).get("validation")
    if val:
        print(
            f"int8 validation macro AUROC {val['macro_auroc_int8']:.4f} vs fp32 "
            f"{val['macro_auroc_fp32']:.4f} (change {val['macro_auroc_change']:+.4f}, "
            f"{val['n_images']} images)"
        )
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from cxrkit.cli.demo import run_demo

    run_demo(
        a.out, overwrite=a.overwrite, n_patients=a.n_patients, workers=a.workers, epochs=a.epochs
    )
    return 0
