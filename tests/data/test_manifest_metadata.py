"""Dataset metadata columns in the manifest: PadChest's ``Manufacturer_DICOM`` as ``scanner``,
kept by ``prepare`` between the base columns and ``split``, listed in the header, read back as
text by ``load_manifest``; a CSV without it, and a manifest written before the header listed
metadata, have no such column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakes import fake_padchest

from cxrkit.data.datasets import padchest
from cxrkit.data.datasets.base import BASE_COLUMNS
from cxrkit.data.manifest import CSV_NAME, HEADER_NAME, load_manifest, manifest_columns
from cxrkit.data.prepare import prepare, text_metadata
from cxrkit.errors import UserError

PHILIPS, IDC = "PhilipsMedicalSystems", "Imaging Dynamics Company Ltd"
#: The prepared fake images (fakes.PADCHEST_ROWS) and their Manufacturer_DICOM, stripped.
SCANNERS = {
    "a.png": PHILIPS,
    "b.png": IDC,
    "c.png": "",
    "j.png": PHILIPS,
    "k.png": IDC,
    **{f"n{i}.png": (PHILIPS, IDC, "")[(11 + i) % 3] for i in range(8)},
}


def test_padchest_manufacturer_becomes_the_scanner_column(tmp_path: Path) -> None:
    parsed = padchest.parse(fake_padchest(tmp_path / "pc"))
    assert parsed.metadata == ["scanner"]
    assert parsed.table.set_index("image_id")["scanner"].to_dict() == SCANNERS
    m = prepare("padchest", tmp_path / "pc", tmp_path / "prep", size=32, progress=False)
    assert m.header["metadata"] == ["scanner"]
    raw = pd.read_csv(tmp_path / "prep" / CSV_NAME, nrows=0)
    assert list(raw.columns) == [*BASE_COLUMNS, "scanner", "split", "cache_index", *m.findings]
    loaded = load_manifest(tmp_path / "prep")
    scanner = loaded.table.set_index("image_id")["scanner"]
    assert scanner.to_dict() == SCANNERS  # blanks stay "", not NaN
    assert scanner.map(type).eq(str).all()
    assert (loaded.table["cache_index"].to_numpy() == np.arange(len(SCANNERS))).all()


def test_without_the_column_there_is_no_scanner_and_old_manifests_load(tmp_path: Path) -> None:
    root = fake_padchest(tmp_path / "pc", scanner=False)
    assert padchest.parse(root).metadata == []
    m = prepare("padchest", root, tmp_path / "prep", size=32, progress=False)
    assert "scanner" not in m.table and m.header["metadata"] == []
    assert list(m.table.columns) == manifest_columns(m.findings)
    header_file = tmp_path / "prep" / HEADER_NAME
    header = json.loads(header_file.read_text())
    del header["metadata"]  # as written before headers listed metadata columns
    header_file.write_text(json.dumps(header))
    old = load_manifest(tmp_path / "prep")
    assert "metadata" not in old.header and list(old.table.columns) == list(m.table.columns)
    pd.testing.assert_frame_equal(old.table, m.table)


def test_listed_metadata_must_be_in_the_csv_and_names_must_not_clash(tmp_path: Path) -> None:
    prepare("padchest", fake_padchest(tmp_path / "pc"), tmp_path / "prep", size=32, progress=False)
    header_file, csv_file = tmp_path / "prep" / HEADER_NAME, tmp_path / "prep" / CSV_NAME
    table = pd.read_csv(csv_file, dtype=str, keep_default_na=False)
    table.drop(columns="scanner").to_csv(csv_file, index=False)
    with pytest.raises(UserError, match=r"lacks the column\(s\) scanner$"):
        load_manifest(tmp_path / "prep")
    table.to_csv(csv_file, index=False)
    header = json.loads(header_file.read_text())
    header_file.write_text(json.dumps({**header, "metadata": "scanner"}))
    with pytest.raises(UserError, match="'metadata' must be a list of column names"):
        load_manifest(tmp_path / "prep")
    with pytest.raises(UserError, match="column.s. sex would appear twice"):
        manifest_columns(["Edema"], ["scanner", "sex"])


def test_a_part_without_the_column_is_left_blank_not_dropped() -> None:
    with_scanner = pd.DataFrame({"image_id": ["a", "b"], "scanner": [f" {PHILIPS} ", np.nan]})
    without = pd.DataFrame({"image_id": ["c"]})
    merged = text_metadata(pd.concat([with_scanner, without], ignore_index=True), ["scanner"])
    assert merged["scanner"].tolist() == [PHILIPS, "", ""]
    with pytest.raises(UserError, match="lacks its metadata column.s. site"):
        text_metadata(without, ["site"])


def test_a_csv_dataset_keeps_its_site_and_scanner_columns(tmp_path: Path) -> None:
    """``Site`` holds numbers (it must not become a finding), ``scanner`` text with a blank."""
    from fakes import write_png16

    root = tmp_path / "mine"
    for i in range(12):
        write_png16(root / f"{i}.png", seed=i)
    pd.DataFrame({
        "path": [f"{i}.png" for i in range(12)], "subject": [str(i // 2) for i in range(12)],
        "effusion": [i % 2 for i in range(12)], "Site": [str(1 + i % 2) for i in range(12)],
        "scanner": [(" GE ", "Agfa", "")[i % 3] for i in range(12)],
    }).to_csv(root / "labels.csv", index=False)  # fmt: skip
    m = prepare("csv", root, tmp_path / "prep", size=32, progress=False,
                options={"labels": "labels.csv", "patient_col": "subject"})  # fmt: skip
    assert m.findings == ["Effusion"] and m.header["metadata"] == ["site", "scanner"]
    table = load_manifest(tmp_path / "prep").table
    table = table.set_index(table["path"].map(lambda p: Path(p).name))
    assert table["site"].to_dict() == {f"{i}.png": str(1 + i % 2) for i in range(12)}
    scanners = {f"{i}.png": ("GE", "Agfa", "")[i % 3] for i in range(12)}
    assert table["scanner"].to_dict() == scanners  # stripped, blank kept as ""
