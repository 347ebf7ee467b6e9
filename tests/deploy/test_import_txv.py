"""`cxrkit import torchxrayvision`: the bundle computes what torchxrayvision computes, on the
outputs those weights were trained for; bad files and names are one-line refusals."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrkit.cli.parser import main
from cxrkit.data.labels import CANONICAL
from cxrkit.deploy.import_txv import ARCHS, import_torchxrayvision
from cxrkit.models.checkpoint import load_model
from cxrkit.models.inputs import eval_transform

xrv = pytest.importorskip("torchxrayvision")
torchvision = pytest.importorskip("torchvision")

TOLERANCE = 1e-4  # max |sigmoid(cxrkit logits) - sigmoid(txv logits)|


def randomise(model: nn.Module, head: nn.Linear, features: Callable, size: int, seed: int) -> None:
    """Random BatchNorm statistics and a head that puts the logits of [-1024, 1024] inputs at
    a scale of a few units, so that sigmoids are not saturated and a wrong weight, input
    normalisation or output row shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        next(m for m in model.modules() if isinstance(m, nn.Conv2d)).weight.div_(1024)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.1, 0.1, generator=g)
        model.eval()
        f = features(torch.rand(2, 1, size, size, generator=g) * 2048 - 1024)
        w = torch.randn(head.weight.shape, generator=g)
        w *= 2 / (w @ (f - f.mean(0)).T).std()
        head.weight.copy_(w)
        head.bias.copy_(-(w @ f.mean(0)) + torch.rand(head.bias.shape, generator=g) * 2 - 1)


@pytest.fixture(scope="module")
def densenet() -> nn.Module:
    torch.manual_seed(0)
    model = xrv.models.DenseNet(weights=None)
    randomise(model, model.classifier, model.features2, 224, seed=0)
    return model


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    """torchvision's ResNet-50 as txv builds it: 18 outputs, a one-channel conv1."""
    torch.manual_seed(1)
    model = torchvision.models.resnet50(num_classes=18, weights=None)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    trunk = nn.Sequential(*list(model.children())[:-1], nn.Flatten())
    randomise(model, model.fc, trunk, 512, seed=1)
    return model


def inputs(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, 1, size, size)`` uint8 images and txv's input for them, ``(x/255)*2048 - 1024``."""
    g = torch.Generator().manual_seed(size + n)
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    return images, images.float() / 255 * 2048 - 1024


def compare(bundle: Path, txv_model: nn.Module, n: int, size: int) -> tuple[np.ndarray, ...]:
    """``(cxrkit probabilities (n, C), txv probabilities (n, 18))`` on the same images, each
    through its own input convention (cxrkit: ``eval_transform`` with the card's mean/std)."""
    loaded = load_model(bundle)
    norm = loaded.card["normalization"]
    images, txv_input = inputs(n, size)
    x = eval_transform(images, loaded.card["input_size"], norm["mean"], norm["std"])
    torch.testing.assert_close(x, txv_input, rtol=0, atol=1e-3)  # the same tensor, two ways
    with torch.inference_mode():
        ours = torch.sigmoid(loaded.model(x)).numpy()
        theirs = torch.sigmoid(txv_model(txv_input)).numpy()
    return ours, theirs


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_pickled_densenet_gives_txv_probabilities(
    densenet: nn.Module, tmp_path: Path, legacy: bool
) -> None:
    path = tmp_path / "densenet.pt"
    torch.save(densenet, path, _use_new_zipfile_serialization=not legacy)  # as txv publishes
    import_torchxrayvision(path, "densenet121", tmp_path / "bundle", onnx=False)
    ours, theirs = compare(tmp_path / "bundle", densenet, 3, 224)
    assert ours.shape == (3, 18) and 0.05 < theirs.std()  # not saturated: the check can fail
    assert np.abs(ours - theirs).max() < TOLERANCE
    card = load_model(tmp_path / "bundle").card
    assert card["findings"][9] == "Pleural Thickening" and set(card["findings"]) <= set(CANONICAL)
    assert card["thresholds"] is None  # plain densenet121: no published operating points
    assert card["normalization"]["std"] == 1 / 2048 and card["in_chans"] == 1
    assert card["origin"]["container"] == "torchxrayvision.models.DenseNet"


