"""``cxrkit bench``: throughput figures on the user's own machine.

``loader``: images/s of (a) decoding the original files as every epoch would without a cache
(read + letterbox), (b) the training input pipeline from the cache (batch read + train
augmentations on the batch), each on one core, and their ratio; with ``--model`` also the
train-step throughput of a backbone, to check the loader outruns the model.

``train``: images/s of the training step (batch transform, forward, loss, backward, AdamW
step) of a backbone at a size, batch, precision, memory format and compile setting, on cached
uint8 batches already on the device; the peak GPU memory; and images/s of the training
loader with its worker processes, i.e. how many times the step's demand the loader can feed.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrkit.data.manifest import Manifest, load_manifest
from cxrkit.data.preprocess import prepare_image
from cxrkit.errors import UserError
from cxrkit.io.images import read_xray
from cxrkit.io.xray import ImageReadError
from cxrkit.models.inputs import eval_transform
from cxrkit.train.augment import train_transform
from cxrkit.train.config import AugmentConfig
from cxrkit.train.loaders import combine, make_loader
from cxrkit.train.module import augment_on_device

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "32-true": None}


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
    loader_rate = _loader_rate(manifest, image_size, batch_size, device, workers=0)
    model_rate = None
    if model:
        precision = "bf16-mixed" if device == "cuda" else "32-true"
        model_rate = _train_rate(model, image_size, batch_size, device, precision)[0]
    return LoaderBench(decode_rate, loader_rate, model_rate, device)


def _loader_rate(
    manifest: Manifest,
    image_size: int,
    batch_size: int,
    device: str,
    *,
    workers: int,
    min_seconds: float = 1.0,
) -> float:
    """Images/s the training input pipeline delivers to ``device``: cache read (and, on the
    CPU, augmentation in the loader), transfer, and (on CUDA) augmentation on the batch."""
    training = combine([manifest], manifest.findings[:1])
    split = training.split("train")
    augment = AugmentConfig()
    on_device = augment_on_device(augment, device)
    batches_ds = split.batches(training.caches, None if on_device else (augment, image_size))
    loader = make_loader(batches_ds, batch_size=batch_size, shuffle=True, num_workers=workers)
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

    return _rate(batch_size, load, min_seconds)


def _train_rate(
    backbone: str,
    image_size: int,
    batch_size: int,
    device: str,
    precision: str,
    *,
    channels_last: bool = True,
    compile_model: bool = False,
    images: torch.Tensor | None = None,
    min_seconds: float = 3.0,
) -> tuple[float, float | None]:
    """Images/s of one training step of ``backbone`` and the peak GPU memory in GiB (None off
    CUDA). ``images``: ``(B, 1, S, S)`` uint8 cached batch (default: random, S = 256). The step
    is training's: augment on the device (CUDA) or resize + normalise (CPU, where the loader
    augments), forward under ``precision``'s autocast, masked BCE, backward, AdamW step."""
    from cxrkit.models.backbones import create_model
    from cxrkit.models.inputs import input_normalization
    from cxrkit.train.losses import MaskedBCE

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the model gets every core
    net = create_model(backbone, 14).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile_model:
        net.compile()
    mean, std = input_normalization(net)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    if images is None:
        images = torch.randint(0, 256, (batch_size, 1, 256, 256), dtype=torch.uint8)
    images = images.to(device)
    y = torch.randint(0, 2, (len(images), 14), device=device).float()
    augment = AugmentConfig()
    on_device = augment_on_device(augment, device)
    dtype = AUTOCAST[precision]
    loss_fn = MaskedBCE()

    def step() -> None:
        if on_device:
            x = train_transform(images, image_size, mean, std, augment)
        else:
            x = eval_transform(images, image_size, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3 if compile_model else 0):  # compiling: the first steps trace and build
        step()
    rate = _rate(len(images), step, min_seconds)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return rate, peak


@dataclass
class TrainBench:
    """Measured training throughput; ``loader`` is None without a prepared folder."""

    setup: str  # backbone, size, batch, precision, memory format, compile
    device: str
    train: float  # images/s of the training step
    peak_gib: float | None  # peak GPU memory of the step (CUDA only)
    loader: float | None  # images/s of the training loader with ``workers`` processes
    workers: int

    def lines(self) -> list[str]:
        out = [f"device: {self.device}", f"train step ({self.setup}): {self.train:.1f} images/s"]
        if self.peak_gib is not None:
            out.append(f"peak GPU memory: {self.peak_gib:.2f} GiB")
        if self.loader is not None:
            out.append(
                f"training loader ({self.workers} worker(s)): {self.loader:.1f} images/s "
                f"= {self.loader / self.train:.1f}x the train step's demand"
            )
        return out


def bench_train(
    data: str | Path | None = None,
    *,
    backbone: str = "densenet121",
    image_size: int = 224,
    batch_size: int = 32,
    precision: str = "auto",
    channels_last: bool = True,
    compile_model: bool = False,
    workers: int = 2,
    seconds: float = 5.0,
) -> TrainBench:
    """Measure :class:`TrainBench`: the train step on batches from ``data``'s cache (random
    uint8 images without ``data``), then the training loader over ``data``'s train split."""
    from cxrkit.train.fit import lightning_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = lightning_precision(precision)
    if precision not in AUTOCAST:
        raise UserError(f"precision must be auto, {', '.join(AUTOCAST)}; got {precision!r}")
    manifest = load_manifest(data) if data is not None else None
    images = None
    if manifest is not None:
        training = combine([manifest], manifest.findings[:1])
        dataset = training.split("train").batches(training.caches)
        images = dataset[[i % len(dataset) for i in range(batch_size)]][0]  # a cached batch
    rate, peak = _train_rate(
        backbone,
        image_size,
        batch_size,
        device,
        precision,
        channels_last=channels_last,
        compile_model=compile_model,
        images=images,
        min_seconds=seconds,
    )
    loader = None
    if manifest is not None:
        loader = _loader_rate(
            manifest, image_size, batch_size, device, workers=workers, min_seconds=seconds / 2
        )
    memory_format = "channels_last" if channels_last else "NCHW"
    mode = "compiled" if compile_model else "eager"
    setup = f"{backbone}, {image_size} px, batch {batch_size}, {precision}, {memory_format}, {mode}"
    return TrainBench(setup, _device_name(device), rate, peak, loader, workers)


def _device_name(device: str) -> str:
    """``"cuda: <card>"`` or ``"cpu: <model name>, N threads"``."""
    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}"
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    return f"cpu: {names[0] if names else platform.processor()}, {torch.get_num_threads()} threads"
