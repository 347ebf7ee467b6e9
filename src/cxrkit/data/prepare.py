"""``cxrkit prepare``: raw dataset folder -> manifest + image cache.

Parse the dataset's own metadata (a registered parser), split patient-wise (the official
split when there is one), check for leakage, decode every image once into the cache, and
write the manifest with a report of what was done: counts, missing and failed images. The
parser's text metadata columns (``Parsed.metadata``, e.g. PadChest's ``scanner``) are kept in
the manifest and listed in its header's ``metadata``.

With ``--format litdata`` the decoded cache is then written as LitData shards
(:mod:`cxrkit.data.shards`) beside the manifest, in a local folder or under an object-store
URI, and the memmap is removed. Resuming and ``--overwrite`` behave as for the memmap: an
interrupted prepare resumes its decoding, a complete one is replaced only with
``--overwrite``, a folder (or prefix) cxrkit did not write is never touched.
"""

from __future__ import annotations

import datetime as dt
import shutil
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit import __version__
from cxrkit.data.cache import build_cache, cache_paths
from cxrkit.data.datasets.base import get_dataset
from cxrkit.data.manifest import (
    CACHE_FORMATS,
    CSV_NAME,
    HEADER_NAME,
    MEMMAP,
    Manifest,
    load_manifest,
    manifest_columns,
    write_manifest,
)
from cxrkit.data.preprocess import Clahe
from cxrkit.data.shards import FORMAT as LITDATA
from cxrkit.data.shards import SHARD_BYTES, SHARDS, write_shards
from cxrkit.data.splits import check_no_leakage, split_fingerprints, stratified_patient_split
from cxrkit.data.storage import (
    check_uri,
    delete,
    exists,
    is_empty,
    is_uri,
    join,
    local_dir,
    require_litdata,
    upload,
)
from cxrkit.errors import UserError, did_you_mean
from cxrkit.files import MARKER, claim_folder
from cxrkit.io.xray import RADIOGRAPH_MODALITIES

KIND = "prepared dataset"
FAILED_NAME = "failed_images.csv"


@dataclass
class SplitPolicy:
    """How to split: fractions of patients used when no official split exists, and the seed."""

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0


MIN_CACHE_SIZE, MAX_CACHE_SIZE = 32, 4096


def unique_images(table: pd.DataFrame, findings: list[str], root: str | Path) -> pd.DataFrame:
    """One row per image: rows repeating an image with the same labels are dropped (with a
    warning counting them); the same image with different labels is a UserError naming it."""
    repeated = table["image_id"].duplicated(keep=False)
    if not repeated.any():
        return table
    rows = table[repeated]
    labels = rows[["image_id", *findings]].fillna(-1)
    variants = labels.drop_duplicates().groupby("image_id").size()
    conflicting = variants[variants > 1]
    if len(conflicting):
        first = conflicting.index[0]
        raise UserError(
            f"{root}: image {first!r} is listed {int(rows['image_id'].eq(first).sum())} times "
            f"with different labels ({len(conflicting)} such image(s)); fix the metadata so "
            "each image has one row"
        )
    dropped = int(table["image_id"].duplicated().sum())
    warnings.warn(
        f"{dropped} repeated row(s) of images listed twice with the same labels were dropped",
        UserWarning,
        stacklevel=3,
    )
    return table.drop_duplicates("image_id").reset_index(drop=True)


def text_metadata(table: pd.DataFrame, metadata: Sequence[str]) -> pd.DataFrame:
    """``table`` with its ``metadata`` columns as stripped text, unknown (NaN, e.g. the rows of
    a part of the dataset that lacks the column) as ``""``; a parser declaring a column its
    table lacks is a UserError."""
    absent = [c for c in metadata if c not in table]
    if absent:
        raise UserError(f"the parsed table lacks its metadata column(s) {', '.join(absent)}")
    cleaned = {c: table[c].astype(object).where(table[c].notna(), "") for c in metadata}
    return table.assign(**{c: values.astype(str).str.strip() for c, values in cleaned.items()})


def check_policy(policy: SplitPolicy) -> None:
    """Fractions that leave training images: each in [0, 1), together below 1."""
    fractions = {"--val-fraction": policy.val_fraction, "--test-fraction": policy.test_fraction}
    for name, value in fractions.items():
        if not 0 <= value < 1:
            raise UserError(f"{name} must be in [0, 1), got {value}")
    if policy.val_fraction + policy.test_fraction >= 1:
        raise UserError(
            f"--val-fraction {policy.val_fraction} + --test-fraction {policy.test_fraction} "
            "leave no patient for training; keep their sum below 1"
        )


