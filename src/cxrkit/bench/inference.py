"""``cxrkit bench infer``: model-only and end-to-end inference images/s on this machine.

Model-only: the network's forward pass on ready, normalised ``(B, 1, S, S)`` batches on the
chosen ``--device``: PyTorch fp32 channels_last, PyTorch bf16 and fp16 autocast where the
device allows them (:func:`cxrkit.models.devices.resolve_precision`: bf16 on a CPU, fp16 too
on a GPU), and, on the CPU only, onnxruntime and OpenVINO (when installed) on
``model.onnx`` and ``model.int8.onnx`` where the bundle has them; with no bundle, the
stand-in is exported to a temporary ONNX file and quantised statically, calibrated on the
first benchmark images. GPU timings synchronise the device before reading the clock.
End-to-end: ``cxrkit infer``'s path over a folder of real images — decode and letterbox
(low-priority threads or worker processes), resize, normalise, forward, sigmoid — with each
requested backend (default: the one ``infer`` would choose). Model-only and end-to-end runs
alternate over rounds and each figure is a median (see :func:`bench_infer`). With no
checkpoint, an untrained backbone stands in (speed does not depend on the weights).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.deploy.backends import INT8_FILE, ONNX_FILE, ONNX_FILES, backend_available
from cxrkit.deploy.batch import predict_paths
from cxrkit.deploy.onnx_export import export_onnx
from cxrkit.deploy.predictor import Predictor
from cxrkit.deploy.quantize import file_calibration, quantize_onnx
from cxrkit.deploy.sources import resolve_sources
from cxrkit.errors import UserError
from cxrkit.models.backbones import create_model
from cxrkit.models.checkpoint import LoadedModel
from cxrkit.models.devices import resolve_precision, resolve_runtime
from cxrkit.models.inputs import input_normalization

#: benchmark images that calibrate the stand-in's static int8 ranges
CALIBRATION = 32


@dataclass
class InferBench:
    """Images/s: ``model`` per ``torch-fp32`` / ``torch-bf16`` / ``torch-fp16`` / ``onnx`` /
    ``onnx-int8``; ``end_to_end`` per backend run, under the same keys; ``runtime`` the
    device line (:meth:`cxrkit.models.devices.Runtime.line`) of the end-to-end runs."""

    model: dict[str, float]
    end_to_end: dict[str, float]
    n_images: int
    threads: int
    runtime: str = "device cpu"

    def lines(self) -> list[str]:
        out = [self.runtime]
        out += [f"model only, {k}: {v:.1f} images/s" for k, v in self.model.items()]
        for key, rate in self.end_to_end.items():
            out.append(
                f"end to end ({self.n_images} images, {key}): "
                f"{rate:.1f} images/s = {rate / self.model[key]:.2f} of model-only"
            )
        out.append(f"torch threads: {self.threads}")
        return out


def stand_in(backbone: str, input_size: int, letterbox_size: int) -> LoadedModel:
    """An untrained ``backbone`` with a model card, for timing without a checkpoint."""
    model = create_model(backbone, len(NIH_FINDINGS)).eval()
    mean, std = input_normalization(model)
    card = {
        "findings": list(NIH_FINDINGS),
        "backbone": backbone,
        "input_size": input_size,
        "normalization": {"mean": mean, "std": std, "letterbox_size": letterbox_size},
    }
    return LoadedModel(model=model, card=card)


def with_onnx(loaded: LoadedModel, folder: Path, calibration: Sequence[Path]) -> LoadedModel:
    """The stand-in ``loaded`` exported to ``folder/model.onnx`` (checked against PyTorch by
    :func:`export_onnx`) and quantised to ``model.int8.onnx`` (static, calibrated on the
    ``calibration`` images), usable by the onnx backends as a bundle would be."""
    export_onnx(loaded.model, folder / ONNX_FILE, int(loaded.card["input_size"]))
    batches = file_calibration(loaded, calibration)
    quantize_onnx(folder / ONNX_FILE, folder / INT8_FILE, "static", batches)
    card = {**loaded.card, "files": {ONNX_FILE: {}, INT8_FILE: {}}}
    return LoadedModel(model=loaded.model, card=card, source=folder)


def _sync(device: torch.device) -> None:
    """Wait for the work queued on a GPU (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _allowed(precision: str, device: torch.device) -> bool:
    """Whether ``--precision precision`` would run on ``device`` (the resolver's rules)."""
    try:
        resolve_precision(precision, device)
    except UserError:
        return False
    return True


def _model_rate(predictor: Predictor, x: torch.Tensor, batches: int) -> float:
    """Images/s of ``batches`` forward passes of the ready ``(B, 1, S, S)`` batch ``x`` (one
    untimed first), on the predictor's device under its autocast."""
    x = predictor.to_device(x) if predictor.backend_name == "torch" else x
    with torch.inference_mode(), predictor.autocast():
        predictor.backend(x)
        _sync(predictor.device)
        start = time.perf_counter()
        for _ in range(batches):
            predictor.backend(x)
        _sync(predictor.device)
    return len(x) * batches / (time.perf_counter() - start)


def _end_to_end_rate(
    predictor: Predictor, paths: Sequence[Path], workers: int, jpeg_batch: bool = False
) -> float:
    """Images/s of one :func:`predict_paths` pass over ``paths``, start-up included
    (``jpeg_batch``: JPEGs decoded in batches on the device, ``infer --gpu-decode``)."""
    start = time.perf_counter()
    for _ in predict_paths(predictor, paths, workers=workers, jpeg_batch=jpeg_batch):
        pass
    return len(paths) / (time.perf_counter() - start)


def bench_infer(
    images: str | Path,
    *,
    checkpoint: str | Path | None = None,
    backbone: str = "densenet121",
    input_size: int = 224,
    letterbox_size: int = 256,
    batch_size: int = 16,
    workers: int = 0,
    precision: str = "auto",
    onnx: bool = True,
    backends: Sequence[str] = ("auto",),
    repeat: int = 3,
    device: str = "cpu",
    gpu_decode: bool = False,
) -> InferBench:
    """Measure :class:`InferBench` on the images under ``images``, end to end with each of
    ``backends`` (names as ``infer --backend``) on ``device`` at ``precision`` (as ``infer
    --device`` / ``--precision``); ``onnx=False`` skips the stand-in's ONNX export and
    quantisation (a minute or two) and so the onnx figures, as a GPU ``device`` does.

    ``repeat`` rounds, each timing every model-only run (4 batches) and then every end-to-end
    pass; the figures are the medians over rounds, so a model-only figure and its end-to-end
    figure come from the same moments and drift in the machine's speed hits both alike."""
    paths = resolve_sources(images)
    runtime = resolve_runtime(device, precision)  # a bad --device fails before any work
    on_cpu = runtime.device.type == "cpu"
    decodes = (False, True) if gpu_decode else (False,)
    with tempfile.TemporaryDirectory(prefix="cxrkit-bench-") as tmp:
        if checkpoint:
            loaded = Predictor.from_checkpoint(checkpoint).loaded
        elif onnx and on_cpu:
            stand = stand_in(backbone, input_size, letterbox_size)
            loaded = with_onnx(stand, Path(tmp), paths[:CALIBRATION])
        else:
            loaded = stand_in(backbone, input_size, letterbox_size)
        size = int(loaded.card["input_size"])
        x = torch.randn(batch_size, 1, size, size).contiguous(memory_format=torch.channels_last)
        files = (loaded.card.get("files") or {}) if loaded.source is not None else {}
        runs = {
            f"torch-{prec}": ("torch", prec)
            for prec in ("fp32", "bf16", "fp16")
            if _allowed(prec, runtime.device)  # fp16 on a GPU only
        }
        runs |= {
            name: (name, "fp32")
            for name, file in ONNX_FILES.items()
            if on_cpu and file in files and backend_available(name)
        }
        dev = runtime.device
        models = {
            key: Predictor(loaded, batch_size=batch_size, precision=prec, backend=name, device=dev)
            for key, (name, prec) in runs.items()
        }
        ends = [
            Predictor(loaded, batch_size=batch_size, precision=precision, backend=name, device=dev)
            for name in backends
        ]
        ends_by_key = {_key(p): p for p in ends}
        for predictor in ends_by_key.values():  # warm-up: first-call allocations, file cache
            list(predict_paths(predictor, paths[: batch_size * 2], workers=workers))
        model_rates: dict[str, list[float]] = {key: [] for key in models}
        suffix = {False: "", True: "+batched-jpeg"}
        end_rates = {key + suffix[d]: [] for key in ends_by_key for d in decodes}
        for _ in range(repeat):
            for key, predictor in models.items():
                model_rates[key].append(_model_rate(predictor, x, batches=4))
            for key, predictor in ends_by_key.items():
                for d in decodes:
                    rate = _end_to_end_rate(predictor, paths, workers, jpeg_batch=d)
                    end_rates[key + suffix[d]].append(rate)
    return InferBench(
        {k: statistics.median(v) for k, v in model_rates.items()},
        {k: statistics.median(v) for k, v in end_rates.items()},
        len(paths),
        torch.get_num_threads(),
        ends[0].runtime.line() if ends else runtime.line(),
    )


def _key(predictor: Predictor) -> str:
    """The :attr:`InferBench.model` key of the predictor's backend and precision."""
    if predictor.backend_name != "torch":
        return predictor.backend_name
    return f"torch-{predictor.precision}"
