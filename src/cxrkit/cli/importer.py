"""``cxrkit import torchxrayvision WEIGHTS --arch NAME --out BUNDLE``: another tool's weights as
a cxrkit bundle.

Arguments and the command; the work is
:func:`cxrkit.deploy.import_txv.import_torchxrayvision`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def add_import_parser(add: Add) -> None:
    """Register ``cxrkit import`` through ``add(name, fn, help)`` (see ``build_parser``), with
    one sub-command per source tool (``torchxrayvision``)."""
    from cxrkit.deploy.import_txv import ARCHS

    s = add(
        "import",
        lambda a: 0,
        "turn another tool's weights file into a cxrkit bundle (read without unpickling code)",
    )
    sub = s.add_subparsers(dest="tool", required=True, metavar="TOOL")
    names = ", ".join(ARCHS)
    t = sub.add_parser(
        "torchxrayvision",
        help="a torchxrayvision DenseNet-121 / ResNet-50 weights file",
        description="Import a torchxrayvision weights file (a pickled module or state dict) as "
        "a bundle: only the outputs those weights were trained for are kept, renamed to "
        "cxrkit's findings, with txv's operating points as the card's thresholds. Nothing in "
        "the file is run: only tensors and the module classes such files hold are read. "
        "torchxrayvision itself need not be installed.",
    )
    t.set_defaults(fn=cmd_import_txv)
    t.add_argument("weights", metavar="WEIGHTS", help="the .pt file (e.g. from ~/.torchxrayvision)")
    t.add_argument(
        "--arch",
        required=True,
        metavar="NAME",
        help=f"which weights they are: {names} (the last two: your own fine-tuned txv model "
        "with its 18 outputs; 224 and 512 px)",
    )
    t.add_argument("--out", required=True, help="bundle folder to write")
    t.add_argument("--no-onnx", action="store_true", help="skip model.onnx (faster)")
    t.add_argument("--overwrite", action="store_true", help="replace a bundle cxrkit wrote")


def cmd_import_txv(a: argparse.Namespace) -> int:
    from cxrkit.deploy.import_txv import import_torchxrayvision

    result = import_torchxrayvision(
        a.weights, a.arch, a.out, onnx=not a.no_onnx, overwrite=a.overwrite
    )
    print(result.describe())
    return 0
