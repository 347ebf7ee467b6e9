"""The ``cxrkit bench`` sub-commands: loader, infer and train throughput (arguments and runs)."""

from __future__ import annotations

import argparse

from cxrkit.cli.commands import comma_list
from cxrkit.cli.devices import add_device_arguments, device_options


def add_bench_parsers(bench: argparse._SubParsersAction, decode_workers: int) -> None:
    """Add ``loader``, ``infer`` and ``train`` to the ``bench`` sub-parsers."""
    b = bench.add_parser("loader", help="decode vs cached training input pipeline (images/s)")
    b.set_defaults(fn=cmd_bench_loader)
    b.add_argument("--data", required=True, help="prepared folder")
    b.add_argument("--image-size", type=int, default=224)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument(
        "--model", default=None, help="also time a train step of this backbone (e.g. densenet121)"
    )

    b = bench.add_parser("infer", help="model-only and end-to-end inference images/s")
    b.set_defaults(fn=cmd_bench_infer)
    b.add_argument("--images", required=True, help="folder (or glob/list) of real images")
    b.add_argument("--checkpoint", help="time this model (default: an untrained --backbone)")
    b.add_argument("--backbone", default="densenet121")
    b.add_argument("--input-size", type=int, default=224)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument(
        "--workers",
        type=int,
        default=decode_workers,
        help="decoding processes (0: low-priority threads)",
    )
    add_device_arguments(b)  # the end-to-end runs' precision; model-only times each allowed
    b.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of model-only and end-to-end runs; figures are medians (default 3)",
    )
    b.add_argument(
        "--backend",
        default="auto",
        help="end-to-end run(s) with these infer backends, a comma list, e.g. onnx,onnx-int8 "
        "(default auto: the one infer would choose)",
    )
    b.add_argument(
        "--no-onnx",
        dest="onnx",
        action="store_false",
        help="skip exporting and quantising the stand-in (a minute or two) and the onnx figures",
    )

    b = bench.add_parser(
        "train", help="train-step images/s, GPU memory and training-loader images/s"
    )
    b.set_defaults(fn=cmd_bench_train)
    b.add_argument("--data", help="prepared folder: cached batches, and the loader figure")
    b.add_argument("--backbone", default="densenet121")
    b.add_argument("--image-size", type=int, default=224)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "32-true", "bf16-mixed", "16-mixed"],
        help="auto: as `cxrkit train` (bf16 on GPUs and CPUs with native bf16, else fp32)",
    )
    b.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    b.add_argument("--compile", action="store_true", help="torch.compile the network first")
    b.add_argument("--workers", type=int, default=2, help="training-loader processes")
    b.add_argument("--seconds", type=float, default=5.0, help="time per figure (default 5)")


def cmd_bench_loader(a: argparse.Namespace) -> int:
    from cxrkit.bench.training import bench_loader

    result = bench_loader(a.data, image_size=a.image_size, batch_size=a.batch_size, model=a.model)
    print("\n".join(result.lines()))
    return 0


def cmd_bench_train(a: argparse.Namespace) -> int:
    from cxrkit.bench.training import bench_train

    result = bench_train(
        a.data,
        backbone=a.backbone,
        image_size=a.image_size,
        batch_size=a.batch_size,
        precision=a.precision,
        channels_last=a.channels_last,
        compile_model=a.compile,
        workers=a.workers,
        seconds=a.seconds,
    )
    print("\n".join(result.lines()))
    return 0


def cmd_bench_infer(a: argparse.Namespace) -> int:
    from cxrkit.bench.inference import bench_infer

    result = bench_infer(
        a.images,
        checkpoint=a.checkpoint,
        backbone=a.backbone,
        input_size=a.input_size,
        batch_size=a.batch_size,
        workers=a.workers,
        onnx=a.onnx,
        backends=comma_list(a.backend),
        repeat=a.rounds,
        **device_options(a),
    )
    print("\n".join(result.lines()))
    return 0