def check_cache_space(out: Path, n: int, size: int, copies: int = 1) -> None:
    """A UserError before writing when ``n`` cached ``size`` x ``size`` images do not fit on
    ``out``'s disk (with a 5% margin); ``copies=2``: the memmap and local shards together."""
    data_file, _ = cache_paths(out / "cache", size)
    written = data_file.stat().st_blocks * 512 if data_file.is_file() else 0  # a resumed build
    need = copies * n * size * size - written
    free = shutil.disk_usage(out).free
    if need * 1.05 > free:
        what = "the cache and its shards" if copies > 1 else "the cache"
        raise UserError(
            f"{what} of {n} images at {size} px need(s) {need / 2**30:.1f} GiB but "
            f"{out} has {free / 2**30:.1f} GiB free; use a smaller --size or another disk"
        )


def claim_remote(uri: str, marker: Path, *, overwrite: bool) -> None:
    """:func:`~cxrkit.files.claim_folder` for an object-store prefix: an empty one is marked
    (``marker`` uploaded), one marked by cxrkit is resumed or, when complete, replaced only
    with ``overwrite`` (its manifest and shards removed first); anything else is refused."""
    marked = exists(join(uri, MARKER))
    if not marked and not is_empty(uri):
        raise UserError(
            f"{uri} is not empty and holds objects cxrkit did not write (no {MARKER}); cxrkit "
            f"replaces only a cxrkit {KIND}: choose another --out, or empty it yourself"
        )
    if marked and exists(join(uri, HEADER_NAME)):
        if not overwrite:
            raise UserError(
                f"{uri} already holds a cxrkit {KIND}; choose another --out, pass --overwrite"
            )
        delete(join(uri, HEADER_NAME))  # incomplete until the new header is uploaded
        delete(join(uri, SHARDS))  # the old chunks and index (LitData lists 1000 a call)
    if not marked:
        upload(marker, join(uri, MARKER))


def assign_splits(
    table: pd.DataFrame, findings: list[str], policy: SplitPolicy
) -> tuple[np.ndarray, str]:
    """Split names for every row, and a description of how they were chosen.

    Rows with an ``official_split`` of ``train``/``val``/``test`` keep it; ``trainval`` rows
    are divided by patient into train and val (``val_fraction``); rows without an official
    split (no column, or ``""``) are drawn by patient into train/val/test, stratified over
    findings. Patients are never divided between the two groups (the leakage check runs later).
    """
    labels = table[findings].to_numpy(np.float32)
    val, test_f = policy.val_fraction, policy.test_fraction
    official = (
        table["official_split"].to_numpy(dtype=object)
        if "official_split" in table
        else np.full(len(table), "", dtype=object)
    )
    split = np.where(np.isin(official, ["train", "val", "test"]), official, "").astype(object)
    parts = []
    trainval = official == "trainval"
    if trainval.any():
        split[trainval] = stratified_patient_split(
            table.loc[trainval, "patient_id"],
            labels[trainval],
            {"train": 1 - val, "val": val},
            seed=policy.seed,
        )
        parts.append(f"official train+val divided by patient ({val:g} val)")
    if (split != "").any() and not trainval.all():
        parts.insert(
            0,
            "official "
            + "/".join(sorted(set(official[np.isin(official, ["train", "val", "test"])]))),
        )
    free = official == ""
    if free.any():
        fractions = {"train": 1 - val - test_f, "val": val, "test": test_f}
        split[free] = stratified_patient_split(
            table.loc[free, "patient_id"], labels[free], fractions, seed=policy.seed
        )
        parts.append(f"patient-wise, stratified over findings: {fractions}")
    return split, "; ".join(parts)


