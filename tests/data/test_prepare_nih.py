"""NIH parsing and `prepare` against real NIH metadata/images and fake NIH trees."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrkit.data.datasets.base import get_dataset
from cxrkit.data.datasets.nih import parse, read_metadata
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.data.manifest import load_manifest
from cxrkit.data.prepare import prepare
from cxrkit.errors import UserError

HEADER_2017 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
)


def _fake_nih(
    root: Path, rows: list[tuple[str, str, int]], *, nested: bool = False, official: bool = True
) -> Path:
    """Write a small NIH tree: rows of (image name, labels, patient id); 2017-style CSV.
    The official test list holds patients 1 and 2."""
    folder = root / ("images_001/images" if nested else "images")
    folder.mkdir(parents=True)
    lines = [HEADER_2017]
    rng = np.random.default_rng(0)
    for name, labels, pid in rows:
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (40, 32), dtype=np.uint8))
        lines.append(f"{name},{labels},0,{pid},45,M,PA,2500,2048,0.143,0.143,\n")
    (root / "Data_Entry_2017.csv").write_text("".join(lines))
    if official:
        names = [r[0] for r in rows]
        (root / "test_list.txt").write_text("\n".join(n for n in names if n < "00000003"))
        (root / "train_val_list.txt").write_text("\n".join(n for n in names if n > "00000003"))
    return root


ROWS = [
    ("00000001_000.png", "Cardiomegaly|Effusion", 1),
    ("00000001_001.png", "No Finding", 1),
    ("00000002_000.png", "Pleural_Thickening", 2),
] + [(f"{p:08d}_000.png", "Nodule" if p % 3 else "No Finding", p) for p in range(10, 40)]


def test_real_nih_metadata_header_spans_two_columns(shared_data: Path) -> None:
    meta = read_metadata(shared_data / "nih-sample" / "Data_Entry_2017_v2020.csv.gz")
    assert len(meta) == 112_120
    assert {"OriginalImageWidth", "OriginalImageHeight", "PixelSpacingX"} <= set(meta.columns)
    assert meta.loc[0, "Image Index"] == "00000001_000.png"
    assert meta.loc[0, "OriginalImageWidth"] == "2682"
    assert meta.loc[0, "PixelSpacingY"].startswith("0.143")


def test_real_nih_sample_labels_match_the_official_csv(shared_data: Path) -> None:
    parsed = parse(shared_data / "nih-sample")
    assert len(parsed.table) == 118
    assert parsed.counts["missing_on_disk"] == 112_120 - 118
    with gzip.open(shared_data / "nih-sample" / "Data_Entry_2017_v2020.csv.gz", "rt") as fh:
        official = pd.read_csv(fh, usecols=[0, 1, 3], dtype=str).set_index("Image Index")
    for _, row in parsed.table.iterrows():
        labels = set(official.loc[row["image_id"], "Finding Labels"].split("|")) - {"No Finding"}
        labels = {x.replace("Pleural_Thickening", "Pleural Thickening") for x in labels}
        got = {f for f in NIH_FINDINGS if row[f] == 1}
        assert got == labels, row["image_id"]
        assert row["patient_id"] == str(int(official.loc[row["image_id"], "Patient ID"]))
    assert (parsed.table[list(NIH_FINDINGS)].sum() > 0).all(), "every finding present once"


def test_prepare_real_nih_sample(shared_data: Path, tmp_path: Path) -> None:
    m = prepare("nih", shared_data / "nih-sample", tmp_path / "prep", size=64, progress=False)
    assert m.header["counts"]["prepared"] == 118
    assert m.header["counts"]["failed_to_read"] == 0
    cache = m.cache()
    assert cache.shape == (118, 64, 64)
    assert cache.reshape(118, -1).std(axis=1).min() > 10, "every slot holds an image"
    assert set(m.table["split"]) == {"train", "val", "test"}


def test_official_split_nested_folders_and_2017_trailing_comma(tmp_path: Path) -> None:
    root = _fake_nih(tmp_path / "nih", ROWS, nested=True)
    m = prepare("nih", root, tmp_path / "prep", size=32, progress=False)
    t = m.table.set_index("image_id")
    assert t.loc["00000001_000.png", "split"] == "test"
    assert t.loc["00000001_001.png", "split"] == "test"
    assert set(t.loc[t.index > "00000003", "split"]) == {"train", "val"}
    assert t.loc["00000001_000.png", ["Cardiomegaly", "Effusion", "Nodule"]].tolist() == [1, 1, 0]
    assert t.loc["00000002_000.png", "Pleural Thickening"] == 1
    header = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    want = "official test; official train+val divided by patient (0.1 val)"
    assert header["split"]["policy"] == want
    assert set(header["split"]["patients_sha256"]) == {"train", "val", "test"}


def test_missing_images_are_counted_and_bad_images_listed(tmp_path: Path) -> None:
    root = _fake_nih(tmp_path / "nih", ROWS, official=False)
    (root / "images" / "00000010_000.png").unlink()
    (root / "images" / "00000011_000.png").write_bytes(b"not a png at all")
    m = prepare("nih", root, tmp_path / "prep", size=32, progress=False)
    assert m.header["counts"]["missing_on_disk"] == 1
    assert m.header["counts"]["failed_to_read"] == 1
    failed = pd.read_csv(tmp_path / "prep" / "failed_images.csv")
    assert failed["image_id"].tolist() == ["00000011_000.png"]
    assert "not an image" in failed["reason"].iloc[0]
    assert "00000011_000.png" not in set(m.table["image_id"])
    assert len(m.table) == len(ROWS) - 2


def test_prepare_refuses_to_overwrite_and_resumes_cache(tmp_path: Path) -> None:
    root = _fake_nih(tmp_path / "nih", ROWS)
    prepare("nih", root, tmp_path / "prep", size=32, progress=False)
    with pytest.raises(UserError, match="--overwrite"):
        prepare("nih", root, tmp_path / "prep", size=32, progress=False)
    m = prepare("nih", root, tmp_path / "prep", size=32, progress=False, overwrite=True)
    assert len(load_manifest(m.folder).table) == len(ROWS)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda r: None, "no NIH metadata"),
        (
            lambda r: (r / "Data_Entry_2017.csv").write_text("Image Index,Labels\nx.png,A\n"),
            "lacks the column",
        ),
    ],
)
def test_bad_layouts_name_the_problem(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    setup(root)
    with pytest.raises(UserError, match=message):
        parse(root)


def test_missing_folder_and_no_images_found(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        parse(tmp_path / "nowhere")
    root = _fake_nih(tmp_path / "nih", ROWS[:3])
    shutil.rmtree(root / "images")
    (root / "images").mkdir()
    with pytest.raises(UserError, match="none of the 3 images"):
        parse(root)


def test_registry_did_you_mean() -> None:
    assert get_dataset("nih").name == "nih"
    with pytest.raises(UserError, match="did you mean 'nih'"):
        get_dataset("nhi")


def test_clahe_is_baked_into_the_cache_and_recorded(phantom: Path, tmp_path: Path) -> None:
    from cxrkit.cli.parser import main
    from cxrkit.data.preprocess import Clahe, prepare_image
    from cxrkit.io import read_xray

    assert (
        main(
            [
                "prepare",
                "nih",
                "--root",
                str(phantom),
                "--out",
                str(tmp_path / "p"),
                "--size",
                "64",
                "--clahe",
                "3.0",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    m = load_manifest(tmp_path / "p")
    assert m.header["cache"]["clahe"] == {"clip_limit": 3.0, "tiles": 8}
    row = m.table.iloc[0]
    want = prepare_image(read_xray(row["path"]).pixels, 64, Clahe(3.0))
    np.testing.assert_array_equal(m.cache()[row["cache_index"]], want)
    plain = prepare_image(read_xray(row["path"]).pixels, 64)
    assert not np.array_equal(want, plain)


def test_interrupted_cache_build_resumes_only_with_the_same_inputs(tmp_path: Path) -> None:
    from cxrkit.data.cache import DONE, build_cache, cache_paths

    root = _fake_nih(tmp_path / "nih", ROWS)
    paths = sorted(str(p) for p in (root / "images").glob("*.png"))
    first = build_cache(paths, tmp_path / "c", size=16, progress=False)
    assert first.resumed == 0 and not first.failures
    _, state_file = cache_paths(tmp_path / "c", 16)
    state = np.memmap(state_file, dtype=np.uint8, mode="r+")
    state[5:] = 0  # as if the build had stopped after five images
    state.flush()
    again = build_cache(paths, tmp_path / "c", size=16, progress=False)
    assert again.resumed == 5
    assert (np.fromfile(state_file, dtype=np.uint8) == DONE).all()
    other = build_cache(paths[::-1], tmp_path / "c", size=16, progress=False)
    assert other.resumed == 0, "different inputs start over"


def test_spellings_of_one_finding_merge_and_foreign_labels_are_named() -> None:
    import pandas as pd

    from cxrkit.data.datasets.nih import labels_table

    labels = [" Cardiomegaly |Effusion", "Cardiomegaly", "Pleural_Thickening|Pleural Thickening",
              "Lung Opacity", "No Finding"]  # fmt: skip
    meta = pd.DataFrame(
        {
            "Finding Labels": labels,
            "Image Index": [f"{i}.png" for i in range(5)],
            "Patient ID": ["1", "2", "3", "4", "5"],
            "View Position": ["PA"] * 5,
            "Patient Gender": ["M"] * 5,
            "Patient Age": ["40"] * 5,
        }
    )
    with pytest.warns(UserWarning, match=r"not kept: Lung Opacity \(1 images\)"):
        table, conflicts, foreign = labels_table(meta)
    assert foreign == {"Lung Opacity": 1}
    with pytest.raises(UserError, match=r"not among NIH's 14 findings: Lung Opacity \(1 images\)"):
        labels_table(meta, strict=True)
    assert table["Cardiomegaly"].tolist() == [1, 1, 0, 0, 0]
    assert table["Pleural Thickening"].tolist() == [0, 0, 1, 0, 0]
    assert conflicts == 0
