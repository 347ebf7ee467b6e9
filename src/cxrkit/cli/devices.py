"""``--device`` and ``--precision``: the arguments of every command that runs a model.

``eval`` (with ``--checkpoint``), ``infer``, ``cam``, ``serve`` and ``bench infer`` take both,
with the same choices and the same meaning; what they resolve to is decided in one place,
:mod:`cxrkit.models.devices`, by the :class:`~cxrkit.deploy.predictor.Predictor`. Each command
prints :func:`runtime_line` once, e.g. ``device cpu, precision bf16 (auto: native bf16)``, and
records the device and precision in its outputs (``eval``: ``metrics.json["runtime"]``;
``infer``: the CSV's record; ``serve``: ``/v1/model``'s ``runtime``).

Neither takes argparse ``choices`` (``cuda:N`` is open-ended, and importing the resolver here
would load torch for every command, ``eval --predictions`` included): an unknown value is a
one-line did-you-mean from the resolver, exit 2.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cxrkit.deploy.predictor import Predictor

DEVICE_HELP = (
    "auto (default), cpu, cuda, cuda:N or mps. auto: the first CUDA GPU when one is visible, "
    "else Apple's MPS, else the CPU"
)
PRECISION_HELP = (
    "auto (default), fp32, bf16 or fp16 (autocast dtype; fp32 runs exactly). auto: bf16 on a "
    "GPU that has it, else fp16; on a CPU bf16 where it has native bf16 (AVX512-BF16/AMX), "
    "else fp32; fp16 on MPS. fp16 on a CPU is refused"
)


GPU_DECODE_HELP = (
    "auto (default), on or off: decode JPEGs in batches on the GPU (nvJPEG; PNG and DICOM stay "
    "on the CPU). auto: on with a CUDA device; on without one is refused"
)
#: ``--gpu-decode`` -> :func:`cxrkit.deploy.batch.write_predictions`'s ``gpu_decode``
GPU_DECODE = {"auto": None, "on": True, "off": False}


def add_device_arguments(
    s: argparse.ArgumentParser, *, default: str | None = "auto", gpu_decode: bool = False
) -> None:
    """Add ``--device`` and ``--precision`` to ``s`` (and ``--gpu-decode`` with ``gpu_decode``:
    ``infer``). ``default=None`` (``eval``) leaves them None when not given, so a command can
    tell that they were (both then mean ``auto``)."""
    s.add_argument("--device", default=default, metavar="DEVICE", help=DEVICE_HELP)
    s.add_argument("--precision", default=default, metavar="PRECISION", help=PRECISION_HELP)
    if gpu_decode:
        s.add_argument(
            "--gpu-decode", choices=list(GPU_DECODE), default="auto", help=GPU_DECODE_HELP
        )


def device_options(a: argparse.Namespace) -> dict[str, str]:
    """``{"device": ..., "precision": ...}`` from the parsed arguments (None -> ``auto``), as
    :class:`~cxrkit.deploy.predictor.Predictor` takes them."""
    return {"device": a.device or "auto", "precision": a.precision or "auto"}


def runtime_line(predictor: Predictor) -> str:
    """The line each command prints: ``device cuda:0, precision bf16 (auto: GPU with bf16)``."""
    return predictor.runtime.line()
