"""``cxrkit infer``: many images -> one CSV row each, streamed, resumable, nothing lost.

Sources: what :func:`cxrkit.deploy.sources.resolve_sources` lists (a file, a folder, a glob,
a ``.txt`` or ``.csv`` list). Images are decoded and letterboxed in low-priority background threads
(or worker processes) while the model runs on the previous batch. An unreadable file gets a row
with its error and the run goes on. Rows are flushed batch by batch, so an interrupted run
keeps what it wrote and ``--resume`` continues without redoing or duplicating rows.

CSV columns: ``path``, ``image_id`` (the path relative to the source root, ``/``-separated:
``patient1/study1/view1_frontal.jpg``, so that images with the same file name in different
folders stay apart), ``status`` (``ok`` or ``error: <reason>``), ``modality`` (a DICOM's
Modality, e.g. ``DX``; empty for PNG/JPEG; a DICOM that is not a radiograph is an error row
unless allowed), [requested DICOM tags],
``prob_<finding>`` (calibrated when the model card has a calibration), ``call_<finding>``
(0/1 at the card's thresholds), ``findings`` (the positive ones, ``|``-separated),
``ood_score`` and ``in_distribution`` (1/0) of the input gate (:mod:`cxrkit.deploy.gate`;
``inf`` for a structural failure; both empty for unreadable files and for a model without a
gate). With ``refuse_ood`` a flagged image becomes an error row ``error: outside the training
distribution (<reasons>)`` that keeps its two gate cells.
No patient identifier is written unless asked for with ``dicom_tags``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import os
import sys
import threading
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cxrkit.data.preprocess import Clahe, prepare_image
from cxrkit.deploy.backends import usable_cores
from cxrkit.deploy.gate import Verdict, refusal, structural_reasons
from cxrkit.deploy.jpeg_batch import JpegFile, batch_pixels, read_deferred, use_gpu_decode
from cxrkit.deploy.predictor import Predictor
from cxrkit.deploy.records import check_resume, infer_record, save_record
from cxrkit.errors import UserError, did_you_mean
from cxrkit.files import atomic_write_text
from cxrkit.io.images import read_xray
from cxrkit.io.xray import RADIOGRAPH_MODALITIES, ImageReadError


@dataclass
class Item:
    """One decoded image (or its error) and the DICOM tags asked for."""

    index: int
    pixels: np.ndarray | None
    error: str | None
    tags: dict[str, str] = field(default_factory=dict)
    modality: str | None = None
    checks: list[str] = field(default_factory=list)  # the input gate's structural reasons
    jpeg: JpegFile | None = None  # to be decoded in a batch (jpeg_batch.batch_pixels)


class _Decode(Dataset):
    """Reads and letterboxes image ``i`` (in a worker process when the loader has workers);
    DICOMs of a modality outside ``modalities`` are refused (None: any). With ``checks`` the
    input gate's structural checks run on the decoded file; ``defer_jpeg``: see jpeg_batch."""

    def __init__(
        self,
        paths: Sequence[Path],
        size: int,
        clahe: Clahe | None,
        tags: Sequence[str],
        modalities: Collection[str] | None = RADIOGRAPH_MODALITIES,
        checks: bool = False,
        defer_jpeg: bool = False,
    ):
        self.paths, self.size, self.clahe, self.tags = list(paths), size, clahe, tuple(tags)
        self.modalities, self.checks = modalities, checks
        self.read = read_deferred if defer_jpeg else read_xray

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item:
        try:
            xray = self.read(self.paths[i], modalities=self.modalities)
        except ImageReadError as err:
            return Item(i, None, err.reason)
        if isinstance(xray, JpegFile):
            return Item(i, None, None, jpeg=xray)
        tags = _dicom_tags(self.paths[i], self.tags) if self.tags and xray.format == "DICOM" else {}
        pixels = prepare_image(xray.pixels, self.size, self.clahe)[None]
        checks = structural_reasons(xray) if self.checks else []
        return Item(i, pixels, None, tags, xray.modality, checks)


