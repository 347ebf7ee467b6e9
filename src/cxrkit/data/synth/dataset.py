"""Sample phantom patients and write them as a dataset in the NIH ChestX-ray14 layout.

Sampling draws each patient's anatomy (outlines in the canonical frame of
:mod:`cxrkit.data.synth.phantom`), findings and follow-up images; writing renders them to
``OUT/images/<patient:08d>_<followup:03d>.png`` (8-bit grayscale, size x size),
``OUT/Data_Entry_2017.csv``, ``OUT/BBox_List_2017.csv`` (one box per drawn lesion),
``OUT/train_val_list.txt`` and ``OUT/test_list.txt`` (split by patient). Every patient has its
own random generator ``default_rng([seed, patient_id])``, so the files are byte-identical for a
seed whatever the number of worker processes.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cxrkit.data.synth.phantom import (
    FINDINGS,
    Acquisition,
    Anatomy,
    Box,
    Lesion,
    heart_outline,
    points,
    render,
    smooth,
)
from cxrkit.errors import UserError
from cxrkit.files import claim_folder

DATA_ENTRY = "Data_Entry_2017.csv"
BBOX_LIST = "BBox_List_2017.csv"
SPLITS = ("train_val_list.txt", "test_list.txt")
DATA_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
NO_FINDING = "No Finding"
TEST_FRACTION = 0.2

# Per patient: the chance of each finding and the chance it shows on each of the patient's
# images. Effusion follows Cardiomegaly; Atelectasis and Consolidation follow Effusion.
_ORDER = (
    "Cardiomegaly",
    "Effusion",
    "Atelectasis",
    "Consolidation",
    "Nodule",
    "Mass",
    "Pneumothorax",
)
_BASE = dict(zip(_ORDER, (0.062, 0.115, 0.085, 0.065, 0.075, 0.07, 0.08), strict=True))
_PERSIST = dict(zip(_ORDER, (0.95, 0.8, 0.75, 0.7, 0.95, 0.95, 0.7), strict=True))
_RAISE = {"Effusion": ("Cardiomegaly", 0.5), "Atelectasis": ("Effusion", 0.3)}
_RAISE["Consolidation"] = ("Effusion", 0.1)
_SIZES = {"Cardiomegaly": (0.55, 0.68), "Effusion": (0.05, 0.4), "Atelectasis": (0.22, 0.36)}
_SIZES |= {"Consolidation": (0.11, 0.18), "Nodule": (0.055, 0.08), "Mass": (0.1, 0.16)}
_SIZES["Pneumothorax"] = (0.14, 0.3)  # what each size means: see phantom.Lesion
_FOLLOWUPS = (0.35, 0.25, 0.18, 0.12, 0.10)  # probability of 1..5 images per patient
_PNG_FAST = [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
_PNG_FAST += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def _lungs(
    rng: np.random.Generator, chest: float, apex: float, cp: float, dome: float
) -> np.ndarray:
    """Both lung outlines, image left first: ``(2, 112, 2)``."""
    lungs = []
    for side, drop in ((-1, 0.0), (1, rng.uniform(0.02, 0.06))):
        med, low, a = rng.uniform(0.08, 0.12), dome + drop, apex
        top = [(med, a + 0.14), (0.18, a + 0.02), (0.3, a), (0.43, a + 0.05), (0.56, a + 0.2)]
        wall = [(chest - 0.07, a + 0.5), (chest, cp - 0.22), (chest + 0.01, cp)]
        base = [(chest - 0.12, (cp + low) / 2), (0.45, low), (0.28, low + 0.02)]
        medial = [(med + 0.03, low + 0.12), (med, 0.0), (med + 0.01, -0.3)]
        ctrl = np.array(top + wall + base + medial) + rng.normal(0, 0.012, (14, 2))
        lung = smooth(ctrl * [side, 1], 3)
        lungs.append(lung if side < 0 else lung[::-1])
    return np.array(lungs)


def _band(line: np.ndarray, width: float) -> np.ndarray:
    """Outline polygon ``(2m, 2)`` of a band of ``width`` around a centre line ``(m, 2)``."""
    tangent = np.gradient(line, axis=0)
    normal = tangent[:, ::-1] * [-1, 1] / np.linalg.norm(tangent, axis=1, keepdims=True)
    return np.concatenate([line + width / 2 * normal, (line - width / 2 * normal)[::-1]])


# Image-right bones of a chest of half-width 0.8, as outlines (m, 2): a posterior rib (from the
# spine), its fainter core, an anterior rib; the two clavicles (2, m, 2); a vertebral body.
_RIB = smooth(points("0.07 0 0.2 -0.05 0.38 -0.05 0.55 0 0.68 0.08 0.8 0.2 0.83 0.32"), 1, False)
_FRONT_RIB = smooth(points("0.83 0.32 0.7 0.36 0.5 0.45 0.25 0.55"), 1, False)
_RIBS = (_band(_RIB, 0.038), _band(_RIB, 0.02), _band(_FRONT_RIB, 0.05))
_CLAVICLE = _band(
    smooth(points("0.05 -0.6 0.2 -0.66 0.45 -0.69 0.65 -0.75 0.84 -0.84"), 2, False), 0.055
)
_CLAVICLES = np.array([_CLAVICLE * [-1, 1], _CLAVICLE])
_VERTEBRA = points("-0.065 -0.044 0.065 -0.044 0.07 0.044 -0.07 0.044")


def _bone_outlines(rng: np.random.Generator, chest: float, apex: float) -> tuple[np.ndarray, ...]:
    """Bone outlines (PA view), each ``(k, m, 2)``: posterior ribs, their fainter cores, anterior
    ribs (20 each: 10 per side), clavicles (2) and vertebral bodies (18)."""
    gaps = rng.uniform(0.1, 0.115) * np.linspace(0.9, 1.15, 10)
    tops = apex - rng.uniform(0.0, 0.06) + np.concatenate([[0], np.cumsum(gaps[:-1])])
    offsets = np.stack([np.zeros(10), tops], 1)[:, None, None]  # (10, 1, 1, 2)
    sides = np.array([[[-chest / 0.8, 1.0]], [[chest / 0.8, 1.0]]])  # (2, 1, 2)
    ribs = [(rib * sides + offsets).reshape(20, -1, 2) for rib in _RIBS]
    vertebrae = _VERTEBRA + np.stack([np.zeros(18), apex - 0.3 + 0.11 * np.arange(18)], 1)[:, None]
    return (*ribs, _CLAVICLES, vertebrae)


def _vessels(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Branching lung markings from both hila: four generations of 18 * 2**g segments, each
    generation ``(k, 3, 2)``."""
    side = np.repeat([-1.0, 1.0], 9)
    start = np.stack([side * 0.19, rng.uniform(-0.12, 0.08, 18)], 1)
    angle, length = rng.uniform(-1.3, 1.25, 18), rng.uniform(0.2, 0.28, 18)[:, None]
    generations = []
    for _ in range(4):
        bend = angle + rng.normal(0, 0.2, len(angle))
        mid = start + length / 2 * np.stack([side * np.cos(angle), np.sin(angle)], 1)
        end = mid + length / 2 * np.stack([side * np.cos(bend), np.sin(bend)], 1)
        generations.append(np.stack([start, mid, end], 1))
        start, side, length = np.repeat(end, 2, 0), np.repeat(side, 2), np.repeat(length, 2, 0)
        length *= 0.85
        angle = np.repeat(bend, 2) + np.tile([-0.45, 0.45], len(bend))
        angle += rng.normal(0, 0.15, len(angle))
    return tuple(generations)


