"""Row samplers: one-process order unchanged, DDP shards (validation unpadded, training
disjoint and even), and weighted sampling by inverse finding frequency."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

from cxrkit.data.batches import CacheBatches, CacheSpec
from cxrkit.errors import UserError
from cxrkit.train import loaders as data
from cxrkit.train.loaders import make_loader, sample_weights


def _dataset(labels: np.ndarray) -> CacheBatches:
    """A dataset over a cache that is never opened (only the samplers are iterated)."""
    n = len(labels)
    return CacheBatches([CacheSpec("unused", n, 8)], np.zeros(n), np.arange(n), labels)


def _batches(loader: torch.utils.data.DataLoader) -> list[list[int]]:
    return [list(b) for b in loader.sampler]


def _rows(loader: torch.utils.data.DataLoader) -> list[int]:
    return [r for b in loader.sampler for r in b]


def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    monkeypatch.setattr(data, "_rank_world", lambda: (rank, world))


def test_one_process_order_is_torchs_random_batch_sampler() -> None:
    ds = _dataset(np.zeros((29, 2), np.float32))
    loader = make_loader(ds, batch_size=4, shuffle=True, drop_last=True, seed=5, distributed=True)
    reference = BatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(5)), 4, True)
    for _epoch in range(3):  # successive epochs draw new permutations, as before
        assert _batches(loader) == [list(b) for b in reference]
    assert len(loader) == 29 // 4
    # Lightning stops asking after len(loader) batches: the generator is drawn from alike.
    for _epoch in range(3):
        mine = [list(b) for b in itertools.islice(loader.sampler, len(loader))]
        assert mine == [list(b) for b in itertools.islice(reference, len(loader))]


def test_validation_shards_are_contiguous_unpadded_and_cover_each_row_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ds = _dataset(np.zeros((29, 2), np.float32))
    loader = make_loader(ds, batch_size=4, shuffle=False, distributed=True)
    rows, sizes = [], []
    for rank in range(3):
        _as_rank(monkeypatch, rank, 3)
        batches = _batches(loader)
        assert len(loader) == len(batches)
        mine = [r for b in batches for r in b]
        assert mine == sorted(mine) and mine == list(range(mine[0], mine[-1] + 1))
        rows += mine
        sizes.append(len(mine))
    assert rows == list(range(29)), "every validation row exactly once, no padding"
    assert max(sizes) - min(sizes) <= 1


def test_training_shards_are_disjoint_with_equal_batch_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ds = _dataset(np.zeros((29, 2), np.float32))
    shards = []
    for rank in range(2):
        _as_rank(monkeypatch, rank, 2)
        loader = make_loader(
            ds, batch_size=4, shuffle=True, drop_last=True, seed=3, distributed=True
        )
        batches = _batches(loader)
        assert len(batches) == len(loader) == 14 // 4
        shards.append([r for b in batches for r in b])
    assert not set(shards[0]) & set(shards[1])
    # The shards are every other row of the one-process epoch order (cut to 28 rows).
    order = torch.randperm(29, generator=torch.Generator().manual_seed(3)).tolist()[:28]
    assert shards[0] == order[0::2][:12] and shards[1] == order[1::2][:12]


def test_not_distributed_loaders_ignore_an_initialised_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _as_rank(monkeypatch, 1, 2)  # e.g. predicting inside a DDP process: every row, one rank
    ds = _dataset(np.zeros((10, 2), np.float32))
    assert _rows(make_loader(ds, batch_size=3, shuffle=False)) == list(range(10))


def test_sample_weights_inverse_frequency_of_the_rarest_positive_finding() -> None:
    nan = np.nan
    labels = np.array(
        [
            [1, 0],  # A only: 1 / n_A = 1/2
            [1, 1],  # A and B: the rarer, A: 1/2
            [0, 1],  # B only: 1 / n_B = 1/3
            [0, nan],  # no positive finding: 1 / n_none = 1/2
            [nan, 1],  # B, A unknown: 1/3
            [0, 0],  # no positive finding: 1/2
        ],
        np.float32,
    )
    np.testing.assert_allclose(sample_weights(labels), [1 / 2, 1 / 2, 1 / 3, 1 / 2, 1 / 3, 1 / 2])


def test_weighted_sampler_draws_rare_finding_images_more_often() -> None:
    labels = np.zeros((200, 2), np.float32)
    labels[:10, 0] = 1  # rare finding: 10 images
    labels[10:110, 1] = 1  # common finding: 100 images; 90 images with none
    ds = _dataset(labels)
    draws = np.zeros(200)
    loader = make_loader(ds, batch_size=16, shuffle=True, seed=0, sampler="weighted")
    for _epoch in range(20):
        for batch in loader.sampler:
            np.add.at(draws, batch, 1)
    assert draws.sum() == 20 * 200, "an epoch is len(dataset) draws, with replacement"
    rare, common, none = draws[:10].mean(), draws[10:110].mean(), draws[110:].mean()
    assert rare > 5 * common and rare > 5 * none
    # Each group is drawn about a third of the time.
    shares = np.array([draws[:10].sum(), draws[10:110].sum(), draws[110:].sum()]) / draws.sum()
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.05)
    again = make_loader(ds, batch_size=16, shuffle=True, seed=0, sampler="weighted")
    first = make_loader(ds, batch_size=16, shuffle=True, seed=0, sampler="weighted")
    assert _batches(again) == _batches(first), "seeded"


def test_weighted_ddp_ranks_share_one_global_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = np.zeros((40, 2), np.float32)
    labels[:4, 0] = 1
    ds = _dataset(labels)
    _as_rank(monkeypatch, 0, 1)
    kwargs = {"batch_size": 40, "shuffle": True, "sampler": "weighted", "distributed": True}
    whole = _rows(make_loader(ds, **kwargs))
    for rank in range(2):
        _as_rank(monkeypatch, rank, 2)
        assert _rows(make_loader(ds, **kwargs)) == whole[rank::2]


def test_unknown_sampler_is_a_user_error() -> None:
    ds = _dataset(np.zeros((4, 1), np.float32))
    with pytest.raises(UserError, match="did you mean 'weighted'"):
        make_loader(ds, batch_size=2, shuffle=True, sampler="weigthed")
