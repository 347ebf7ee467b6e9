"""int8 versions of a bundle's ``model.onnx`` for CPU inference (``export --quantize``).

* ``static`` (recommended): onnxruntime's ``quantize_static`` in QDQ format after
  ``quant_pre_process`` (shape inference, batch norms folded into convolutions). Activation
  ranges are calibrated (min/max) on :data:`CALIBRATION_IMAGES` training images, so nothing is
  quantised at run time: onnxruntime fuses each Dequantize-Conv-Quantize into one ``QLinearConv``.
  Weights are int8 per tensor and activations uint8. Per-channel weights were tried and
  dropped: on AVX2 CPUs without VNNI onnxruntime's u8s8 kernels (``vpmaddubsw``) saturate with
  full-range per-channel weights (max probability change 0.69 on the demo model, against 0.04
  per tensor). On the 2-core benchmark machine DenseNet121 ran about 1.3x faster than fp32 ONNX
  (docs/benchmarks.md).
* ``dynamic``: ``quantize_dynamic`` with uint8 weights; activations are quantised per batch at
  run time (``ConvInteger``). Smaller file, but slower than fp32 on CPUs without VNNI.

With a prepared folder, :func:`quantization_auroc` predicts its validation split with both
files and reports the macro AUROC change, which belongs in the card.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrkit.errors import UserError, did_you_mean
from cxrkit.io.images import read_xray
from cxrkit.models.checkpoint import LoadedModel

QUANT_METHODS = ("static", "dynamic")
#: training images whose activations set the static ranges (a fixed random sample)
CALIBRATION_IMAGES = 200


def quantize_onnx(
    src: Path,
    dst: Path,
    method: str = "static",
    calibration: Iterable[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write the int8 version of ``src`` to ``dst``; ``calibration`` (``static`` only) yields
    normalised float32 batches ``(B, 1, S, S)`` as the model sees them. Returns the card's
    ``quantization`` entry."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in QUANT_METHODS:
        raise did_you_mean(method, QUANT_METHODS, what="quantisation method")
    entry: dict[str, Any] = {"file": dst.name, "method": method}
    if method == "dynamic":
        quantize_dynamic(src, dst, weight_type=QuantType.QUInt8)
        entry.update(tool="onnxruntime.quantization.quantize_dynamic", weight_type="uint8")
    else:
        if calibration is None:
            raise UserError("static quantisation needs calibration images (--data PREP)")
        reader = _Reader(calibration)
        with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quant-") as tmp:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(
                pre,
                dst,
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=False,
            )
        if not reader.images:
            raise UserError("static quantisation got no calibration images")
        entry.update(
            tool="onnxruntime.quantization.quantize_static (QDQ, min/max calibration)",
            weight_type="int8 per tensor",
            activation_type="uint8",
            calibration_images=reader.images,
        )
    entry["bytes"] = {"fp32": src.stat().st_size, "int8": dst.stat().st_size}
    return entry


class _Reader:
    """onnxruntime's ``CalibrationDataReader`` protocol over float batches."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self.batches: Iterator[np.ndarray] = iter(batches)
        self.images = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        if batch is None:
            return None
        self.images += len(batch)
        return {"input": np.ascontiguousarray(batch, np.float32)}


def manifest_calibration(
    loaded: LoadedModel, data: str | Path, n: int = CALIBRATION_IMAGES
) -> Iterator[np.ndarray]:
    """Model inputs of ``n`` training images of the prepared folder ``data`` (fixed sample)."""
    from cxrkit.data.manifest import load_manifest
    from cxrkit.deploy.predictor import Predictor

    manifest = load_manifest(data)
    rows = manifest.rows("train")
    if not len(rows):
        raise UserError(f"{data} has no training images to calibrate int8 ranges on")
    rows = rows.sample(min(n, len(rows)), random_state=0)
    predictor = Predictor(loaded, backend="torch", precision="fp32")
    for images in predictor.manifest_batches(manifest, rows):
        yield predictor.model_input(images).numpy()


def file_calibration(
    loaded: LoadedModel, paths: Iterable[Path], batch_size: int = 16
) -> Iterator[np.ndarray]:
    """Model inputs of image files (decoded and letterboxed as ``infer`` does)."""
    from cxrkit.deploy.predictor import Predictor

    predictor = Predictor(loaded, backend="torch", precision="fp32")
    batch: list[np.ndarray] = []
    for path in paths:
        batch.append(predictor.preprocess(read_xray(path).pixels))
        if len(batch) == batch_size:
            yield predictor.model_input(torch.from_numpy(np.stack(batch))).numpy()
            batch = []
    if batch:
        yield predictor.model_input(torch.from_numpy(np.stack(batch))).numpy()


def quantization_auroc(loaded: LoadedModel, data: str | Path) -> dict[str, Any]:
    """Validation macro AUROC of ``model.onnx`` and ``model.int8.onnx`` (uncalibrated)."""
    from cxrkit.data.manifest import load_manifest
    from cxrkit.deploy.predictor import Predictor
    from cxrkit.evaluate.metrics import roc_auc

    manifest = load_manifest(data)
    missing = [f for f in loaded.findings if f not in manifest.findings]
    if missing:
        raise UserError(f"{data} has no labels for {', '.join(missing)}, which the model predicts")
    rows = manifest.rows("val")
    if not len(rows):
        raise UserError(f"{data} has no validation images to compare fp32 and int8 on")
    y = manifest.labels(rows, loaded.findings)
    result: dict[str, Any] = {
        "split": "val",
        "n_images": len(rows),
        "data": str(Path(data).resolve()),
    }
    probs = {}
    for name, backend in (("fp32", "onnx"), ("int8", "onnx-int8")):
        predictor = Predictor(loaded, backend=backend)
        probs[name] = predictor.predict_manifest(manifest, rows, calibrated=False)
        result[f"macro_auroc_{name}"] = float(
            np.nanmean(roc_auc(y, probs[name], classes=loaded.findings))
        )
    result["macro_auroc_change"] = result["macro_auroc_int8"] - result["macro_auroc_fp32"]
    diff = np.abs(probs["int8"] - probs["fp32"])
    result["max_abs_prob_diff"] = float(diff.max())
    result["mean_abs_prob_diff"] = float(diff.mean())
    return result