def check_dicom_tags(names: Sequence[str]) -> None:
    """A UserError with the closest keywords for a name that is not a DICOM keyword."""
    from pydicom.datadict import keyword_dict

    for name in names:
        if name not in keyword_dict:
            known = [k for k in keyword_dict if k]
            raise did_you_mean(name, known, what="DICOM keyword in --dicom-tags")


def _dicom_tags(path: Path, names: Sequence[str]) -> dict[str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=list(names))
    return {name: str(ds.get(name, "")) for name in names}


@dataclass
class Prediction:
    """One file's result: probabilities ``(C,)`` or the error that prevented them."""

    path: str
    probs: np.ndarray | None
    error: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    modality: str | None = None  # the DICOM Modality; None for PNG/JPEG and unread files
    gate: Verdict | None = None  # None: unread, or the model has no input gate


def predict_paths(
    predictor: Predictor,
    paths: Sequence[Path],
    *,
    workers: int = 0,
    dicom_tags: Sequence[str] = (),
    progress: bool = False,
    modalities: Collection[str] | None = RADIOGRAPH_MODALITIES,
    jpeg_batch: bool = False,
) -> Iterator[Prediction]:
    """Predictions for ``paths`` in order; decoding runs ahead of the model (see
    :func:`decoded_batches`). A DICOM of a modality outside ``modalities`` (None: any) gets
    an error naming its modality. With an input gate in the card each prediction carries its
    :class:`~cxrkit.deploy.gate.Verdict` (features from the same forward pass). ``jpeg_batch``:
    JPEGs decoded in batches on the predictor's device (:mod:`~cxrkit.deploy.jpeg_batch`)."""
    checks, size, clahe = predictor.gate is not None, predictor.letterbox_size, predictor.clahe
    dataset = _Decode(paths, size, clahe, dicom_tags, modalities, checks, jpeg_batch)
    bar = tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress)
    with bar:
        for items in decoded_batches(dataset, predictor.batch_size, workers):
            good, pixels = batch_pixels(items, size, clahe, checks, predictor.device)
            probs, verdicts = (
                predictor.predict_gated(pixels, [it.checks for it in good])
                if good
                else (np.zeros((0, len(predictor.findings))), [])
            )
            by_index = {it.index: (p, v) for it, p, v in zip(good, probs, verdicts, strict=True)}
            for it in items:
                path, (probs, verdict) = str(paths[it.index]), by_index.get(it.index, (None, None))
                yield Prediction(path, probs, it.error, it.tags, it.modality, verdict)
            bar.update(len(items))


#: decoding threads at most (``workers=0``); each also holds the GIL for part of every read.
#: Only 2 threads (2 cores) were measured; the cap is a guess, not a measured optimum.
MAX_DECODE_THREADS = 4


