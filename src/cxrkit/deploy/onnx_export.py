"""A network to one verified ONNX file: what ``cxrkit export`` writes as ``model.onnx`` and
what :mod:`cxrkit.deploy.onnx_cache` writes as a checkpoint's ONNX copy.

The file maps a normalised float ``(N, 1, S, S)`` batch (input ``input``, dynamic batch axis)
to ``(N, C)`` logits (output ``logits``) and ``(N, D)`` pooled pre-logit features (output
``features``, the input gate's). Right after export onnxruntime runs it on a random batch of 3:
the logits must be within :data:`ONNX_TOLERANCE` of PyTorch's and the features within 1e-3
relative, else a UserError. Kept apart from :mod:`cxrkit.deploy.export` (bundles, quantisation)
so that the :class:`~cxrkit.deploy.predictor.Predictor` can export without importing it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrkit.deploy.backends import OnnxBackend, WithFeatures
from cxrkit.errors import UserError

ONNX_TOLERANCE = 1e-4  #: max abs difference of logits, onnxruntime vs PyTorch
INPUT_NAME, OUTPUT_NAME, FEATURES_NAME = "input", "logits", "features"


def export_onnx(
    model: nn.Module, path: Path, input_size: int, *, opset: int | None = None
) -> dict[str, Any]:
    """Export with torch.onnx's default (dynamo) exporter, one file, dynamic batch axis; then
    check onnxruntime against PyTorch on a random batch of 3. Returns the card's ``onnx``."""
    example = torch.randn(2, 1, input_size, input_size)
    try:
        torch.onnx.export(
            WithFeatures(model).eval(),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME, FEATURES_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    except Exception as err:  # noqa: BLE001 - any exporter failure: say so, offer --no-onnx
        raise UserError(
            f"ONNX export failed ({type(err).__name__}: {str(err)[:300]}); "
            "export with --no-onnx for a safetensors-only bundle"
        ) from err
    x = torch.randn(3, 1, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, expected_features = (t.numpy() for t in WithFeatures(model)(x))
    got, features = OnnxBackend(path).run_both(x.numpy())
    diff = float(np.abs(got - expected).max())
    scale = max(float(np.abs(expected_features).max()), 1.0)
    fdiff = float("inf") if features is None else float(np.abs(features - expected_features).max())
    if got.shape != expected.shape or not (diff <= ONNX_TOLERANCE and fdiff <= 1e-3 * scale):
        raise UserError(
            f"{path}: onnxruntime differs from PyTorch by {diff:.2e} on the logits (tolerance "
            f"{ONNX_TOLERANCE:g}) and {fdiff:.2e} on the features on a random batch; try "
            "another --opset or use --no-onnx"
        )
    import onnx as onnx_lib

    proto = onnx_lib.load(str(path), load_external_data=False)
    return {
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "input": {
            "name": INPUT_NAME,
            "shape": ["N", 1, input_size, input_size],
            "dtype": "float32",
            "content": "normalised image (see normalization)",
        },
        "output": {"name": OUTPUT_NAME, "shape": ["N", "C"], "content": "logits of findings"},
        "features": {
            "name": FEATURES_NAME,
            "shape": ["N", "D"],
            "content": "pooled pre-logit features (the input gate's)",
        },
        "verified": {"batch": 3, "max_abs_logit_diff": diff, "tolerance": ONNX_TOLERANCE},
    }
