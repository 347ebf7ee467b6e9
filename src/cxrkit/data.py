"""Datasets and loaders over the uint8 image cache.

A loader yields whole batches read with one sorted fancy-index of the memmap:
``images`` ``(B, 1, S, S)`` uint8 and ``labels`` ``(B, C)`` float32 (NaN = unknown).
Augmentation and normalisation happen afterwards on the batch (see ``transforms``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from cxrkit.cache import open_cache
from cxrkit.manifest import Manifest


@dataclass
class CacheSpec:
    """Where a cache is, so each worker process can open its own memmap (memmaps don't pickle)."""

    file: str
    n: int
    size: int


class CacheBatches(Dataset):
    """Index = a list of row positions; returns the batch ``(images, labels)``."""

    def __init__(self, cache: CacheSpec, slots: np.ndarray, labels: np.ndarray):
        if len(slots) != len(labels):
            raise ValueError(f"{len(slots)} cache slots but {len(labels)} label rows")
        self.cache = cache
        self.slots = np.asarray(slots, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.float32)
        self._memmap: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._memmap is None:
            self._memmap = open_cache(self.cache.file, self.cache.n, self.cache.size)
        rows_arr = np.asarray(rows, dtype=np.int64)
        slots = self.slots[rows_arr]
        order = np.argsort(slots, kind="stable")  # sequential reads, then back to batch order
        images = np.empty((len(rows_arr), 1, self.cache.size, self.cache.size), dtype=np.uint8)
        images[order, 0] = self._memmap[slots[order]]
        return torch.from_numpy(images), torch.from_numpy(self.labels[rows_arr])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_memmap": None}


def cache_spec(manifest: Manifest) -> CacheSpec:
    """The cache of a prepared folder."""
    c = manifest.header["cache"]
    return CacheSpec(file=str(manifest.folder / c["file"]), n=int(c["n"]), size=int(c["size"]))


def make_loader(
    dataset: CacheBatches,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A loader of whole batches (``batch_size=None`` in DataLoader terms: the sampler batches)."""
    if shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        sampler=BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
