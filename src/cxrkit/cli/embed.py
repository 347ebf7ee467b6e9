"""``cxrkit embed``: write a prepared folder's frozen embeddings for linear probes.

Arguments and the command; the work is :func:`cxrkit.deploy.embed.embed`, the folder's layout
:mod:`cxrkit.data.embeddings`. Train a probe on the result with
``cxrkit train --config probe --data EMB --out RUN`` (docs/embeddings.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cxrkit.cli.devices import add_device_arguments

Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def add_embed_parser(add: Add) -> None:
    """Register ``cxrkit embed`` through ``add(name, fn, help)`` (see ``build_parser``)."""
    s = add(
        "embed",
        cmd_embed,
        "write each image's frozen embedding (float16 memmap, resumable) for linear probes",
    )
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="the encoder: a checkpoint file or bundle folder")
    source.add_argument(
        "--backbone", help="the encoder: a backbone name (timm, or a foundation encoder)"
    )
    s.add_argument("--data", required=True, help="prepared folder (from `cxrkit prepare`)")
    s.add_argument("--out", required=True, help="embedding folder to write (or to resume)")
    s.add_argument(
        "--splits", default="train,val,test", help="splits to embed (default train,val,test)"
    )
    s.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    s.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="--backbone only: model input side (default: the backbone's pretrained size)",
    )
    s.add_argument(
        "--no-pretrained",
        action="store_true",
        help="--backbone only: random weights instead of the pretrained ones (offline tests)",
    )
    s.add_argument(
        "--overwrite", action="store_true", help="replace a folder made with other settings"
    )
    add_device_arguments(s)


def cmd_embed(a: argparse.Namespace) -> int:
    from cxrkit.cli.commands import comma_list
    from cxrkit.cli.devices import device_options
    from cxrkit.deploy.embed import embed
    from cxrkit.errors import UserError

    if a.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {a.batch_size}")
    if a.image_size is not None and a.image_size < 32:
        raise UserError(f"--image-size must be at least 32, got {a.image_size}")
    done = embed(
        a.data,
        a.out,
        checkpoint=a.checkpoint,
        backbone=a.backbone,
        pretrained=not a.no_pretrained,
        image_size=a.image_size,
        splits=tuple(comma_list(a.splits)),
        batch_size=a.batch_size,
        overwrite=a.overwrite,
        **device_options(a),
    )
    if done.already_done:
        print(f"{done.out} is complete ({done.n} embeddings of {done.dim} values); nothing to do")
        return 0
    resumed = f", {done.resumed} done before (resumed)" if done.resumed else ""
    rate = done.embedded / max(done.seconds, 1e-9)
    print(
        f"embedded {done.embedded} image(s) in {done.seconds:.1f} s ({rate:.1f} images/s)"
        f"{resumed}; wrote {done.n} x {done.dim} float16 to {done.out}"
    )
    print(f"train a probe: cxrkit train --config probe --data {done.out} --out RUN")
    return 0
