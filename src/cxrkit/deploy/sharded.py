"""``cxrkit infer --devices N`` and launched ranks: one prediction process per device, one
merged CSV.

The source list is cut into ``N`` contiguous shards (:func:`plan_parts`). Each process
(started here with ``spawn``, or a rank that torchrun / srun started: :mod:`cxrkit.deploy.ranks`)
builds its own :class:`~cxrkit.deploy.predictor.Predictor` on its device (``cuda:k`` for the
k-th GPU; on the CPU, ``N`` processes sharing the cores) and streams its shard through
:func:`~cxrkit.deploy.batch.write_predictions` into ``.OUT.parts/part-k.csv``, resumable as
any ``infer`` CSV. When every process has finished, the parts are merged into ``OUT`` in the
source's order (atomically) and removed. A killed run is continued by ``--resume``: each
process resumes its own part; a finished ``OUT`` is split back into parts first, so nothing
is predicted twice. Image ids are relative to the same root in every process, so the merged
CSV is the one a single process writes (probabilities to the CSV's 1e-6).
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrkit.deploy.batch import (
    InferSummary,
    check_output,
    common_folder,
    read_rows,
    write_predictions,
)
from cxrkit.deploy.ranks import rank_devices, shard_bounds, spawn_ranks, threads_each
from cxrkit.deploy.records import record_path, save_record
from cxrkit.errors import UserError
from cxrkit.files import atomic_write_text


@dataclass(frozen=True)
class PartJob:
    """What one rank needs to predict its shard (plain data: it crosses a ``spawn``)."""

    rank: int
    device: str
    threads: int
    checkpoint: str
    paths: list[str]
    part: str
    root: str
    predictor: dict[str, Any]  # Predictor.from_checkpoint keyword arguments
    writer: dict[str, Any]  # write_predictions keyword arguments


@dataclass(frozen=True)
class Plan:
    """The parts of one run: their folder, each rank's paths, the rows done before."""

    out_csv: str
    names: list[str]
    shards: list[list[str]]
    root: str
    before: int

    @property
    def parts(self) -> Path:
        return parts_folder(Path(self.out_csv))

    def part(self, rank: int) -> Path:
        return self.parts / f"part-{rank}.csv"

    def job(
        self,
        rank: int,
        device: str,
        threads: int,
        checkpoint: str | Path,
        predictor: dict[str, Any],
        writer: dict[str, Any],
    ) -> PartJob:
        """Rank ``rank``'s job: its shard into its part, resumed (``writer``'s ``workers``
        are this rank's share; its progress bar only on rank 0)."""
        writer = {**writer, "resume": True}
        writer["progress"] = bool(writer.get("progress", True)) and rank == 0
        return PartJob(
            rank,
            device,
            threads,
            str(checkpoint),
            self.shards[rank],
            str(self.part(rank)),
            self.root,
            dict(predictor),
            writer,
        )


def parts_folder(out_csv: Path) -> Path:
    """``preds.csv`` -> ``.preds.csv.parts`` beside it."""
    return out_csv.with_name(f".{out_csv.name}.parts")


