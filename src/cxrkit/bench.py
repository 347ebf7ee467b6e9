"""``cxrkit bench``: throughput figures on the user's own machine.

``loader``: images/s of (a) decoding the original files as every epoch would without a cache
(read + letterbox), (b) the training input pipeline from the cache (batch read + train
augmentations on the batch), each on one core, and their ratio; with ``--model`` also the
train-step throughput of a backbone, to check the loader outruns the model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrkit.config import AugmentConfig
from cxrkit.data import combine, make_loader
from cxrkit.io import ImageReadError, read_xray
from cxrkit.manifest import load_manifest
from cxrkit.preprocess import prepare_image
from cxrkit.training import augment_on_device
from cxrkit.transforms import train_transform


@dataclass
class LoaderBench:
    """Measured images/s; ``model`` is None unless a backbone was timed."""

    decode: float
    loader: float
    model: float | None
    device: str

    @property
    def ratio(self) -> float:
        return self.loader / self.decode

    def lines(self) -> list[str]:
        out = [
            f"decode originals (read + letterbox), 1 core: {self.decode:9.1f} images/s",
            f"cache loader (read + augment + collate), 1 core: {self.loader:7.1f} images/s "
            f"(augmenting {'on ' + self.device if self.device == 'cuda' else 'in the loader'})",
            f"loader / decode: {self.ratio:.1f}x",
        ]
        if self.model is not None:
            out.append(
                f"model train step on {self.device}: {self.model:.1f} images/s "
                f"(loader capacity {self.loader / self.model:.1f}x the model)"
            )
        return out


def _rate(n_items: int, fn: Callable[[], None], min_seconds: float = 1.0) -> float:
    """Items per second of ``fn`` (which processes ``n_items``), repeated for ``min_seconds``."""
    fn()  # warm-up
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or count == 0:
        fn()
        count += 1
    return n_items * count / elapsed


def bench_loader(
    data: str | Path,
    *,
    image_size: int = 224,
    batch_size: int = 32,
    n_decode: int = 64,
    model: str | None = None,
) -> LoaderBench:
    """Measure the figures of :class:`LoaderBench` on the prepared folder ``data``."""
    torch.set_num_threads(1)
    manifest = load_manifest(data)
    size = manifest.header["cache"]["size"]
    paths = manifest.table["path"].iloc[:n_decode].tolist()

    def decode() -> None:
        for p in paths:
            try:
                prepare_image(read_xray(p).pixels, size)
            except ImageReadError:
                pass

    decode_rate = _rate(len(paths), decode)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    training = combine([manifest], manifest.findings[:1])
    split = training.split("train")
    augment = AugmentConfig()
    on_device = augment_on_device(augment, device)
    batches_ds = split.batches(training.caches, None if on_device else (augment, image_size))
    loader = make_loader(batches_ds, batch_size=batch_size, shuffle=True)
    batches = iter(())

    def load() -> None:
        nonlocal batches
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        images = batch[0].to(device, non_blocking=True)
        if on_device:  # the GPU path: augmentation is part of the loading work
            train_transform(images, image_size, 0.45, 0.23, augment)
        if device == "cuda":
            torch.cuda.synchronize()

    loader_rate = _rate(batch_size, load)
    model_rate = _model_rate(model, image_size, batch_size, device) if model else None
    return LoaderBench(decode_rate, loader_rate, model_rate, device)


def _model_rate(backbone: str, image_size: int, batch_size: int, device: str) -> float:
    from cxrkit.models import create_model

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the model gets every core
    net = create_model(backbone, 14).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    x = torch.randn(batch_size, 1, image_size, image_size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 2, (batch_size, 14), device=device).float()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def step() -> None:
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return _rate(batch_size, step, min_seconds=3.0)
