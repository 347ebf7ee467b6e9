"""The canonical finding vocabulary: NIH spellings, choosing findings, multi-hot labels."""

from __future__ import annotations

import numpy as np
import pytest

from cxrkit.data.labels import NIH_MAP, canonical_name, multi_hot, select_findings
from cxrkit.errors import UserError


def test_canonical_names_map_nih_spellings() -> None:
    assert canonical_name("Pleural_Thickening", NIH_MAP) == "Pleural Thickening"
    assert canonical_name("Infiltrate", NIH_MAP) == "Infiltration"
    assert canonical_name("Effusion") == "Effusion"
    with pytest.raises(UserError, match="did you mean 'Effusion'"):
        canonical_name("Efusion")


def test_select_findings_and_multi_hot() -> None:
    assert select_findings(["A", "B"], None) == ["A", "B"]
    with pytest.raises(UserError, match="unknown finding 'C'"):
        select_findings(["A", "B"], ["C"])
    got = multi_hot([["B"], [], ["A", "B", "No Finding"]], ["A", "B"])
    np.testing.assert_array_equal(got, [[0, 1], [0, 0], [1, 1]])
    assert got.dtype == np.float32