def prepare(
    dataset: str,
    root: str | Path,
    out: str | Path,
    *,
    size: int = 256,
    split: SplitPolicy | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    options: dict[str, Any] | None = None,
    clahe: Clahe | None = None,
    modalities: Collection[str] | None = RADIOGRAPH_MODALITIES,
    cache_format: str = MEMMAP,
    stage: str | Path | None = None,
    shard_bytes: int = SHARD_BYTES,
) -> Manifest:
    """Prepare ``root`` (a raw ``dataset`` folder) into ``out``; returns the loaded manifest.

    ``clahe`` bakes contrast-limited adaptive histogram equalisation into the cache (models
    trained on it apply the same at inference). ``options`` are the dataset's own options
    (see its :class:`~cxrkit.data.datasets.Option` list).
    An interrupted prepare resumes its cache when run again with the same arguments.
    Unreadable images are left out of the manifest and listed in ``failed_images.csv``.

    ``cache_format="litdata"``: the images go to ``out/shards`` as LitData chunks of about
    ``shard_bytes``; ``out`` may then be an ``s3://`` or ``gs://`` URI, the memmap being
    decoded in the local ``stage`` folder (default: under ``$CXRKIT_CACHE``).
    """
    spec = get_dataset(dataset)
    split = split or SplitPolicy()
    check_policy(split)
    if not MIN_CACHE_SIZE <= size <= MAX_CACHE_SIZE:
        raise UserError(
            f"--size must be {MIN_CACHE_SIZE}-{MAX_CACHE_SIZE} pixels (the cached square; chest "
            f"models train at 224-512), got {size}"
        )
    if cache_format not in CACHE_FORMATS:
        raise did_you_mean(cache_format, CACHE_FORMATS, what="--format")
    if cache_format == LITDATA:
        require_litdata("--format litdata (LitData shards)")
    remote = check_uri(str(out)) if is_uri(out) else None
    if remote and cache_format != LITDATA:
        raise UserError(
            f"--out {remote} is an object store: only --format litdata writes there (the "
            "memmap cache is a file on a local disk)"
        )
    if remote:  # the remote prefix decides what is complete; the stage always resumes
        out = Path(stage) if stage is not None else local_dir(remote, "stage")
        claim_folder(out, KIND, overwrite=overwrite, resume=not overwrite)
        (out / HEADER_NAME).unlink(missing_ok=True)
        claim_remote(remote, out / MARKER, overwrite=overwrite)
    else:
        # An interrupted prepare (marked folder, no manifest yet) resumes its cache.
        out = Path(out)
        complete = (out / HEADER_NAME).exists()
        claim_folder(out, KIND, overwrite=overwrite, resume=not complete)
    parsed = spec.parse(root, **(options or {}))
    columns = manifest_columns(parsed.findings, parsed.metadata)
    table = text_metadata(parsed.table.reset_index(drop=True), parsed.metadata)
    table = unique_images(table, parsed.findings, root)
    table["split"], split_desc = assign_splits(table, parsed.findings, split)
    empty = [s for s in ("train", "val") if not (table["split"] == s).any()]
    if empty:
        raise UserError(
            f"the split leaves no {' and no '.join(empty)} images ({split_desc}); lower "
            "--val-fraction / --test-fraction"
        )
    check_no_leakage(table)  # before hours of decoding, not after
    local_shards = cache_format == LITDATA and not remote  # memmap and shards side by side
    check_cache_space(out, len(table), size, copies=2 if local_shards else 1)
    table["cache_index"] = np.arange(len(table))
    built = build_cache(
        table["path"].tolist(),
        out / "cache",
        size=size,
        workers=workers,
        progress=progress,
        clahe=clahe,
        modalities=modalities,
    )
    failed = table.loc[list(built.failures)].assign(reason=list(built.failures.values()))
    failed[["image_id", "path", "reason"]].to_csv(out / FAILED_NAME, index=False)
    table = table.drop(index=list(built.failures)).drop(columns="official_split", errors="ignore")
    if table.empty:
        raise UserError(f"no image under {root} could be read; see {out / FAILED_NAME}")
    table = table[columns]
    header: dict[str, Any] = {
        "dataset": spec.name,
        "source_root": str(Path(root).resolve()),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cxrkit_version": __version__,
        "findings": parsed.findings,
        "metadata": parsed.metadata,
        "label_policy": parsed.label_policy,
        "options": options or {},
        "split": {
            "policy": split_desc,
            "seed": split.seed,
            "val_fraction": split.val_fraction,
            "test_fraction": split.test_fraction,
            "patients_sha256": split_fingerprints(table),
            "images": table["split"].value_counts().sort_index().to_dict(),
            "patients": table.groupby("split")["patient_id"].nunique().to_dict(),
        },
        "cache": {
            "file": str(built.file.relative_to(out)),
            "size": size,
            "n": built.n,
            "dtype": "uint8",
            "layout": "letterbox (aspect kept, zero padding)",
            "clahe": clahe.to_dict() if clahe else None,
        },
        "counts": {
            **parsed.counts,
            "failed_to_read": len(built.failures),
            "prepared": len(table),
        },
        "prevalence": {f: _nanmean(table[f]) for f in parsed.findings},
    }
    if cache_format == LITDATA:
        location = join(remote or out, SHARDS)
        written = write_shards(
            built.file,
            built.n,
            size,
            location,
            shard_bytes=shard_bytes,
            scratch=out / SHARDS,  # remote: chunks wait here for their upload
            progress=progress,
        )
        described = {k: v for k, v in header["cache"].items() if k != "file"}
        header["cache"] = {"format": LITDATA, "location": SHARDS, **described, **written}
    write_manifest(out, table, header)
    if cache_format == LITDATA:  # the shards hold the images now
        for file in (*cache_paths(out / "cache", size), built.file.with_suffix(".json")):
            file.unlink(missing_ok=True)
        if not any((out / "cache").iterdir()):
            (out / "cache").rmdir()
    if remote:
        for name in (CSV_NAME, FAILED_NAME, HEADER_NAME):  # the header last: complete
            upload(out / name, join(remote, name))
        return replace(load_manifest(out), location=remote)
    return load_manifest(out)


def _nanmean(col: pd.Series) -> float | None:
    value = float(np.nanmean(col.to_numpy(np.float32))) if col.notna().any() else float("nan")
    return None if np.isnan(value) else round(value, 6)
