"""``cxrkit infer --devices N``: one prediction process per device, one merged CSV.

The source list is cut into ``N`` contiguous shards. Each process (started with ``spawn``)
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
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrkit.deploy.batch import (
    InferSummary,
    check_output,
    common_folder,
    read_rows,
    write_predictions,
)
from cxrkit.deploy.records import record_path, save_record
from cxrkit.errors import UserError
from cxrkit.files import atomic_write_text


@dataclass(frozen=True)
class RankJob:
    """What one process needs (plain data: it crosses a ``spawn``)."""

    rank: int
    device: str
    threads: int
    checkpoint: str
    paths: list[str]
    part: str
    root: str
    predictor: dict[str, Any]  # Predictor.from_checkpoint keyword arguments
    writer: dict[str, Any]  # write_predictions keyword arguments


def parts_folder(out_csv: Path) -> Path:
    """``preds.csv`` -> ``.preds.csv.parts`` beside it."""
    return out_csv.with_name(f".{out_csv.name}.parts")


def rank_devices(device: str, n: int) -> list[str]:
    """The ``n`` devices of ``--device`` (``auto``/``cuda``: ``cuda:0`` .. ``cuda:n-1``; the
    CPU: ``n`` processes); a UserError when there are fewer."""
    if n < 1:
        raise UserError(f"--devices must be at least 1, got {n}")
    kind = device.split(":")[0]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        have = torch.cuda.device_count()
        if have < n:
            raise UserError(
                f"--devices {n} asks for {n} CUDA GPUs, {have} visible; use --devices {have} "
                "or --device cpu"
            )
        return [f"cuda:{k}" for k in range(n)]
    if kind == "cpu":
        cores = os.cpu_count() or 1
        if n > cores:
            raise UserError(
                f"--devices {n} processes on {cores} CPU core(s) would only contend; "
                f"use --devices {cores} or fewer"
            )
        return ["cpu"] * n
    raise UserError(f"--devices {n} runs on CUDA GPUs or the CPU, not on {device}; use --devices 1")


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


def _run_rank(job: RankJob) -> None:
    """One process: its Predictor, its shard, its part CSV; a UserError goes to a file."""
    from cxrkit.deploy.predictor import Predictor

    torch.set_num_threads(job.threads)
    try:
        predictor = Predictor.from_checkpoint(job.checkpoint, device=job.device, **job.predictor)
        write_predictions(
            predictor, [Path(p) for p in job.paths], job.part, root=job.root, **job.writer
        )
    except UserError as err:
        Path(job.part).with_suffix(".error").write_text(str(err))
        raise SystemExit(2) from None


def write_predictions_sharded(
    checkpoint: str | Path,
    paths: Sequence[Path],
    out_csv: str | Path,
    *,
    devices: int,
    device: str = "auto",
    root: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    predictor: dict[str, Any] | None = None,
    writer: dict[str, Any] | None = None,
    record: dict[str, Any],
) -> InferSummary:
    """Predict ``paths`` in ``devices`` processes and merge their rows into ``out_csv``.

    ``predictor``: keyword arguments of ``Predictor.from_checkpoint`` (not ``device``);
    ``writer``: of :func:`write_predictions` (``workers`` is divided among the processes);
    ``record``: the single-process record, saved beside ``out_csv`` with ``processes``."""
    out_csv = Path(out_csv)
    names = [str(p) for p in paths]
    check_output(out_csv, paths)
    if out_csv.exists() and not (resume or overwrite):
        raise UserError(f"{out_csv} exists; pass --resume to continue it or --overwrite")
    targets = rank_devices(device, devices)
    parts = parts_folder(out_csv)
    if overwrite and not resume:
        shutil.rmtree(parts, ignore_errors=True)
    shards = [list(s) for s in np.array_split(np.array(names, dtype=object), devices)]
    if resume and out_csv.is_file() and not parts.is_dir():
        _split_back(out_csv, parts, shards)
    parts.mkdir(parents=True, exist_ok=True)
    before = sum(max(0, len(read_rows(parts / f"part-{k}.csv")[0]) - 1) for k in range(devices))
    writer = dict(writer or {})
    workers = int(writer.pop("workers", 0))
    threads = max(1, (os.cpu_count() or 1) // devices)
    jobs = [
        RankJob(
            k,
            targets[k],
            threads,
            str(checkpoint),
            shards[k],
            str(parts / f"part-{k}.csv"),
            str(root if root is not None else common_folder(paths)),
            dict(predictor or {}),
            {
                **writer,
                "workers": workers // devices,
                "resume": True,
                "progress": bool(writer.get("progress", True)) and k == 0,
            },
        )  # fmt: skip
        for k in range(devices)
    ]
    context = torch.multiprocessing.get_context("spawn")
    procs = [context.Process(target=_run_rank, args=(job,)) for job in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    for job, p in zip(jobs, procs, strict=True):
        error = Path(job.part).with_suffix(".error")
        if error.is_file():
            message = error.read_text()
            error.unlink()
            raise UserError(message)
        if p.exitcode != 0:
            raise UserError(
                f"prediction process {job.rank} ({job.device}) ended with exit code "
                f"{p.exitcode}; its rows so far are kept: rerun with --resume to continue"
            )
    return _merge(out_csv, parts, names, devices, before, record)


def _merge(
    out_csv: Path,
    parts: Path,
    names: list[str],
    devices: int,
    before: int,
    record: dict[str, Any],
) -> InferSummary:
    """The parts' rows in source order into ``out_csv`` (atomically); the parts removed."""
    header: list[str] | None = None
    by_path: dict[str, list[str]] = {}
    for k in range(devices):
        rows = read_rows(parts / f"part-{k}.csv")[0]
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
    save_record(out_csv, {**record, "processes": devices})
    shutil.rmtree(parts)
    status = header.index("status")
    flags = header.index("in_distribution")
    return InferSummary(
        ok=sum(r[status] == "ok" for r in body),
        failed=sum(r[status] != "ok" for r in body),
        skipped=before,
        flagged=sum(r[flags] == "0" for r in body),
    )
