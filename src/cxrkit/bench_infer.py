"""``cxrkit bench infer``: model-only and end-to-end inference images/s on this machine.

Model-only: the network's forward pass on ready, normalised ``(B, 1, S, S)`` batches (fp32
channels_last, and bf16 autocast). End-to-end: ``cxrkit infer``'s path over a folder of real
images — decode and letterbox in a worker process, resize, normalise, forward, sigmoid —
exactly what ``infer`` runs. With no checkpoint, an untrained backbone stands in (speed does
not depend on the weights).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrkit.checkpoint import LoadedModel
from cxrkit.infer_run import predict_paths, resolve_sources
from cxrkit.inference import Predictor
from cxrkit.labels import NIH_FINDINGS
from cxrkit.models import create_model, input_normalization


@dataclass
class InferBench:
    """Images/s: ``model`` per precision, ``end_to_end`` for the chosen precision."""

    model: dict[str, float]
    end_to_end: float
    precision: str
    n_images: int
    threads: int

    def lines(self) -> list[str]:
        out = [f"model only, {k}: {v:.1f} images/s" for k, v in self.model.items()]
        ratio = self.end_to_end / self.model[self.precision]
        out.append(
            f"end to end ({self.n_images} images, {self.precision}): "
            f"{self.end_to_end:.1f} images/s = {ratio:.2f} of model-only"
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


def _rate(n: int, fn, repeat: int) -> float:  # noqa: ANN001 - a plain callable
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return n * repeat / (time.perf_counter() - start)


def bench_infer(
    images: str | Path,
    *,
    checkpoint: str | Path | None = None,
    backbone: str = "densenet121",
    input_size: int = 224,
    letterbox_size: int = 256,
    batch_size: int = 16,
    workers: int = 1,
    precision: str = "fp32",
    repeat: int = 3,
) -> InferBench:
    """Measure :class:`InferBench` on the images under ``images``."""
    paths = resolve_sources(images)
    loaded = (
        Predictor.from_checkpoint(checkpoint).loaded
        if checkpoint
        else stand_in(backbone, input_size, letterbox_size)
    )
    size = int(loaded.card["input_size"])
    x = torch.randn(batch_size, 1, size, size).contiguous(memory_format=torch.channels_last)
    model_rates = {}
    for name in ("fp32", "bf16"):
        predictor = Predictor(loaded, batch_size=batch_size, precision=name)
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=name == "bf16"):
            model_rates[name] = _rate(batch_size, lambda p=predictor: p.model(x), repeat)
    predictor = Predictor(loaded, batch_size=batch_size, precision=precision)
    list(predict_paths(predictor, paths[: batch_size * 2], workers=workers))  # warm-up
    start = time.perf_counter()
    for _ in predict_paths(predictor, paths, workers=workers):
        pass
    end_to_end = len(paths) / (time.perf_counter() - start)
    return InferBench(model_rates, end_to_end, precision, len(paths), torch.get_num_threads())