def sample_anatomy(rng: np.random.Generator, female: bool) -> Anatomy:
    """Draw a random patient body."""
    chest, apex, cp = rng.uniform(0.74, 0.84), rng.uniform(-0.86, -0.76), rng.uniform(0.52, 0.66)
    dome, scale, body = cp - rng.uniform(0.22, 0.3), rng.uniform(0.93, 1.03), rng.uniform(1, 1.15)
    ranges = ((0.06, 0.12), (-0.2, -0.1), (0.36, 0.46), (36, 48))  # heart u, top, ratio, tilt
    hu, top, ratio, tilt = (float(rng.uniform(*r)) for r in ranges)
    heart = (hu, top, ratio, tilt)
    lungs, bones = _lungs(rng, chest, apex, cp, dome), _bone_outlines(rng, chest, apex)
    tissue, vessels = rng.uniform(0.4, 0.48), _vessels(rng)
    return Anatomy(scale, body, chest, apex, cp, dome, heart, tissue, female, lungs, bones, vessels)


def sample_acquisition(rng: np.random.Generator, anatomy: Anatomy, view: str) -> Acquisition:
    """Draw the pose and exposure of one image of ``anatomy`` in ``view`` ("PA" or "AP")."""
    ap = view == "AP"
    zoom = anatomy.scale * rng.normal(1.0, 0.015) * (1.04 if ap else 1.0)
    angle, shift = rng.normal(0, 2.0), (rng.normal(0, 0.025), rng.normal(0.02, 0.025))
    level, contrast = rng.normal(0, 0.04), rng.uniform(1.05, 1.4) * (0.92 if ap else 1.0)
    gamma, noise, marker = rng.uniform(0.85, 1.2), rng.uniform(0.012, 0.025), rng.random() < 0.5
    seed = int(rng.integers(2**31))
    return Acquisition(view, zoom, angle, shift, level, contrast, gamma, noise, bool(marker), seed)


