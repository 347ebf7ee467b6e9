"""The image cache applies the DICOM modality gate, and ``prepare --allow-modality`` lifts it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrkit.data.cache import build_cache

pydicom_data = pytest.importorskip("pydicom.data")


def test_a_ct_slice_fails_the_cache_unless_allowed(tmp_path: Path) -> None:
    ct = Path(pydicom_data.get_testdata_file("CT_small.dcm"))
    built = build_cache([ct], tmp_path / "gated", size=32, progress=False)
    assert list(built.failures) == [0] and "Modality CT" in built.failures[0]
    assert "--allow-modality CT" in built.failures[0]
    allowed = build_cache([ct], tmp_path / "any", size=32, progress=False, modalities=None)
    assert allowed.failures == {}
    also_ct = build_cache(
        [ct], tmp_path / "ct", size=32, progress=False, modalities=("CR", "DX", "CT")
    )
    assert also_ct.failures == {}
