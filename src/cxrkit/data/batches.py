"""Batches read from the uint8 image cache: what training, evaluation and inference all read.

A :class:`CacheBatches` is indexed by a *list* of row positions and returns the whole batch
``(images, labels)``: ``images`` ``(B, 1, S, S)`` uint8 read with one sorted fancy-index of
each cache, ``labels`` ``(B, C)`` float32 (NaN = unknown). A cache is the memmap of
:mod:`cxrkit.data.cache` or LitData shards (:class:`cxrkit.data.shards.ShardReader`, local or
on an object store), as the manifest header's ``cache.format`` says; both give the same bytes
for the same slots, so samplers and augmentation do not know which one they read.
Normalisation happens afterwards on the batch (:mod:`cxrkit.models.inputs`); training may pass
a ``transform`` that augments the uint8 batch in the loader worker
(:class:`cxrkit.train.loaders.LoaderAugment`).

This module needs torch but nothing of training: :func:`sequential_batches` is how
inference walks a manifest's cache without a training loader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrkit.data.manifest import MEMMAP, Manifest, open_images
from cxrkit.data.shards import ShardReader
from cxrkit.errors import UserError

# ``(B, S, S)`` uint8 -> ``(B, size, size)`` uint8, e.g. the loader's augmentation.
BatchTransform = Callable[[np.ndarray], np.ndarray]


@dataclass
class CacheSpec:
    """Where a cache is, so each worker process can open its own reader (memmaps don't pickle).

    ``file``: the memmap file (``format="memmap"``), or the folder or URI of the LitData
    shards (``format="litdata"``); ``n`` slots of ``size`` x ``size`` uint8."""

    file: str
    n: int
    size: int
    format: str = MEMMAP


class CacheBatches(Dataset):
    """Index = a list of row positions; returns the batch ``(images, labels)``.

    Rows may come from several caches (several prepared datasets trained together): row ``i``
    is slot ``slots[i]`` of cache ``caches[sources[i]]``. All caches must share one size.
    With a ``transform`` the uint8 batch ``(B, S, S)`` goes through it and comes out
    ``(B, 1, size, size)`` (the CPU augmentation path, see :mod:`cxrkit.train.augment`); it
    must pickle, as loader workers receive a copy.
    """

    def __init__(
        self,
        caches: list[CacheSpec],
        sources: np.ndarray,
        slots: np.ndarray,
        labels: np.ndarray,
        transform: BatchTransform | None = None,
    ):
        if not (len(sources) == len(slots) == len(labels)):
            raise ValueError(
                f"{len(sources)} sources, {len(slots)} cache slots and "
                f"{len(labels)} label rows: expected one of each per row"
            )
        sizes = {c.size for c in caches}
        if len(sizes) != 1:
            raise UserError(
                f"prepared datasets cached at different sizes {sorted(sizes)}; "
                "prepare them with the same --size to train them together"
            )
        self.caches = caches
        self.size = sizes.pop()
        self.sources = np.asarray(sources, dtype=np.int64)
        self.slots = np.asarray(slots, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.float32)
        self.transform = transform
        self._memmaps: list[np.ndarray | ShardReader] | None = None

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._memmaps is None:
            self._memmaps = [open_images(c.format, c.file, c.n, c.size) for c in self.caches]
        rows_arr = np.asarray(rows, dtype=np.int64)
        images = np.empty((len(rows_arr), 1, self.size, self.size), dtype=np.uint8)
        sources, slots = self.sources[rows_arr], self.slots[rows_arr]
        for source in np.unique(sources):
            where = np.flatnonzero(sources == source)
            where = where[np.argsort(slots[where], kind="stable")]  # sequential reads
            images[where, 0] = self._memmaps[source][slots[where]]
        if self.transform is not None:
            images = self.transform(images[:, 0])[:, None]
        return torch.from_numpy(images), torch.from_numpy(self.labels[rows_arr])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_memmaps": None}


def cache_spec(manifest: Manifest) -> CacheSpec:
    """The cache of a prepared folder (memmap or LitData shards, local or remote)."""
    cache_format, location, n, size = manifest.cache_entry()
    return CacheSpec(file=location, n=n, size=size, format=cache_format)


def sequential_batches(
    dataset: CacheBatches, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The dataset's rows in order, ``batch_size`` at a time (the last batch may be short):
    the batches a sequential, unshuffled loader yields, read in this process."""
    for start in range(0, len(dataset), batch_size):
        yield dataset[list(range(start, min(start + batch_size, len(dataset))))]
