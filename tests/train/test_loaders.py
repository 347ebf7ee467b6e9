"""Cache batches and training on several prepared datasets together."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_OVERRIDES

from cxrkit.data.batches import CacheBatches, cache_spec
from cxrkit.data.manifest import Manifest, load_manifest
from cxrkit.errors import UserError
from cxrkit.train.config import load_config
from cxrkit.train.fit import fit
from cxrkit.train.loaders import combine, make_loader


def _without(m: Manifest, finding: str) -> Manifest:
    header = {**m.header, "findings": [f for f in m.findings if f != finding]}
    return dataclasses.replace(m, table=m.table.drop(columns=finding), header=header)


def test_batches_return_cache_images_in_row_order(prepared: Path) -> None:
    m = load_manifest(prepared)
    rows = m.rows("train").iloc[[5, 0, 3]]
    batch = CacheBatches(
        [cache_spec(m)], np.zeros(3), rows["cache_index"].to_numpy(), m.labels(rows, m.findings)
    )
    images, labels = batch[[0, 1, 2]]
    assert images.shape == (3, 1, 64, 64) and str(images.dtype) == "torch.uint8"
    cache = m.cache()
    for k, slot in enumerate(rows["cache_index"]):
        np.testing.assert_array_equal(images[k, 0].numpy(), cache[slot])
    np.testing.assert_array_equal(labels.numpy(), m.labels(rows, m.findings))


def test_loader_side_augmentation_outputs_the_model_size(prepared: Path) -> None:
    from cxrkit.train.config import AugmentConfig

    m = load_manifest(prepared)
    data = combine([m], None)
    batches = data.split("train").batches(data.caches, (AugmentConfig(), 40))
    images, labels = batches[[0, 1, 2, 3]]
    assert images.shape == (4, 1, 40, 40) and str(images.dtype) == "torch.uint8"
    assert labels.shape == (4, len(data.findings))


def test_loader_yields_every_row_once(prepared: Path) -> None:
    m = load_manifest(prepared)
    data = combine([m], None)
    split = data.split("train")
    seen = [lab for _, lab in make_loader(split.batches(data.caches), batch_size=7, shuffle=True)]
    assert sum(len(x) for x in seen) == len(split.slots)


def test_union_masks_findings_a_dataset_lacks(prepared: Path) -> None:
    full = load_manifest(prepared)
    lacking = _without(full, "Effusion")
    union = combine([full, lacking], ["Effusion", "Cardiomegaly"])
    split = union.split("train")
    n = len(full.rows("train"))
    assert np.isnan(split.labels[n:, 0]).all(), "Effusion unknown in the second dataset"
    assert not np.isnan(split.labels[:n, 0]).any()
    assert not np.isnan(split.labels[:, 1]).any()
    assert set(split.sources.tolist()) == {0, 1}
    inter = combine([full, lacking], None, "intersection")
    assert "Effusion" not in inter.findings
    with pytest.raises(UserError, match="unknown finding 'Effusion'"):
        combine([full, lacking], ["Effusion"], "intersection")


def test_fit_on_two_prepared_folders(prepared: Path, tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY_OVERRIDES, "trainer.max_epochs=1"])
    result = fit(cfg, [prepared, prepared], tmp_path / "run", progress=False)
    from cxrkit.models.checkpoint import load_checkpoint

    card = load_checkpoint(result.best).card
    assert len(card["training_data"]["datasets"]) == 2
    assert card["training_data"]["n_train"] == 2 * len(load_manifest(prepared).rows("train"))