def plan_parts(
    out_csv: str | Path,
    paths: Sequence[Path],
    ranks: int,
    *,
    root: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Plan:
    """Check ``out_csv`` and lay out ``ranks`` parts for ``paths`` (contiguous shards): old
    parts are refused without a flag, cleared with ``overwrite``; ``resume`` keeps them, and
    splits a finished ``out_csv`` back into parts first, so nothing is predicted twice."""
    out_csv = Path(out_csv)
    names = [str(p) for p in paths]
    check_output(out_csv, paths)
    if out_csv.exists() and not (resume or overwrite):
        raise UserError(f"{out_csv} exists; pass --resume to continue it or --overwrite")
    parts = parts_folder(out_csv)
    if parts.is_dir() and not (resume or overwrite):
        raise UserError(
            f"{parts} holds the parts of an unfinished run; pass --resume to continue it "
            "(under torchrun --max-restarts, give --resume from the start) or --overwrite"
        )
    if overwrite and not resume:
        shutil.rmtree(parts, ignore_errors=True)
    shards = [names[start:stop] for start, stop in shard_bounds(len(names), ranks)]
    if resume and out_csv.is_file() and not parts.is_dir():
        _split_back(out_csv, parts, shards)
    parts.mkdir(parents=True, exist_ok=True)
    before = sum(max(0, len(read_rows(parts / f"part-{k}.csv")[0]) - 1) for k in range(ranks))
    base = str(root if root is not None else common_folder(paths))
    return Plan(str(out_csv), names, shards, base, before)


def _split_back(out_csv: Path, parts: Path, shards: Sequence[Sequence[str]]) -> None:
    """Seed the parts from a merged ``out_csv`` (a resumed run that had finished)."""
    rows = read_rows(out_csv)[0]
    if not rows:
        return
    parts.mkdir(parents=True, exist_ok=True)
    record = record_path(out_csv).read_bytes() if record_path(out_csv).is_file() else None
    by_path = {r[0]: r for r in rows[1:] if len(r) == len(rows[0])}
    for k, shard in enumerate(shards):
        part = parts / f"part-{k}.csv"
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerows([rows[0], *(by_path[p] for p in shard if p in by_path)])
        atomic_write_text(part, buffer.getvalue())
        if record is not None:
            record_path(part).write_bytes(record)


def predict_part(job: PartJob) -> None:
    """One rank: its Predictor on its device, its shard streamed into its part CSV (its
    torch threads already set: by :func:`~cxrkit.deploy.ranks.spawn_ranks` or
    :meth:`~cxrkit.deploy.ranks.Launch.place`)."""
    from cxrkit.deploy.predictor import Predictor

    predictor = Predictor.from_checkpoint(job.checkpoint, device=job.device, **job.predictor)
    write_predictions(
        predictor, [Path(p) for p in job.paths], job.part, root=job.root, **job.writer
    )


def write_predictions_sharded(
    checkpoint: str | Path,
    plan: Plan,
    *,
    devices: int,
    device: str = "auto",
    predictor: dict[str, Any] | None = None,
    writer: dict[str, Any] | None = None,
    record: dict[str, Any],
) -> InferSummary:
    """Predict ``plan``'s shards in ``devices`` spawned processes and merge their rows.

    ``predictor``: keyword arguments of ``Predictor.from_checkpoint`` (not ``device``);
    ``writer``: of :func:`write_predictions` (``workers`` is divided among the processes);
    ``record``: the single-process record, saved beside the CSV with ``processes``."""
    targets = rank_devices(device, devices)
    writer = dict(writer or {})
    writer["workers"] = int(writer.get("workers", 0)) // devices
    threads = threads_each(devices)
    jobs = [
        plan.job(k, targets[k], threads, checkpoint, predictor or {}, writer)
        for k in range(devices)
    ]
    remedy = "rerun with --resume to continue what the processes wrote"
    spawn_ranks(predict_part, jobs, plan.parts, remedy=remedy)
    return merge_parts(plan, record)


def merge_parts(plan: Plan, record: dict[str, Any]) -> InferSummary:
    """The parts' rows in source order into the CSV (atomically, with ``record`` and the
    number of processes beside it); the parts removed."""
    out_csv, parts, names, ranks = Path(plan.out_csv), plan.parts, plan.names, len(plan.shards)
    header: list[str] | None = None
    by_path: dict[str, list[str]] = {}
    for k in range(ranks):
        rows = read_rows(plan.part(k))[0]
        header = header or rows[0]
        by_path.update({r[0]: r for r in rows[1:]})
    missing = [n for n in names if n not in by_path]
    if header is None or missing:
        raise UserError(
            f"{len(missing)} image(s) missing from the parts in {parts}; rerun with --resume"
        )
    body = [by_path[n] for n in names]
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows([header, *body])
    atomic_write_text(out_csv, buffer.getvalue())
    save_record(out_csv, {**record, "processes": ranks})
    shutil.rmtree(parts)
    status = header.index("status")
    flags = header.index("in_distribution")
    return InferSummary(
        ok=sum(r[status] == "ok" for r in body),
        failed=sum(r[status] != "ok" for r in body),
        skipped=plan.before,
        flagged=sum(r[flags] == "0" for r in body),
    )