def lower_priority() -> None:
    """Give the calling thread the lowest CPU priority (nice 19) where the OS allows it per thread
    (Linux); elsewhere do nothing, as ``setpriority`` there would renice the whole process."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _lower_worker_priority(_: int) -> None:
    """DataLoader ``worker_init_fn``: decoding processes yield the cores to the model."""
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(19)


def decoded_batches(
    dataset: _Decode,
    batch_size: int,
    workers: int,
    *,
    threads: int | None = None,
    low_priority: bool = True,
) -> Iterator[list[Item]]:
    """Lists of up to ``batch_size`` decoded :class:`Item` in order, decoded ahead of use: in
    ``workers`` spawned processes, or with ``workers=0`` in background threads, one per usable
    core (at most :data:`MAX_DECODE_THREADS`), each a batch ahead (OpenCV's decoders and resizes
    release the GIL, so threads overlap the model without the start-up and copying cost of
    processes, the faster choice on few cores).

    Decoding threads and processes run at the lowest CPU priority: they take the cores the model
    leaves idle (between its operators, and while it waits for this batch) instead of pre-empting
    its threads in the middle of a parallel operator, which stalls the other model threads. On 2
    cores this raised end-to-end images/s by ~15% (docs/benchmarks.md; ``threads`` and
    ``low_priority`` are there for that comparison, benchmarks/decode_ab.py)."""
    if workers:
        yield from DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=list,
            prefetch_factor=4,
            multiprocessing_context="spawn",
            worker_init_fn=_lower_worker_priority if low_priority else None,
        )
        return

    def decode(start: int) -> list[Item]:
        return [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]

    threads = threads or min(usable_cores(), MAX_DECODE_THREADS)
    starts = iter(range(0, len(dataset), batch_size))
    initializer = lower_priority if low_priority else None
    with ThreadPoolExecutor(threads, "cxrkit-decode", initializer=initializer) as pool:
        ahead = deque(pool.submit(decode, s) for s in itertools.islice(starts, threads + 1))
        while ahead:
            batch = ahead.popleft().result()
            following = next(starts, None)
            if following is not None:
                ahead.append(pool.submit(decode, following))
            yield batch


def check_refuse_ood(predictor: Predictor, refuse_ood: bool) -> None:
    """``refuse_ood`` needs a gate: refusing nothing would look the same as refusing nothing
    flagged."""
    if refuse_ood and predictor.gate is None:
        raise UserError(
            "--refuse-ood needs an input gate in the model card; fit one with "
            "`cxrkit gate --checkpoint CKPT --data PREP`"
        )


def check_output(out_csv: Path, paths: Sequence[Path]) -> None:
    """Refuse an ``out_csv`` that is one of the input images, or an existing file that is not
    a cxrkit predictions CSV (an output never replaces an input or a file cxrkit did not
    write, whatever ``--overwrite`` says)."""
    target = out_csv.resolve()
    if any(Path(p).name == target.name and Path(p).resolve() == target for p in paths):
        raise UserError(f"--out {out_csv} is one of the input images; write the CSV elsewhere")
    if out_csv.is_dir():
        raise UserError(f"--out {out_csv} is a folder; give a .csv file path")
    if out_csv.is_file():
        with out_csv.open("rb") as fh:
            first = fh.readline(4096)
        if not first.startswith(b"path,image_id,status"):
            raise UserError(
                f"{out_csv} exists and is not a cxrkit predictions CSV (its first line is not "
                "'path,image_id,status,...'); refusing to replace or extend it"
            )


def read_rows(path: Path) -> tuple[list[list[str]], bool]:
    """The rows of a predictions CSV that a kill did not cut short, and whether one was
    (its last line without a newline); ``([], False)`` for a missing file."""
    if not path.is_file():
        return [], False
    with path.open(newline="") as fh:
        text = fh.read()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    cut = bool(text) and not text.endswith("\n")
    return (rows[:-1] if cut else rows), cut


def resume_rows(out_csv: Path, header: list[str], *, retry_errors: bool = False) -> set[str]:
    """The paths already predicted in ``out_csv``, after making it whole: a half-written last
    row (a kill mid-write) is dropped so that its image is predicted again, and with
    ``retry_errors`` so are the error rows. The file is rewritten atomically when changed."""
    rows, cut = read_rows(out_csv)
    if not rows or rows[0] != header:
        raise UserError(
            f"{out_csv} was written with other columns (another model or --dicom-tags); "
            "resume into the same settings or a new file"
        )
    body = [r for r in rows[1:] if len(r) == len(header)]
    if retry_errors:
        body = [r for r in body if r[2] == "ok"]
    if cut or len(body) != len(rows) - 1:
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerows([header, *body])
        atomic_write_text(out_csv, buffer.getvalue())
    return {r[0] for r in body}


def common_folder(paths: Sequence[Path]) -> Path:
    """The deepest folder that holds every one of ``paths`` (``.`` for none)."""
    folders = [os.path.abspath(Path(p).parent) for p in paths]
    return Path(os.path.commonpath(folders)) if folders else Path(".")


def image_id_of(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` with ``/`` separators; ``path`` itself when outside it."""
    absolute, base = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if absolute.is_relative_to(base):
        return absolute.relative_to(base).as_posix()
    return Path(path).as_posix()


@dataclass
class InferSummary:
    ok: int
    failed: int  # error rows: unreadable, or refused by the input gate (refuse_ood)
    skipped: int  # already in the CSV (resume)
    flagged: int = 0  # flagged by the input gate (refused or not)