def test_named_weights_keep_their_trained_outputs_and_operating_points(
    densenet: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "nih.pt"
    torch.save(densenet, path)
    result = import_torchxrayvision(path, "densenet121-res224-nih", tmp_path / "b", onnx=False)
    ours, theirs = compare(tmp_path / "b", densenet, 2, 224)
    labels = xrv.models.model_urls["densenet121-res224-nih"]["labels"]
    kept = [j for j, name in enumerate(labels) if name]
    assert ours.shape == (2, 14) and kept == list(range(14))
    assert np.abs(ours - theirs[:, kept]).max() < TOLERANCE
    card = result.card
    assert card["findings"] == [
        "Pleural Thickening" if name == "Pleural_Thickening" else name for name in labels if name
    ]
    op = xrv.models.model_urls["densenet121-res224-nih"]["op_threshs"]
    assert card["thresholds"]["values"] == pytest.approx(
        {f: op[j] for f, j in zip(card["findings"], kept, strict=True)}
    )
    assert card["thresholds"]["method"] == "torchxrayvision operating point"
    assert load_model(tmp_path / "b").thresholds() == pytest.approx([op[j] for j in kept])
    assert card["origin"]["dropped_outputs"] == [
        "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"
    ]  # fmt: skip


def test_rows_are_sliced_where_the_blanks_are_in_the_middle(
    densenet: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "rsna.pt"
    torch.save(densenet, path)
    import_torchxrayvision(path, "densenet121-res224-rsna", tmp_path / "b", onnx=False)
    ours, theirs = compare(tmp_path / "b", densenet, 2, 224)
    assert load_model(tmp_path / "b").findings == ["Pneumonia", "Lung Opacity"]
    assert np.abs(ours - theirs[:, [8, 16]]).max() < TOLERANCE


def test_the_table_is_torchxrayvisions(tmp_path: Path) -> None:
    """cxrkit's own copy of txv's model_urls: labels, operating points, input size."""
    named = [a for a in ARCHS if a not in ("densenet121", "resnet50")]
    assert set(named) == {k for k in xrv.models.model_urls if k.startswith(("dense", "resnet"))}
    for arch in named:
        txv, ours = xrv.models.model_urls[arch], ARCHS[arch]
        assert list(ours.trained) == [bool(label) for label in txv["labels"]], arch
        assert ours.input_size == txv["input_resolution"], arch
        for t, o in zip(txv["op_threshs"], ours.op_threshs, strict=True):
            assert (o is None) if math.isnan(t) else o == pytest.approx(t), arch
    assert ARCHS["resnet50"].input_size == 512 and ARCHS["densenet121"].trained == (True,) * 18


def test_a_resnet50_state_dict_at_512_gives_txv_probabilities(
    resnet: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "resnet.pt"
    torch.save(resnet.state_dict(), path)  # txv: self.model.load_state_dict(file): no prefix
    result = import_torchxrayvision(path, "resnet50-res512-all", tmp_path / "b", onnx=False)
    ours, theirs = compare(tmp_path / "b", resnet, 1, 512)
    assert ours.shape == (1, 18) and 0.05 < theirs.std()
    assert np.abs(ours - theirs).max() < TOLERANCE
    values = result.card["thresholds"]["values"]
    assert len(values) == 16 and "Lung Lesion" not in values  # txv has NaN for two of them
    assert result.card["input_size"] == 512 and result.card["origin"]["container"] == "state dict"
    # txv's ResNet module's own state_dict (torchvision's under "model."): the same weights.
    torch.save({f"model.{k}": v for k, v in resnet.state_dict().items()}, tmp_path / "wrapped.pt")
    import_torchxrayvision(tmp_path / "wrapped.pt", "resnet50", tmp_path / "b2", onnx=False)
    a, b = load_model(tmp_path / "b").model, load_model(tmp_path / "b2").model
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def _cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_refusals_exit_2_with_one_line(
    densenet: nn.Module, resnet: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return os.system, (f"touch {marker}",)

    evil = nn.Sequential(nn.Linear(2, 2))
    evil.extra = Payload()
    torch.save(evil, tmp_path / "evil.pt")
    torch.save(resnet.state_dict(), tmp_path / "resnet.pt")
    torch.save(densenet, tmp_path / "densenet.pt")
    (tmp_path / "text.pt").write_text("not weights")
    vision = torchvision.models.densenet121(weights=None)  # ImageNet-style: 3 channels, 1000
    torch.save(vision, tmp_path / "imagenet.pt")
    out = tmp_path / "bundle"
    cases = {
        "evil.pt densenet121": "refused to unpickle posix.system from",
        "densenet.pt densnet121": "did you mean 'densenet121'",
        "text.pt densenet121": "is not a readable torch weights file",
        "resnet.pt densenet121": "holds resnet50 weights, not the densenet121 of --arch "
        "densenet121: use --arch resnet50 or resnet50-res512-all",
        "densenet.pt resnet50-res512-all": "holds densenet121 weights",
        "imagenet.pt densenet121": "has 1000 outputs; torchxrayvision's densenet121 has 18",
    }
    for case, expected in cases.items():
        name, arch = case.split()
        code, _, err = _cli(
            capsys, "import", "torchxrayvision", tmp_path / name, "--arch", arch, "--out", out
        )
        assert code == 2 and expected in err and err.count("\n") == 1, (case, err)
        assert not out.exists(), case  # refused before the bundle folder is made
    assert not marker.exists()
    # The right class count but ImageNet's three channels: the stem's shape is named.
    vision.classifier = nn.Linear(1024, 18)
    torch.save(vision, tmp_path / "rgb.pt")
    code, _, err = _cli(
        capsys, "import", "torchxrayvision", tmp_path / "rgb.pt", "--arch", "densenet121",
        "--out", out,
    )  # fmt: skip
    assert code == 2 and "features.conv0.weight is (64, 3, 7, 7), expected (64, 1, 7, 7)" in err
    assert "take 1 channel" in err


def test_import_then_infer_and_cam_from_the_command_line(
    densenet: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    weights, bundle = tmp_path / "chex.pt", tmp_path / "bundle"
    torch.save(densenet, weights, _use_new_zipfile_serialization=False)
    code, out, _ = _cli(
        capsys, "import", "torchxrayvision", weights, "--arch", "densenet121-res224-chex",
        "--out", bundle,
    )  # fmt: skip
    assert code == 0
    assert "11 findings kept" in out and "11 operating points" in out
    assert f"cxrkit infer --checkpoint {bundle}" in out
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["format"] == "cxrkit-bundle/1" and "model.onnx" in card["files"]
    assert card["onnx"]["verified"]["max_abs_logit_diff"] <= 1e-4
    assert "Apache-2.0" in card["licence"] and card["origin"]["kind"] == "torchxrayvision"
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(64, 80), (48, 48)]):
        cv2.imwrite(str(images / f"cxr{i}.png"), rng.integers(0, 256, shape, dtype=np.uint8))
    tables = {}
    for backend in ("torch", "onnx"):
        csv = tmp_path / f"{backend}.csv"
        code, _, err = _cli(
            capsys, "infer", "--checkpoint", bundle, "--source", images, "--out", csv,
            "--backend", backend, "--precision", "fp32",
        )  # fmt: skip
        assert code == 0, err
        tables[backend] = pd.read_csv(csv).set_index("image_id").sort_index()
    probs = [f"prob_{f}" for f in card["findings"]]
    assert list(tables["torch"].index) == ["cxr0.png", "cxr1.png"]
    assert set(probs) <= set(tables["torch"].columns)
    assert "prob_Infiltration" not in tables["torch"].columns  # untrained by the chex weights
    diff = np.abs(tables["torch"][probs].to_numpy() - tables["onnx"][probs].to_numpy())
    assert diff.max() < 1e-4
    code, _, err = _cli(
        capsys, "cam", "--checkpoint", bundle, "--image", images / "cxr0.png",
        "--target", "Effusion", "--out", tmp_path / "cam", "--precision", "fp32",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "cam" / "cxr0_Effusion.png").is_file()
