"""Tests of the phantom chest X-ray generator (cxrkit.data.synth)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrkit.data.synth.dataset import (
    BBOX_HEADER,
    DATA_HEADER,
    generate_dataset,
    labels_of,
    sample_acquisition,
    sample_anatomy,
    sample_lesion,
    sample_patient,
)
from cxrkit.data.synth.lateral import render_lateral
from cxrkit.data.synth.phantom import FINDINGS, render
from cxrkit.errors import UserError

SIZE = 96
FILES = ("Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt", "test_list.txt")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dataset: 8 patients at 96 px, seed 0, one worker."""
    out = tmp_path_factory.mktemp("synth") / "out"
    summary = generate_dataset(out, n_patients=8, size=SIZE, seed=0, progress=False)
    assert summary.out == out and summary.n_patients == 8 and summary.size == SIZE
    assert summary.n_images == len(list((out / "images").iterdir())) >= 8
    assert set(summary.prevalence) == {*FINDINGS, "No Finding"}
    return out


def read_rows(path: Path) -> tuple[str, list[list[str]]]:
    """The header line and the data rows of a CSV file."""
    header, *lines = path.read_text().splitlines()
    return header, list(csv.reader(lines))


def all_bytes(out: Path) -> dict[str, bytes]:
    """Every file the generator wrote, by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_data_entry_format(dataset: Path) -> None:
    header, rows = read_rows(dataset / "Data_Entry_2017.csv")
    assert header == DATA_HEADER
    ages: dict[str, list[int]] = {}
    for row in rows:
        assert len(row) == 11
        name, labels, followup, pid, age, gender, view, w, h, sx, sy = row
        assert name == f"{int(pid):08d}_{int(followup):03d}.png"
        names = labels.split("|")
        assert names == ["No Finding"] or names == [n for n in FINDINGS if n in names]
        assert 18 <= int(age) <= 90 and gender in ("M", "F") and view in ("PA", "AP")
        assert (w, h) == (str(SIZE), str(SIZE)) and float(sx) == float(sy) > 0
        ages.setdefault(pid, []).append(int(age))
        image = cv2.imread(str(dataset / "images" / name), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE)
    assert sorted(ages, key=int) == [str(i) for i in range(1, 9)]
    assert all(a == sorted(a) for a in ages.values())


def test_boxes_match_labels(dataset: Path) -> None:
    _, rows = read_rows(dataset / "Data_Entry_2017.csv")
    header, boxes = read_rows(dataset / "BBox_List_2017.csv")
    assert header == BBOX_HEADER
    boxed: dict[str, set[str]] = {}
    for name, label, *xywh in boxes:
        x, y, w, h = map(float, xywh)
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= SIZE and y + h <= SIZE
        boxed.setdefault(name, set()).add(label)
    for name, labels, *_ in rows:
        assert boxed.get(name, set()) == set(labels.split("|")) - {"No Finding"}
    assert set(boxed) <= {row[0] for row in rows}


def test_split_by_patient(dataset: Path) -> None:
    train = (dataset / "train_val_list.txt").read_text().split()
    test = (dataset / "test_list.txt").read_text().split()
    images = sorted(p.name for p in (dataset / "images").iterdir())
    assert sorted(train + test) == images and train and test
    assert not {n[:8] for n in train} & {n[:8] for n in test}


def test_deterministic_whatever_workers(dataset: Path, tmp_path: Path) -> None:
    generate_dataset(tmp_path / "w2", n_patients=8, size=SIZE, seed=0, workers=2, progress=False)
    assert all_bytes(tmp_path / "w2") == all_bytes(dataset)
    generate_dataset(tmp_path / "s1", n_patients=8, size=SIZE, seed=1, progress=False)
    other = all_bytes(tmp_path / "s1")
    assert other["Data_Entry_2017.csv"] != all_bytes(dataset)["Data_Entry_2017.csv"]
    assert other["images/00000001_000.png"] != all_bytes(dataset)["images/00000001_000.png"]


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    for overwrite in (False, True):  # a folder cxrkit did not make is never replaced
        with pytest.raises(UserError, match="choose another --out") as error:
            generate_dataset(out, n_patients=4, size=64, progress=False, overwrite=overwrite)
        assert str(out) in str(error.value) and "did not write" in str(error.value)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    ours = tmp_path / "phantom"
    generate_dataset(ours, n_patients=4, size=64, progress=False)
    with pytest.raises(UserError, match="already holds a cxrkit phantom dataset"):
        generate_dataset(ours, n_patients=4, size=64, progress=False)
    generate_dataset(ours, n_patients=4, size=64, seed=3, overwrite=True, progress=False)
    assert len((ours / "Data_Entry_2017.csv").read_text().splitlines()) - 1 == len(
        list((ours / "images").iterdir())
    )


@pytest.mark.parametrize("kwargs", [{"n_patients": 3}, {"size": 32}, {"workers": 0}])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(UserError):
        generate_dataset(tmp_path / "out", progress=False, **kwargs)


@pytest.mark.parametrize("name", FINDINGS)
def test_lesion_changes_pixels_inside_its_box(name: str) -> None:
    rng = np.random.default_rng(7)
    for i in range(6):
        anatomy = sample_anatomy(rng, female=i % 2 == 0)
        acquisition = sample_acquisition(rng, anatomy, "AP" if i % 3 == 0 else "PA")
        lesion = sample_lesion(rng, name, anatomy)
        plain, no_boxes = render(anatomy, acquisition, [], 128)
        image, boxes = render(anatomy, acquisition, [lesion], 128)
        assert no_boxes == [] and boxes and {b.label for b in boxes} == {name}
        inside = np.zeros(plain.shape, bool)
        for b in boxes:
            inside[int(b.y) : int(np.ceil(b.y + b.h)), int(b.x) : int(np.ceil(b.x + b.w))] = True
        diff = np.abs(image.astype(np.float32) - plain)
        assert diff[inside].mean() > 4  # visible: several grey levels on average
        assert diff[inside].sum() > 0.7 * diff.sum()  # and drawn where its box says
        if name == "Cardiomegaly":  # box width over thorax width (2 * chest in pixels)
            assert boxes[0].w / (anatomy.chest * acquisition.zoom * 128) > 0.5


def test_prevalence_cooccurrence_and_persistence() -> None:
    labels, persisted, repeats = [], 0, 0
    for pid in range(1, 241):
        patient = sample_patient(11, pid)
        previous: set[str] = set()
        for k, study in enumerate(patient.studies):
            _, boxes = render(patient.anatomy, study.acquisition, study.lesions, 64)
            found = set(labels_of(boxes)) - {"No Finding"}
            if k and previous:
                repeats += len(previous)
                persisted += len(previous & found)
            previous = found
            labels.append(found)
    n = len(labels)
    counts = Counter(label for found in labels for label in found)
    assert 0.5 < sum(not found for found in labels) / n < 0.68
    for name in FINDINGS:
        assert 0.02 < counts[name] / n < 0.2, (name, counts[name] / n)
    with_cardio = [found for found in labels if "Cardiomegaly" in found]
    assert sum("Effusion" in f for f in with_cardio) / len(with_cardio) > 2 * counts["Effusion"] / n
    assert persisted / repeats > 0.6


def midline_contrast(image: np.ndarray) -> float:
    """(median of the middle column - median of the fields either side of it) / 255, over
    rows 25-65%: the mediastinum and spine of a frontal film make it clearly positive."""
    h, w = image.shape
    rows = image[int(0.25 * h) : int(0.65 * h)]
    middle = rows[:, int(0.42 * w) : int(0.58 * w)]
    sides = np.hstack(
        [rows[:, int(0.18 * w) : int(0.35 * w)], rows[:, int(0.65 * w) : int(0.82 * w)]]
    )
    return (float(np.median(middle)) - float(np.median(sides))) / 255


def column_band(image: np.ndarray, start: float, stop: float) -> np.ndarray:
    """The mean of each column over rows 30-55% (mid-chest), for the columns from ``start`` to
    ``stop`` (fractions of the width): ``(k,)`` float."""
    h, w = image.shape
    return image[int(0.3 * h) : int(0.55 * h), int(start * w) : int(stop * w)].mean(0)


def test_render_lateral_is_a_deterministic_gray_film() -> None:
    import cxrkit.data.synth as synth

    assert synth.render_lateral is render_lateral  # exported from the package
    for size in (64, 96, 257):
        image = render_lateral(3, size)
        assert image.shape == (size, size) and image.dtype == np.uint8
        assert image.std() > 34  # a film, not a blank: the gate's structural checks pass it
    np.testing.assert_array_equal(render_lateral(5, 128), render_lateral(5, 128))
    assert np.abs(render_lateral(5, 128).astype(int) - render_lateral(6, 128)).mean() > 2
    with pytest.raises(ValueError, match="at least 32"):
        render_lateral(0, 16)


def test_lateral_differs_from_frontal_films() -> None:
    """A frontal film's brightest column is the middle (mediastinum, spine); a lateral's middle
    crosses the dark superimposed lung field, its spine runs down the posterior (right) side and
    air lies in front of the chest and behind the back."""
    laterals = [render_lateral(seed, 128) for seed in range(20)]
    frontals = []
    for pid in range(1, 21):
        patient = sample_patient(4, pid)
        study = patient.studies[0]
        frontals.append(render(patient.anatomy, study.acquisition, study.lesions, 128)[0])
    assert min(midline_contrast(f) for f in frontals) > 0.25
    assert max(midline_contrast(lat) for lat in laterals) < 0.15
    for image in laterals:
        h, w = image.shape
        spine = column_band(image, 0.68, 0.86).max()  # the vertebral column, posterior
        assert spine > column_band(image, 0.56, 0.66).mean() + 8  # the retrocardiac space
        assert spine > column_band(image, 0.84, 0.92).min() + 12  # the lung behind the spine
        assert (image[: h // 8, : w // 8] < 20).mean() > 0.5  # air in front of the neck
