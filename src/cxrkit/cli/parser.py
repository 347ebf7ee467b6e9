"""The ``cxrkit`` command line: the argument parser and ``main``; the sub-commands live in
:mod:`cxrkit.cli.commands`. User errors (:class:`cxrkit.errors.UserError`) print one line and
exit 2.

Exit codes: 0 success; 1 an internal error (a bug: one line on stderr naming a log file with
the traceback); 2 bad input (one line on stderr); 3 ``infer`` finished but some files could
not be read (their rows say why); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from cxrkit import __version__
from cxrkit.cli.bench import add_bench_parsers
from cxrkit.cli.commands import (
    EXIT_INTERNAL_ERROR,
    EXIT_USER_ERROR,
    cmd_cam,
    cmd_datasets,
    cmd_demo,
    cmd_export,
    cmd_prepare,
    cmd_synth,
    cmd_train,
)
from cxrkit.cli.devices import add_device_arguments
from cxrkit.cli.embed import add_embed_parser
from cxrkit.cli.evaluate import add_evaluate_parsers
from cxrkit.cli.gate import add_gate_parser
from cxrkit.cli.importer import add_import_parser
from cxrkit.cli.infer import cmd_infer
from cxrkit.cli.serve import add_serve_parser
from cxrkit.errors import UserError


def add_allow_modality(s: argparse.ArgumentParser) -> None:
    """``--allow-modality`` (``infer``, ``prepare``): DICOM modalities read beyond radiographs."""
    s.add_argument(
        "--allow-modality",
        default="",
        metavar="CODES",
        help="also read DICOMs of these modalities, e.g. OT,MG, or 'any' (default: only "
        "radiographs, CR/DX/DR/RG; a CT, MR, US, ... file is an error naming its modality)",
    )


def add_dataset_parsers(prepare: argparse.ArgumentParser, cpus: int) -> None:
    """One ``prepare <dataset>`` sub-command per registered dataset, with its own options."""
    from cxrkit.data.datasets.base import list_datasets

    sub = prepare.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for spec in list_datasets():
        s = sub.add_parser(
            spec.name, help=spec.title, description=f"{spec.title}. Expected layout: {spec.layout}"
        )
        s.add_argument("--root", required=True, help="the dataset folder as distributed")
        s.add_argument(
            "--out",
            required=True,
            help="output folder for manifest + cache (with --format litdata also s3://BUCKET/"
            "PREFIX or gs://BUCKET/PREFIX)",
        )
        s.add_argument(
            "--format",
            dest="cache_format",
            choices=("memmap", "litdata"),
            default="memmap",
            help="image cache format: memmap (one file, default) or litdata (LitData shards "
            "that training streams, from a folder or an object store; needs "
            "pip install 'cxrkit[scale]'); see docs/scale.md",
        )
        s.add_argument(
            "--stage",
            metavar="DIR",
            help="with an s3:// or gs:// --out: local folder where images are decoded before "
            "they are uploaded as shards (default: under $CXRKIT_CACHE or ~/.cache/cxrkit)",
        )
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
        add_allow_modality(s)
        for opt in spec.options:
            dest = f"opt_{opt.name.replace('-', '_')}"
            if opt.flag:
                s.add_argument(f"--{opt.name}", dest=dest, action="store_true", help=opt.help)
                continue
            s.add_argument(
                f"--{opt.name}",
                dest=dest,
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
    decode_workers = max(0, min(4, cpus - 2))

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

    s = add("train", cmd_train, "train a model on a prepared dataset, or resume a run")
    s.add_argument("--config", help="YAML recipe file or shipped recipe name")
    s.add_argument(
        "--data",
        action="append",
        help="prepared folder (from `cxrkit prepare`), or its s3:// / gs:// URI (--format "
        "litdata); repeat to train on several",
    )
    s.add_argument("--out", help="run folder")
    s.add_argument(
        "--resume",
        metavar="RUN",
        help="continue run folder RUN from its last checkpoint (no --config/--data/--out)",
    )
    s.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set trainer.max_epochs=3 model.pretrained=false; "
        "repeat --set to add more (they accumulate; a key given twice takes its last value)",
    )
    s.add_argument("--overwrite", action="store_true", help="replace an existing run folder")

    add_evaluate_parsers(add)
    add_gate_parser(add)
    add_import_parser(add)
    add_embed_parser(add)

    s = add(
        "infer",
        cmd_infer,
        "predict findings for images: a file, folder, glob, .txt list "
        "or .csv with a path column; one CSV row per image, streamed",
    )
    s.add_argument("--checkpoint", required=True, help="checkpoint (or exported bundle)")
    s.add_argument(
        "--source",
        required=True,
        help="image file, folder (recursive), glob, .txt of paths or .csv with a path "
        "column; PNG, JPEG and DICOM, mixed",
    )
    s.add_argument("--out", required=True, help="output CSV")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding processes beside the model, all --devices processes' total (default: "
        f"CPU cores - 2, at most 4, here {decode_workers}; a GPU process its share of the cores"
        " - 1, at most 16; 0 = low-priority background threads, the faster choice on 2 cores)",
    )
    add_device_arguments(s, gpu_decode=True)
    s.add_argument("--devices", type=int, default=1, metavar="N", help="prediction processes: "
                   "one per GPU (cuda:0..N-1) or N sharing the CPU; each predicts a shard, the "
                   "rows merged in the source's order (default 1; under torchrun or srun every "
                   "rank is one of them: leave this out)")  # fmt: skip
    s.add_argument("--tta", action="store_true", help="average six views (zoom/shifts; never a "
                   "horizontal flip)")  # fmt: skip
    s.add_argument(
        "--backend",
        default="auto",
        help="auto, torch, onnx, onnx-int8, openvino or openvino-int8. onnx / onnx-int8: "
        "the bundle's model.onnx / model.int8.onnx under onnxruntime; "
        "openvino / openvino-int8: the same under OpenVINO (openvino-int8 with a static "
        "--quantize export is the fastest on CPU; all four run on the CPU only); auto "
        "(default): onnx for a bundle with model.onnx running fp32 on the CPU, else torch",
    )
    s.add_argument(
        "--dicom-tags",
        default="",
        help="DICOM tags to copy into the CSV, e.g. PatientID,StudyDate (none by "
        "default: no patient identifiers in the output unless asked)",
    )
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: skip images already in --out (a row cut short "
        "by a kill is redone)",
    )
    s.add_argument(
        "--retry-errors", action="store_true", help="with --resume: redo the rows that failed"
    )
    s.add_argument(
        "--refuse-ood",
        action="store_true",
        help="images the input gate flags as unlike the training data become error rows "
        "(exit code 3) instead of predictions",
    )
    add_allow_modality(s)
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out (only a CSV cxrkit infer wrote, never an input)",
    )

    s = add(
        "cam",
        cmd_cam,
        "CAM overlays of an image or a folder for one or more findings, "
        "or (--evaluate) localisation scores against bounding boxes",
    )
    s.add_argument("--checkpoint", required=True)
    s.add_argument(
        "--image", help="an image file or a folder (recursive; overlays keep the sub-folders)"
    )
    s.add_argument(
        "--target", default="positive", help="a finding name, 'positive' (called findings) or 'all'"
    )
    s.add_argument(
        "--method",
        default="gradcam",
        help="gradcam, gradcam++, hirescam, eigencam, "
        "scorecam, layercam; with --evaluate a comma list, e.g. gradcam,hirescam",
    )
    s.add_argument(
        "--layer",
        help="module(s) to hook, a comma list whose maps are fused, e.g. layer3 or "
        "layer2,layer3 (default: the last feature map; when it has fewer than 7 cells per "
        "side at the model's input size, the deepest stage with 7 and the next finer one)",
    )
    s.add_argument("--out", required=True, help="output folder")
    add_device_arguments(s)
    s.add_argument(
        "--evaluate",
        action="store_true",
        help="score heatmaps against --boxes: "
        "pointing game and IoU of the top-k%% region, per finding",
    )
    s.add_argument("--boxes", help="with --evaluate: NIH-format BBox_List_2017.csv (.gz too)")
    s.add_argument("--images", help="with --evaluate: folder holding the boxed images")
    s.add_argument(
        "--split-file",
        help="with --evaluate: only these images (names one per line, e.g. NIH's test_list.txt)",
    )
    s.add_argument(
        "--top-percent",
        type=float,
        default=10.0,
        help="with --evaluate: the top-k%% heatmap region for IoU (default 10)",
    )
    s.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="with --evaluate: pointing-game tolerance in original pixels (default 0)",
    )

    s = add(
        "export",
        cmd_export,
        "export a checkpoint to a pickle-free bundle folder: "
        "model_card.json, model.safetensors and model.onnx (checked against PyTorch)",
    )
    s.add_argument("--checkpoint", required=True, help="checkpoint (or bundle) to export")
    s.add_argument("--out", required=True, help="bundle folder")
    s.add_argument("--no-onnx", action="store_true", help="skip model.onnx")
    s.add_argument(
        "--quantize",
        choices=["static", "dynamic"],
        help="also write model.int8.onnx for --backend onnx-int8: static (calibrated on "
        "--data's training images; the faster one) or dynamic",
    )
    s.add_argument(
        "--data",
        help="with --quantize: prepared folder; its train split calibrates static int8 and "
        "its val split measures the macro AUROC change (stored in the card)",
    )
    s.add_argument("--opset", type=int, default=None, help="ONNX opset (default: exporter's)")
    s.add_argument(
        "--evaluation",
        metavar="EVALDIR",
        help="a `cxrkit eval --checkpoint` folder of this checkpoint: its test figures, "
        "subgroups and shortcut audit go into MODEL_CARD.md",
    )
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")

    s = add("bench", lambda a: 0, "throughput figures on this machine")
    add_bench_parsers(s.add_subparsers(dest="what", required=True, metavar="WHAT"), decode_workers)

    s = add(
        "demo",
        cmd_demo,
        "synth -> prepare -> train -> eval -> infer -> cam -> localise, offline on CPU",
    )
    s.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    s.add_argument("--n-patients", type=int, default=None, help="phantom patients")
    s.add_argument("--epochs", type=int, default=None, help="training epochs")
    s.add_argument("--workers", type=int, default=cpus)
    s.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")

    add_serve_parser(add)
    return p


def _one_line_warnings(command: str) -> Callable[..., None]:
    """``warnings.showwarning`` for the CLI: ``cxrkit <command>: warning: <message>`` on
    stderr, one line, without the source line Python prints by default."""

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        name = "" if issubclass(category, UserWarning) else f"{category.__name__}: "
        print(f"cxrkit {command}: warning: {name}{message}", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.showwarning = _one_line_warnings(args.command)
            return args.fn(args)
    except UserError as err:
        print(f"cxrkit {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"cxrkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place a bug becomes one line + a log
        log = write_crash_log(args.command, argv)
        print(
            f"cxrkit {args.command}: internal error: {type(err).__name__}: {err} (a bug: the "
            f"full traceback is in {log}; please report it with that file)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


def write_crash_log(command: str, argv: Sequence[str] | None) -> Path:
    """Write the current exception's traceback, the command line and versions to a log file
    (``$CXRKIT_LOG_DIR``, else ``<tmp>/cxrkit-logs``); returns its path."""
    folder = Path(os.environ.get("CXRKIT_LOG_DIR") or Path(tempfile.gettempdir()) / "cxrkit-logs")
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{command}-{stamp}-{os.getpid()}.log"
    words = list(sys.argv[1:] if argv is None else argv)
    path.write_text(
        f"cxrkit {__version__}, Python {sys.version.split()[0]}\n"
        f"command: cxrkit {' '.join(words)}\n\n{traceback.format_exc()}"
    )
    return path
