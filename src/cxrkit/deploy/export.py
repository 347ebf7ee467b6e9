"""``cxrkit export``: a checkpoint -> a self-contained, pickle-free bundle folder::

    BUNDLE/model_card.json     the model card, "format": "cxrkit-bundle/1", each file's sha256
    BUNDLE/model.safetensors   the network's state_dict
    BUNDLE/model.onnx          normalised float (N, 1, S, S) -> logits (N, C) and the input
                               gate's features (N, D), dynamic batch
    BUNDLE/model.int8.onnx     with quantize: int8 for CPU, static or dynamic
                               (cxrkit.deploy.quantize)
    BUNDLE/MODEL_CARD.md       the card for a reviewer (cxrkit.deploy.model_card), every
                               figure from the card, the manifests and an eval's metrics.json

The ONNX file is written and checked by :func:`cxrkit.deploy.onnx_export.export_onnx`:
onnxruntime and PyTorch must agree on a random batch of 3 within its ``ONNX_TOLERANCE`` on the
logits (and relatively on the features). The card's input gate and reference distributions
(``gate``, ``reference``) travel as they are.
With ``data`` (a prepared folder), static quantisation is calibrated on its training split,
and the validation macro AUROC of ``model.onnx`` and ``model.int8.onnx`` goes into the card.
Load a bundle with :func:`cxrkit.models.checkpoint.load_model`; predict with
``Predictor.from_checkpoint(bundle, backend="onnx")``.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from cxrkit import __version__
from cxrkit.deploy.backends import INT8_FILE, ONNX_FILE
from cxrkit.deploy.model_card import read_evaluation, write_model_card
from cxrkit.deploy.onnx_export import export_onnx
from cxrkit.deploy.quantize import (
    CALIBRATION_IMAGES,
    QUANT_METHODS,
    manifest_calibration,
    quantization_auroc,
    quantize_onnx,
)
from cxrkit.errors import UserError, did_you_mean
from cxrkit.files import claim_folder, write_json
from cxrkit.models.checkpoint import (
    BUNDLE_CARD,
    BUNDLE_FORMAT,
    BUNDLE_WEIGHTS,
    LoadedModel,
    file_sha256,
    load_model,
)

#: card keys that describe one bundle's files; dropped when a bundle is exported again
BUNDLE_KEYS = ("files", "onnx", "quantization", "exported", "source_format")


def export_bundle(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    onnx: bool = True,
    quantize: str | None = None,
    data: str | Path | None = None,
    opset: int | None = None,
    overwrite: bool = False,
    evaluation: str | Path | None = None,
) -> Path:
    """Write the bundle of ``checkpoint`` (a checkpoint file or a bundle) to ``out_dir``;
    ``quantize``: ``static`` (needs ``data``) or ``dynamic`` int8 (see
    :mod:`cxrkit.deploy.quantize`). ``MODEL_CARD.md`` is written from the card and, with
    ``evaluation`` (a ``cxrkit eval`` folder of this checkpoint), its test figures."""
    if quantize is not None and quantize not in QUANT_METHODS:
        raise did_you_mean(quantize, QUANT_METHODS, what="--quantize method")
    if quantize and not onnx:
        raise UserError("--quantize quantises the ONNX model; drop --no-onnx")
    if data is not None and not quantize:
        raise UserError("--data measures the AUROC change of int8 quantisation; add --quantize")
    if quantize == "static" and data is None:
        raise UserError(
            "--quantize static calibrates activation ranges on real images: add --data PREP "
            f"(a prepared folder; {CALIBRATION_IMAGES} of its training images are used), "
            "or use --quantize dynamic"
        )
    metrics = read_evaluation(evaluation, checkpoint) if evaluation is not None else None
    loaded = load_model(checkpoint)
    out = Path(out_dir)
    if loaded.source is not None and out.resolve() == loaded.source.resolve():
        raise UserError(f"--out {out} is the bundle being exported; choose another folder")
    card = {k: v for k, v in loaded.card.items() if k not in BUNDLE_KEYS}
    card["source_format"] = card.pop("format", None)
    return write_bundle(
        loaded.model,
        card,
        out,
        onnx=onnx,
        quantize=quantize,
        data=data,
        opset=opset,
        overwrite=overwrite,
        evaluation=metrics,
    )


def write_bundle(
    model: nn.Module,
    card: dict[str, Any],
    out: str | Path,
    *,
    onnx: bool = True,
    quantize: str | None = None,
    data: str | Path | None = None,
    opset: int | None = None,
    overwrite: bool = False,
    evaluation: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a cxrkit network: ``(N, 1, S, S)`` normalised float -> ``(N, C)``
    logits) and its ``card`` (without the :data:`BUNDLE_KEYS`) as the bundle folder ``out``:
    weights, ONNX and int8 as asked, the card with each file's sha256, ``MODEL_CARD.md``
    (with ``evaluation``, an eval's ``metrics.json``). ``cxrkit export`` and ``cxrkit import``
    both write bundles through it."""
    out = Path(out)
    _prepare_out(out, overwrite)
    card = dict(card)
    model = model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / BUNDLE_WEIGHTS, metadata={"format": BUNDLE_FORMAT})
    if onnx:
        card["onnx"] = export_onnx(model, out / ONNX_FILE, int(card["input_size"]), opset=opset)
    if quantize:
        calibration = (
            manifest_calibration(LoadedModel(model, card), data)
            if quantize == "static" and data is not None
            else None
        )
        card["quantization"] = quantize_onnx(
            out / ONNX_FILE, out / INT8_FILE, quantize, calibration
        )
    card.update(
        format=BUNDLE_FORMAT,
        exported={
            "cxrkit": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        files={
            p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
            for p in sorted(out.iterdir())
        },
    )
    if data is not None:
        card["quantization"]["validation"] = quantization_auroc(LoadedModel(model, card, out), data)
    write_json(out / BUNDLE_CARD, card)
    write_model_card(out, card, evaluation)
    return out


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Create and mark ``out``; ``overwrite`` replaces only a bundle cxrkit made."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the bundle")
    claim_folder(out, "bundle", overwrite=overwrite)