def _inside(anatomy: Anatomy, u: float, v: float, margin: float) -> bool:
    """Whether canonical ``(u, v)`` lies in a lung at least ``margin`` from its edge and clear
    of the largest heart a Cardiomegaly could draw."""
    lung = anatomy.lungs[int(u > 0)].astype(np.float32)
    heart = heart_outline(anatomy, 0.7, "AP").astype(np.float32)
    in_lung = cv2.pointPolygonTest(lung, (u, v), True) > margin
    return in_lung and cv2.pointPolygonTest(heart, (u, v), True) < -margin


def sample_lesion(rng: np.random.Generator, name: str, anatomy: Anatomy) -> Lesion:
    """Draw the placement, size and contrast of finding ``name`` in ``anatomy``."""
    size = rng.uniform(*_SIZES[name])
    u, v = float(rng.choice([-1, 1])), 0.0
    if name in ("Nodule", "Mass", "Consolidation", "Atelectasis"):
        top = {"Atelectasis": anatomy.dome - 0.6, "Consolidation": anatomy.apex + 0.25}
        margin = 0.06 if name in top else size + 0.02
        for _ in range(200):  # rejection sampling of a lung position; the fallback is mid-lung
            u = rng.choice([-1, 1]) * rng.uniform(0.15, anatomy.chest)
            low = anatomy.dome - (0.25 if name == "Atelectasis" else 0.08)  # above most fluid
            v = rng.uniform(top.get(name, anatomy.apex + 0.1), low)
            if _inside(anatomy, u, v, margin):
                break
        else:
            u, v = np.sign(u) * 0.5 * anatomy.chest, anatomy.dome - 0.5
    side = int(rng.choice([-1, 1, 0], p=[0.4, 0.4, 0.2])) if name == "Effusion" else np.sign(u)
    strength, shape_seed = rng.uniform(0.8, 1.25), int(rng.integers(2**31))
    return Lesion(name, int(side), float(u), float(v), float(size), strength, shape_seed)


@dataclass
class SynthSummary:
    """What :func:`generate_dataset` wrote; ``prevalence`` is the fraction of images with each
    finding, plus "No Finding"."""

    out: Path
    n_patients: int
    n_images: int
    size: int
    seconds: float
    prevalence: dict[str, float]


@dataclass(frozen=True)
class Study:
    """One image of a patient: its metadata, acquisition and the lesions to draw."""

    name: str
    followup: int
    age: int
    view: str
    acquisition: Acquisition
    lesions: tuple[Lesion, ...]


@dataclass(frozen=True)
class Patient:
    """One patient: id, gender, anatomy and 1-5 studies sharing that anatomy."""

    pid: int
    gender: str
    anatomy: Anatomy
    studies: tuple[Study, ...]


def sample_patient(seed: int, pid: int) -> Patient:
    """Draw patient ``pid`` (from 1) of dataset ``seed``: anatomy, findings and follow-ups."""
    rng = np.random.default_rng([seed, pid])
    gender = "F" if rng.random() < 0.45 else "M"
    anatomy = sample_anatomy(rng, female=gender == "F")
    has: dict[str, bool] = {}
    for name, p in _BASE.items():
        cause, extra = _RAISE.get(name, ("", 0.0))
        has[name] = bool(rng.random() < p + extra * has.get(cause, False))
    lesions = {name: sample_lesion(rng, name, anatomy) for name in FINDINGS if has[name]}
    n_studies = int(rng.choice(len(_FOLLOWUPS), p=_FOLLOWUPS)) + 1
    age = int(rng.integers(18, 91 - 2 * n_studies))
    studies = []
    for k in range(n_studies):
        view = "AP" if rng.random() < 0.3 else "PA"
        acquisition = sample_acquisition(rng, anatomy, view)
        shown = tuple(les for name, les in lesions.items() if rng.random() < _PERSIST[name])
        studies.append(Study(f"{pid:08d}_{k:03d}.png", k, age, view, acquisition, shown))
        age += int(rng.integers(1, 3))
    return Patient(pid, gender, anatomy, tuple(studies))


