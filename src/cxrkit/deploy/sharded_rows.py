"""Predict a prepared folder's rows in several processes: ``eval --checkpoint … --devices N``
(spawned here) or under torchrun / srun (every rank predicts its shard), with the
probabilities (and, for the audit, the penultimate features) gathered in the rows' order, so
the metrics are computed once over the whole set, as by one process.

Spawned processes write their shard to ``scratch/rank-K.npz`` (removed once read); launched
ranks send theirs to rank 0 through the process group (:meth:`cxrkit.deploy.ranks.Launch.to_zero`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cxrkit.data.manifest import Manifest, load_manifest
from cxrkit.deploy.ranks import Launch, rank_devices, shard_bounds, spawn_ranks, threads_each

if TYPE_CHECKING:
    from cxrkit.deploy.predictor import Predictor


@dataclass(frozen=True)
class RowsJob:
    """One process's shard (plain data: it crosses a ``spawn``)."""

    rank: int
    device: str
    threads: int
    checkpoint: str
    data: str
    positions: list[int]  # rows of the manifest's table, by position
    out: str  # the .npz it writes
    predictor: dict[str, Any]  # Predictor.from_checkpoint keyword arguments, less device
    features: bool


def _predict(
    predictor: Predictor, manifest: Manifest, rows: pd.DataFrame, features: bool, progress: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(len(rows), C)`` uncalibrated probabilities and, with ``features``, ``(len(rows), D)``
    float32 penultimate features, from one pass over the image cache."""
    if features:
        return predictor.predict_embed_manifest(manifest, rows, progress=progress, calibrated=False)
    return predictor.predict_manifest(manifest, rows, progress=progress, calibrated=False), None


def predict_rows_job(job: RowsJob) -> None:
    """One spawned process: its Predictor, its rows, one ``.npz`` (written whole, then renamed)."""
    from cxrkit.deploy.predictor import Predictor

    predictor = Predictor.from_checkpoint(job.checkpoint, device=job.device, **job.predictor)
    manifest = load_manifest(job.data)
    probs, feats = _predict(
        predictor, manifest, manifest.table.iloc[job.positions], job.features, job.rank == 0
    )
    tmp = Path(job.out).with_suffix(".tmp.npz")
    np.savez(tmp, probs=probs, **({"features": feats} if feats is not None else {}))
    tmp.replace(job.out)


def predict_rows(
    predictor: Predictor,
    manifest: Manifest,
    rows: pd.DataFrame,
    *,
    features: bool = False,
    progress: bool = True,
    devices: int = 1,
    launch: Launch | None = None,
    checkpoint: str | Path | None = None,
    data: str | Path | None = None,
    device: str = "auto",
    predictor_options: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``rows``' uncalibrated probabilities ``(N, C)`` and, with ``features``, features
    ``(N, D)``, in ``rows``' order.

    One process: ``predictor`` predicts them. ``devices > 1``: that many spawned processes on
    ``rank_devices(device, devices)``, each loading ``checkpoint`` (keyword arguments
    ``predictor_options``) and ``data`` and predicting a contiguous shard into a temporary
    folder. ``launch``: ``predictor`` (on this rank's device) predicts this rank's shard;
    rank 0 gets every shard, the other ranks None."""
    if launch is None and devices == 1:
        return _predict(predictor, manifest, rows, features, progress)
    positions = manifest.table.index.get_indexer(rows.index)
    if launch is not None:
        start, stop = shard_bounds(len(rows), launch.world)[launch.rank]
        shards = launch.to_zero(
            lambda: _predict(predictor, manifest, rows.iloc[start:stop], features, launch.zero)
        )
        return _concatenate(shards) if shards is not None else None
    if checkpoint is None or data is None:
        raise ValueError("devices > 1 needs the checkpoint and data each process loads")
    targets = rank_devices(device, devices)
    threads = threads_each(devices)
    with tempfile.TemporaryDirectory(prefix="cxrkit-eval-") as folder:
        scratch = Path(folder)
        options = predictor_options or {}
        return _spawned(
            targets, threads, positions, scratch, str(checkpoint), str(data), options, features
        )


def _spawned(
    targets: list[str],
    threads: int,
    positions: np.ndarray,
    scratch: Path,
    checkpoint: str,
    data: str,
    options: dict[str, Any],
    features: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``positions`` cut into one contiguous shard per target device, each predicted by a
    spawned process into ``scratch``; the shards read back in order."""
    jobs = [
        RowsJob(
            k,
            targets[k],
            threads,
            checkpoint,
            data,
            [int(p) for p in positions[start:stop]],
            str(scratch / f"rank-{k}.npz"),
            dict(options),
            features,
        )
        for k, (start, stop) in enumerate(shard_bounds(len(positions), len(targets)))
    ]
    spawn_ranks(predict_rows_job, jobs, scratch, remedy="run the eval again")
    shards = []
    for job in jobs:
        with np.load(job.out) as z:
            shards.append((z["probs"], z["features"] if features else None))
    return _concatenate(shards)


def _concatenate(
    shards: list[tuple[np.ndarray, np.ndarray | None]],
) -> tuple[np.ndarray, np.ndarray | None]:
    probs = np.concatenate([p for p, _ in shards])
    if shards[0][1] is None:
        return probs, None
    return probs, np.concatenate([f for _, f in shards if f is not None])