def write_predictions(
    predictor: Predictor,
    paths: Sequence[Path],
    out_csv: str | Path,
    *,
    workers: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    dicom_tags: Sequence[str] = (),
    progress: bool = True,
    root: str | Path | None = None,
    retry_errors: bool = False,
    modalities: Collection[str] | None = RADIOGRAPH_MODALITIES,
    refuse_ood: bool = False,
    gpu_decode: bool | None = None,
) -> InferSummary:
    """Stream one CSV row per image to ``out_csv`` (columns in the module docstring).

    ``refuse_ood``: images the input gate flags become error rows (a UserError when the model
    has no gate: refusing nothing would look the same as refusing nothing flagged).
    ``gpu_decode``: JPEGs decoded in batches on the GPU (None: on CUDA; True off CUDA: a
    UserError; :mod:`cxrkit.deploy.jpeg_batch`).

    ``root``: the folder image ids are relative to; None: the deepest folder holding all
    ``paths``. A path outside ``root`` keeps its own path as its id. ``resume`` continues a
    CSV this function wrote (:func:`resume_rows`; ``retry_errors`` redoes its error rows);
    ``overwrite`` replaces only such a CSV, and never one of the inputs (:func:`check_output`).
    """
    out_csv = Path(out_csv)
    base = Path(root) if root is not None else common_folder(paths)
    names = predictor.findings
    header = ["path", "image_id", "status", "modality", *dicom_tags,
              *(f"prob_{f}" for f in names), *(f"call_{f}" for f in names),
              "findings", "ood_score", "in_distribution"]  # fmt: skip
    check_refuse_ood(predictor, refuse_ood)
    gpu = use_gpu_decode(gpu_decode, predictor.device)
    check_output(out_csv, paths)
    check_dicom_tags(dicom_tags)
    record = infer_record(predictor, modalities, dicom_tags, refuse_ood, gpu)
    done: set[str] = set()
    if out_csv.exists() and resume:
        check_resume(out_csv, record)
        done = resume_rows(out_csv, header, retry_errors=retry_errors)
    elif out_csv.exists() and not overwrite:
        raise UserError(f"{out_csv} exists; pass --resume to continue it or --overwrite")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    save_record(out_csv, record)
    todo = [p for p in paths if str(p) not in done]
    n_ok = n_failed = n_flagged = 0
    with out_csv.open("a" if done or (resume and out_csv.exists()) else "w", newline="") as fh:
        writer = csv.writer(fh)
        if fh.tell() == 0:
            writer.writerow(header)
        for k, pred in enumerate(
            predict_paths(
                predictor,
                todo,
                workers=workers,
                dicom_tags=dicom_tags,
                progress=progress,
                modalities=modalities,
                jpeg_batch=gpu,
            )
        ):
            path_cells = [pred.path, image_id_of(pred.path, base)]
            tag_cells = [pred.modality or "", *(pred.tags.get(t, "") for t in dicom_tags)]
            gate_cells = pred.gate.csv_cells() if pred.gate is not None else ["", ""]
            flagged = pred.gate is not None and not pred.gate.in_distribution
            n_flagged += flagged
            if pred.probs is None or (refuse_ood and flagged):
                n_failed += 1
                error = pred.error if pred.probs is None else refusal(pred.gate)  # type: ignore[arg-type]
                empty = [""] * (2 * len(names) + 1)
                writer.writerow([*path_cells, f"error: {error}", *tag_cells, *empty, *gate_cells])
            else:
                n_ok += 1
                calls = predictor.calls(pred.probs[None])[0]
                positive = "|".join(f for f, c in zip(names, calls, strict=True) if c)
                probs = [f"{p:.6f}" for p in pred.probs]
                writer.writerow(
                    [*path_cells, "ok", *tag_cells, *probs, *map(int, calls), positive, *gate_cells]
                )
            if k % predictor.batch_size == predictor.batch_size - 1:
                fh.flush()
    return InferSummary(ok=n_ok, failed=n_failed, skipped=len(paths) - len(todo), flagged=n_flagged)
