"""Training loaders over the uint8 image cache: samplers, DDP shards, datasets combined.

A loader yields whole batches of :class:`cxrkit.data.batches.CacheBatches`:
``images`` ``(B, 1, S, S)`` uint8 and ``labels`` ``(B, C)`` float32 (NaN = unknown). The rows
index cache slots, whether the cache is a memmap or LitData shards streamed from a folder or
an object store (the manifest says which): the samplers, DDP shares and augmentation below are
the same for both, and so are the batches they produce.
Augmentation happens in the loader (:class:`LoaderAugment`) or on the batch
(:mod:`cxrkit.train.augment`); normalisation afterwards (:mod:`cxrkit.models.inputs`).

Under DDP every rank gets its own share of the rows (:class:`RowBatches`): training ranks
take disjoint slices of one epoch order drawn identically on every rank; validation ranks take
contiguous blocks without padding, so the gathered validation set is exactly the split.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from cxrkit.data.batches import CacheBatches, CacheSpec, cache_spec
from cxrkit.data.labels import select_findings
from cxrkit.data.manifest import Manifest
from cxrkit.errors import UserError, did_you_mean
from cxrkit.train.augment import augment_uint8
from cxrkit.train.config import AugmentConfig
from cxrkit.train.rules import COMBINE_MODES, SAMPLERS


@dataclass(frozen=True)
class LoaderAugment:
    """The CPU augmentation path: ``(B, S, S)`` uint8 -> augmented ``(B, size, size)`` uint8
    with OpenCV, in the loader worker (a :data:`cxrkit.data.batches.BatchTransform`)."""

    cfg: AugmentConfig
    size: int

    def __call__(self, images: np.ndarray) -> np.ndarray:
        # Seeded from torch's RNG, which Lightning seeds per worker: reproducible runs.
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        return augment_uint8(images, self.size, self.cfg, rng)


def sample_weights(labels: np.ndarray) -> np.ndarray:
    """Per-image draw weights ``(N,)`` from training labels ``(N, C)`` (1 / 0 / NaN).

    ``w_i = max over the findings c positive in image i of 1 / n_c``, where ``n_c`` is the
    number of images positive for ``c``; images with no positive finding form one more group
    with its own count. Every finding (and the no-finding group) thus carries a total weight of
    at least 1, so rare findings are drawn about as often as common ones; an image with several
    findings counts with its rarest. Unknown labels (NaN) are not positives.
    """
    positive = np.asarray(labels) == 1  # NaN == 1 is False
    counts = positive.sum(axis=0)
    inverse = np.divide(1.0, counts, out=np.zeros(len(counts)), where=counts > 0)
    weights = (positive * inverse).max(axis=1, initial=0.0)
    none = ~positive.any(axis=1)
    weights[none] = 1.0 / max(1, int(none.sum()))
    return weights


def _rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised default process group, else ``(0, 1)``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RowBatches(Sampler[list[int]]):
    """Batches of row positions for this process: ``list[int]`` per batch.

    ``order`` yields one epoch's rows (sequential, a permutation or a weighted draw). With
    ``distributed=True`` the rank and world size are read from ``torch.distributed`` when
    iterating (after Lightning, torchrun or SLURM set the process group up), and:

    * ``contiguous=True`` (validation): rank ``r`` takes the ``r``-th of ``world`` near-equal
      contiguous blocks, **no padding and no duplicates**; counts may differ by one row.
    * ``contiguous=False`` (training): every rank draws the same order (same seed, same draws),
      cuts it to a multiple of ``world`` and takes every ``world``-th row from ``r``: disjoint
      shards of one global epoch, with the same number of batches on every rank.

    In one process the batches, and the draws from ``order``'s generator, are exactly those
    of ``BatchSampler(order, batch_size, drop_last)``.
    """

    def __init__(
        self,
        order: Sampler[int],
        batch_size: int,
        *,
        drop_last: bool,
        distributed: bool = False,
        contiguous: bool = False,
    ):
        self.order = order
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.distributed = distributed
        self.contiguous = contiguous

    def _share(self, n: int) -> tuple[int, int, int]:
        """``(start, stop, step)`` of this rank's positions in an epoch order of length ``n``."""
        rank, world = _rank_world() if self.distributed else (0, 1)
        if world == 1:
            return 0, n, 1
        if self.contiguous:
            bounds = np.linspace(0, n, world + 1).round().astype(int)
            return int(bounds[rank]), int(bounds[rank + 1]), 1
        return rank, n - n % world, world

    def __iter__(self) -> Iterator[list[int]]:
        # Lazy, as BatchSampler is: the order's generator is drawn from exactly as far as the
        # batches asked for need it, so one-process runs keep their old random stream.
        rows: Iterator[int] = iter(self.order)
        share = self._share(len(self.order))
        if share != (0, len(self.order), 1):
            rows = itertools.islice(rows, *share)
        yield from BatchSampler(rows, self.batch_size, self.drop_last)

    def __len__(self) -> int:
        n = len(range(*self._share(len(self.order))))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def make_loader(
    dataset: CacheBatches,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int = 0,
    sampler: str = "random",
    distributed: bool = False,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A loader of whole batches (``batch_size=None`` in DataLoader terms: the sampler batches).

    ``shuffle`` draws a new order each epoch: ``sampler="random"`` a permutation, ``"weighted"``
    ``len(dataset)`` rows with replacement by :func:`sample_weights`; both seeded by ``seed``.
    ``distributed``: share the rows among DDP ranks (see :class:`RowBatches`; without shuffle
    each rank gets a contiguous block, unpadded). ``pin_memory`` None: when CUDA is available.
    """
    if sampler not in SAMPLERS:
        raise did_you_mean(sampler, SAMPLERS, what="data.sampler")
    generator = torch.Generator().manual_seed(seed)
    order: Sampler[int]
    if not shuffle:
        order = SequentialSampler(dataset)
    elif sampler == "weighted":
        weights = torch.from_numpy(sample_weights(dataset.labels))
        order = WeightedRandomSampler(weights, len(dataset), replacement=True, generator=generator)
    else:
        order = RandomSampler(dataset, generator=generator)
    batches = RowBatches(
        order, batch_size, drop_last=drop_last, distributed=distributed, contiguous=not shuffle
    )
    return DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
    )


@dataclass
class SplitData:
    """One split of one or more prepared datasets: what a :class:`CacheBatches` needs."""

    sources: np.ndarray  # (n,) index into TrainingData.caches
    slots: np.ndarray  # (n,) cache slot
    labels: np.ndarray  # (n, C) float32, NaN = unknown (incl. findings a dataset lacks)

    def batches(
        self, caches: list[CacheSpec], augment: tuple[AugmentConfig, int] | None = None
    ) -> CacheBatches:
        transform = LoaderAugment(*augment) if augment is not None else None
        return CacheBatches(caches, self.sources, self.slots, self.labels, transform)


@dataclass
class TrainingData:
    """Several prepared datasets seen as one: the chosen findings and each split's rows."""

    manifests: list[Manifest]
    findings: list[str]

    @property
    def caches(self) -> list[CacheSpec]:
        return [cache_spec(m) for m in self.manifests]

    def split(self, name: str) -> SplitData:
        """Rows of ``name`` from every dataset; a finding a dataset lacks is NaN (masked)."""
        sources, slots, labels = [], [], []
        for i, m in enumerate(self.manifests):
            rows = m.table[m.table["split"] == name]
            y = np.full((len(rows), len(self.findings)), np.nan, dtype=np.float32)
            for j, f in enumerate(self.findings):
                if f in m.findings:
                    y[:, j] = rows[f].to_numpy(np.float32)
            sources.append(np.full(len(rows), i))
            slots.append(rows["cache_index"].to_numpy())
            labels.append(y)
        return SplitData(np.concatenate(sources), np.concatenate(slots), np.concatenate(labels))


def combine(
    manifests: list[Manifest], wanted: list[str] | None, mode: str = "union"
) -> TrainingData:
    """Choose the findings to train on over ``manifests``.

    ``wanted`` (a list) is validated against the union (``mode="union"``) or the intersection
    (``"intersection"``) of the datasets' findings. ``None`` takes that union/intersection,
    keeping only findings with at least one positive training image (a warning names the
    others).
    """
    if mode not in COMBINE_MODES:
        raise did_you_mean(mode, COMBINE_MODES, what="data.combine")
    sets = [m.findings for m in manifests]
    if mode == "union":
        available = list(dict.fromkeys(f for s in sets for f in s))
    else:
        available = [f for f in sets[0] if all(f in s for s in sets[1:])]
    if not available:
        raise UserError(
            "the prepared datasets have no finding in common (data.combine="
            "intersection); use data.combine=union"
        )
    if wanted is not None:
        return TrainingData(manifests, select_findings(available, wanted))
    data = TrainingData(manifests, available)
    positives = np.nansum(data.split("train").labels == 1, axis=0)
    kept = [f for f, p in zip(available, positives, strict=True) if p > 0]
    dropped = [f for f in available if f not in kept]
    if dropped:
        warnings.warn(
            f"no positive training images for {', '.join(dropped)}: not trained; "
            "set data.findings to choose explicitly",
            UserWarning,
            stacklevel=2,
        )
    if not kept:
        raise UserError("no finding has a positive image in the train split")
    return TrainingData(manifests, kept)