def labels_of(boxes: list[Box]) -> list[str]:
    """The finding labels of an image from its drawn boxes, in :data:`FINDINGS` order."""
    drawn = {box.label for box in boxes}
    return [name for name in FINDINGS if name in drawn] or [NO_FINDING]


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an ``(h, w)`` uint8 image (fast settings: Huffman coding, Sub filter)."""
    ok, png = cv2.imencode(".png", image, _PNG_FAST)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


def _write_patient(task: tuple[int, int, int, str]) -> tuple[list[str], list[str], list[str]]:
    """Draw and write one patient's PNGs; returns its image names, Data_Entry and BBox rows."""
    seed, pid, size, images_dir = task
    patient = sample_patient(seed, pid)
    spacing = f"{0.143 * 1024 / size:.3f}"
    names, entries, bboxes = [], [], []
    for study in patient.studies:
        image, boxes = render(patient.anatomy, study.acquisition, study.lesions, size)
        (Path(images_dir) / study.name).write_bytes(encode_png(image))
        names.append(study.name)
        entries.append(
            f"{study.name},{'|'.join(labels_of(boxes))},{study.followup},{pid},"
            f"{study.age},{patient.gender},{study.view},{size},{size},{spacing},{spacing}"
        )
        bboxes += [f"{study.name},{b.label},{b.x:.1f},{b.y:.1f},{b.w:.1f},{b.h:.1f}" for b in boxes]
    return names, entries, bboxes


def _init_worker() -> None:
    """One OpenCV thread per worker process: the workers are the parallelism."""
    cv2.setNumThreads(1)


def _prepare(out: Path, overwrite: bool) -> None:
    """Make ``out`` ready: refuse a non-empty folder unless ``overwrite``, then remove what a
    previous run wrote (other files are left alone)."""
    claim_folder(out, "phantom dataset", overwrite=overwrite)
    (out / "images").mkdir(parents=True, exist_ok=True)


def generate_dataset(
    out: str | Path,
    *,
    n_patients: int = 300,
    size: int = 256,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> SynthSummary:
    """Write ``n_patients`` phantom patients (1-5 images each, ``size`` x ``size`` px) to ``out``
    in NIH ChestX-ray14 layout, with ``workers`` processes; returns a :class:`SynthSummary`."""
    if n_patients < 4:
        raise UserError(f"n_patients must be at least 4 (for a train/test split), got {n_patients}")
    if size < 64:
        raise UserError(f"image size must be at least 64 px, got {size}")
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    out = Path(out)
    _prepare(out, overwrite)
    start = time.perf_counter()
    tasks = [(seed, pid, size, str(out / "images")) for pid in range(1, n_patients + 1)]
    names, entries, bboxes = [], [], []
    bar = tqdm(
        total=n_patients, desc="synth", unit="patient", file=sys.stderr, disable=not progress
    )
    with _results(tasks, workers) as results:
        for patient_names, patient_entries, patient_boxes in results:
            names.append(patient_names)
            entries += patient_entries
            bboxes += patient_boxes
            bar.update()
    bar.close()
    (out / DATA_ENTRY).write_text("\n".join([DATA_HEADER, *entries]) + "\n")
    (out / BBOX_LIST).write_text("\n".join([BBOX_HEADER, *bboxes]) + "\n")
    order = np.random.default_rng([seed, n_patients, 2020]).permutation(n_patients)
    test = set(order[: max(1, round(TEST_FRACTION * n_patients))].tolist())
    for filename, in_test in zip(SPLITS, (False, True), strict=True):
        chosen = [n for i, group in enumerate(names) if (i in test) == in_test for n in group]
        (out / filename).write_text("".join(f"{n}\n" for n in chosen))
    counts = dict.fromkeys((*FINDINGS, NO_FINDING), 0)
    for row in entries:
        for label in row.split(",")[1].split("|"):
            counts[label] += 1
    prevalence = {k: c / len(entries) for k, c in counts.items()}
    seconds = time.perf_counter() - start
    return SynthSummary(out, n_patients, len(entries), size, seconds, prevalence)


@contextmanager
def _results(
    tasks: list[tuple[int, int, int, str]], workers: int
) -> Iterator[Iterator[tuple[list[str], list[str], list[str]]]]:
    """Each patient's result in patient order: in this process for one worker, else from a
    pool of spawned processes."""
    if workers == 1:
        yield map(_write_patient, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker) as pool:
        yield pool.imap(_write_patient, tasks, chunksize=2)
