"""CAM methods, target layers (ViT token reshape), hook release, folder mode and the
localisation scores (pointing game, top-k% IoU, NIH box lists, ``cam --evaluate``)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from torch import nn

from cxrkit.cli.parser import main
from cxrkit.data.synth.phantom import FINDINGS
from cxrkit.deploy.predictor import Predictor
from cxrkit.errors import UserError
from cxrkit.explain.cam import METHODS, cam_folder, cam_targets, heatmaps, open_cam, resolve_method
from cxrkit.explain.layers import MIN_CAM_GRID, cam_layers, vit_reshape
from cxrkit.explain.localization import (
    box_mask,
    peak,
    pointing_hit,
    read_boxes,
    summarise,
    top_iou,
    top_mask,
)
from cxrkit.models.backbones import create_model


@pytest.fixture(scope="module")
def predictor(trained: Path) -> Predictor:
    return Predictor.from_checkpoint(trained / "checkpoints" / "best.ckpt")


@pytest.fixture(scope="module")
def image(phantom: Path) -> np.ndarray:
    """A non-square ``(64, 48)`` crop of a phantom image."""
    path = sorted((phantom / "images").glob("*.png"))[0]
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)[:, 8:56].copy()


def no_hooks(model: nn.Module) -> bool:
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return all(not getattr(m, d) for m in model.modules() for d in hook_dicts)


@pytest.mark.parametrize(
    "name", ["GradCAM", "gradcam++", "HiResCAM", "EigenCAM", "Score-CAM", "layercam"]
)
def test_each_method_maps_the_original_image(
    predictor: Predictor, image: np.ndarray, name: str
) -> None:
    finding = predictor.findings[1]
    (result,) = heatmaps(predictor, image, finding, method=name)
    assert result.finding == finding and 0 <= result.probability <= 1
    assert result.heatmap.shape == (64, 48)
    assert 0.0 <= result.heatmap.min() <= result.heatmap.max() <= 1.0
    assert resolve_method(name) in METHODS


def test_unknown_method_and_several_targets(predictor: Predictor, image: np.ndarray) -> None:
    with pytest.raises(UserError, match="did you mean 'gradcam'"):
        heatmaps(predictor, image, "positive", method="gradcan")
    pair = predictor.findings[2::-2]
    assert [r.finding for r in heatmaps(predictor, image, pair)] == pair


@pytest.mark.parametrize(
    ("backbone", "size", "expected"),
    [
        # at 224 px each family's last feature map has 7 x 7 cells: the usual Grad-CAM layer
        ("resnet10t", 224, [("layer4", "layer4.0", (7, 7))]),
        ("densenet121", 224, [("features.norm5", "features.norm5", (7, 7))]),
        ("convnext_atto", 224, [("stages.3", "stages.3", (7, 7))]),
        ("efficientnet_b0", 224, [("bn2", "bn2", (7, 7))]),
        # at 128 px the last map has 4 x 4: the deepest stage with >= 7 cells per side,
        # fused with the next finer one
        ("resnet10t", 128, [("layer3", "layer3.0", (8, 8)), ("layer2", "layer2.0", (16, 16))]),
        (
            "densenet121",
            128,
            [
                ("features.denseblock3", "features.denseblock3", (8, 8)),
                ("features.denseblock2", "features.denseblock2", (16, 16)),
            ],
        ),
        (
            "efficientnet_b0",
            128,
            [("blocks.4", "blocks.4.2", (8, 8)), ("blocks.2", "blocks.2.1", (16, 16))],
        ),
        # only the stride-8 stage reaches 7 cells; nothing finer is a candidate
        ("resnet10t", 64, [("layer2", "layer2.0", (8, 8))]),
        # nothing reaches 7 cells: the finest candidate (stride 8)
        ("resnet10t", 32, [("layer2", "layer2.0", (4, 4))]),
    ],
)
def test_default_cam_layers_per_family_and_input_size(
    backbone: str, size: int, expected: list[tuple[str, str, tuple[int, int]]]
) -> None:
    model = timm.create_model(backbone, pretrained=False, num_classes=2, in_chans=1).train()
    layers = cam_layers(model, backbone, size)
    assert [(layer.name, layer.grid) for layer in layers] == [(n, g) for n, _, g in expected]
    for layer, (_, hooked, _) in zip(layers, expected, strict=True):
        assert layer.module is model.get_submodule(hooked) and layer.reshape is None
    assert model.training and no_hooks(model)  # the probe restores the mode, leaves no hook
    assert min(layers[0].grid) >= MIN_CAM_GRID or size == 32


def test_dilated_last_stage_is_fine_enough_and_layers_can_be_named() -> None:
    dilated = create_model("resnet10t", 3, output_stride=16)
    assert [x.name for x in cam_layers(dilated, "resnet10t", 128)] == ["layer4"]  # 8 x 8
    plain = create_model("resnet10t", 3)
    named = cam_layers(plain, "resnet10t", 128, ["layer2", "layer4.0.conv2", "layer2"])
    assert [(x.name, x.grid) for x in named] == [("layer2", (16, 16)), ("layer4.0.conv2", (4, 4))]
    with pytest.raises(UserError, match="unknown CAM layer 'layer5'.*layer4"):
        cam_layers(plain, "resnet10t", 128, ["layer5"])
    with pytest.raises(UserError, match="'fc' has no spatial"):
        cam_layers(plain, "resnet10t", 128, ["fc"])


def test_fused_heatmap_is_the_mean_of_the_layer_maps(
    predictor: Predictor, image: np.ndarray
) -> None:
    finding = predictor.findings[0]
    one = {
        n: heatmaps(predictor, image, finding, layers=[n])[0].heatmap for n in ("layer2", "layer3")
    }
    fused = heatmaps(predictor, image, finding, layers=["layer3", "layer2"])[0].heatmap
    assert fused.shape == image.shape and 0 <= fused.min() and fused.max() <= 1
    # each layer's map is clipped to [0, 1] only after the mean, so compare where neither is
    inside = (
        (one["layer2"] > 0.01)
        & (one["layer2"] < 0.99)
        & (one["layer3"] > 0.01)
        & (one["layer3"] < 0.99)
    )
    assert inside.mean() > 0.2
    np.testing.assert_allclose(
        fused[inside], ((one["layer2"] + one["layer3"]) / 2)[inside], atol=0.02
    )
    assert not np.allclose(one["layer2"], one["layer3"], atol=0.05)


def test_vit_reshape_drops_prefix_tokens() -> None:
    tokens = torch.arange(2 * 14 * 3, dtype=torch.float32).reshape(2, 14, 3)
    grid = vit_reshape(2, (3, 4))(tokens)
    assert grid.shape == (2, 3, 3, 4)
    assert torch.equal(grid[1, :, 2, 1], tokens[1, 2 + 2 * 4 + 1])
    assert vit_reshape(1, (0, 0))(tokens[:, :10]).shape == (2, 3, 3, 3)  # square fallback


@pytest.mark.parametrize(
    ("backbone", "kwargs", "size"),
    [
        (
            "vit_tiny_patch16_224",
            {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
            32,
        ),
        ("vit_tiny_patch16_224", {"depth": 2}, 224),
        ("deit_tiny_distilled_patch16_224", {"depth": 2}, 224),
    ],
)
def test_vit_cam_with_token_reshape(backbone: str, kwargs: dict[str, int], size: int) -> None:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = timm.create_model(backbone, pretrained=False, num_classes=3, in_chans=1, **kwargs)
    model.eval()
    (layer,) = cam_layers(model, backbone, size)
    assert layer.module is model.blocks[-1].norm1 and layer.reshape is not None
    assert layer.grid == (size // model.patch_embed.patch_size[0],) * 2
    with open_cam(model, layer, "gradcam") as cam:
        heat = cam(input_tensor=torch.randn(1, 1, size, size), targets=[ClassifierOutputTarget(1)])
    assert heat.shape == (1, size, size) and heat.max() > heat.min()
    assert no_hooks(model)


def test_hooks_released_and_memory_bounded(predictor: Predictor, image: np.ndarray) -> None:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def rss_mb() -> float:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * 4096 / 2**20

    torch.manual_seed(0)
    small = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    ).eval()
    (layer,) = cam_layers(small, "tiny", 32)  # the probe finds its last spatial layer
    assert layer.name == "3" and layer.grid == (28, 28)
    x = torch.randn(1, 1, 32, 32)

    def one_cam() -> np.ndarray:
        with open_cam(small, layer, "gradcam") as cam:
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(1)])

    for _ in range(20):  # warm-up: allocator pools, gradient buffers
        one_cam()
    before = rss_mb()
    for _ in range(200):
        one_cam()
    assert rss_mb() - before < 50
    assert no_hooks(small)
    for method in METHODS:
        if method != "scorecam":
            heatmaps(predictor, image, predictor.findings[0], method=method)
    assert no_hooks(predictor.model)
    (target, _), *_ = cam_targets(predictor)
    with pytest.raises(IndexError), open_cam(predictor.model, target, "gradcam"):
        raise IndexError("propagates; pytorch-grad-cam's own __exit__ would swallow it")
    assert no_hooks(predictor.model)


def test_pointing_game_on_hand_made_heatmaps() -> None:
    heat = np.zeros((10, 10), np.float32)
    heat[4, 6] = 1.0  # centre (x 6.5, y 4.5)
    assert peak(heat) == (4, 6)
    assert pointing_hit(heat, np.array([[5, 3, 3, 3]]))
    assert not pointing_hit(heat, np.array([[7, 3, 2, 2]]))  # 0.5 px left of the box
    assert pointing_hit(heat, np.array([[7, 3, 2, 2]]), tolerance=0.5)
    assert not pointing_hit(heat, np.array([[7, 3, 2, 2]]), tolerance=0.4)
    assert pointing_hit(heat, np.array([[0, 0, 1, 1], [6, 4, 1, 1]]))  # any box
    assert not pointing_hit(heat, np.array([[0, 0, 6.5, 10]]))  # right edge excluded
    plateau = np.zeros((10, 10), np.float32)
    plateau[6:10, 0:3] = 1.0  # a border plateau: the tied pixel nearest its centroid
    assert peak(plateau) == (7, 1)
    assert peak(np.zeros((4, 4))) == (1, 1)  # centroid (1.5, 1.5): first of the 4 nearest


def test_top_k_iou_on_hand_made_heatmaps() -> None:
    heat = np.zeros((10, 10), np.float32)
    heat[0, :] = 1.0  # exactly the top 10% (10 of 100 pixels)
    assert top_mask(heat, 10).sum() == 10 and top_mask(heat, 10)[0].all()
    assert top_iou(heat, np.array([[0, 0, 5, 2]]), 10) == pytest.approx(5 / 15)
    assert top_iou(heat, np.array([[0, 0, 5, 2], [5, 0, 5, 1]]), 10) == pytest.approx(10 / 15)
    assert top_iou(heat, np.array([[0, 0, 5, 2]]), 5) == pytest.approx(5 / 10)  # row-major ties
    assert top_iou(heat, np.array([[0, 0, 10, 1]]), 10) == 1.0
    np.testing.assert_array_equal(
        np.flatnonzero(box_mask(np.array([[0.4, 0, 1.2, 1]]), (2, 4))), [0, 1]
    )
    with pytest.raises(UserError, match="top-percent"):
        top_mask(heat, 0)


def test_summary_counts_and_rates() -> None:
    table = pd.DataFrame(
        {
            "finding": ["Mass", "Mass", "Mass", "Nodule"],
            "status": ["ok", "ok", "not_predicted", "ok"],
            "hit": [True, False, None, True],
            "iou": [0.5, 0.1, None, 0.3],
        }
    )
    s = summarise(table)
    assert s["Mass"] == {
        "pairs": 3,
        "evaluated": 2,
        "pointing_game": 0.5,
        "iou_top": pytest.approx(0.3),
        "skipped_not_predicted": 1,
    }
    assert s["all"]["pointing_game"] == pytest.approx(2 / 3) and s["all"]["evaluated"] == 3


def test_boxes_parser_tolerates_nih_quirks(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "a.png,Infiltrate,1,2,3,4,,,\n\nb.png,Mass,5.5,6,7,8\n"
    )
    boxes = read_boxes(path)
    assert boxes.to_dict("records") == [
        {"image": "a.png", "finding": "Infiltration", "x": 1, "y": 2, "w": 3, "h": 4},
        {"image": "b.png", "finding": "Mass", "x": 5.5, "y": 6, "w": 7, "h": 8},
    ]
    path.write_text("a.png,Mass,1,2,x,4\n")
    with pytest.raises(UserError, match="line 1"):
        read_boxes(path)


def test_boxes_parser_on_the_real_nih_file(shared_data: Path) -> None:
    path = shared_data / "nih-sample" / "BBox_List_2017.csv.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    boxes = read_boxes(path)
    assert len(boxes) == 984 and (boxes["finding"] == "Infiltration").sum() == 123
    assert "Infiltrate" not in set(boxes["finding"])
    assert boxes.iloc[0].tolist() == [
        "00013118_008.png",
        "Atelectasis",
        pytest.approx(225.0847),
        pytest.approx(547.0192),
        pytest.approx(86.7797),
        pytest.approx(79.1864),
    ]
    assert boxes[["x", "y"]].min().min() >= 0 and (boxes["x"] + boxes["w"]).max() <= 1024


def test_boxes_parser_on_synth_file(phantom: Path) -> None:
    boxes = read_boxes(phantom / "BBox_List_2017.csv")
    lines = (phantom / "BBox_List_2017.csv").read_text().strip().splitlines()
    assert len(boxes) == len(lines) - 1 > 0
    assert set(boxes["finding"]) <= set(FINDINGS)
    assert ((boxes["w"] > 0) & (boxes["x"] + boxes["w"] <= 64.01)).all()


def test_folder_mode_keeps_subfolders_and_skips_bad_images(
    predictor: Predictor, phantom: Path, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    (src / "ward").mkdir(parents=True)
    first, second = sorted((phantom / "images").glob("*.png"))[:2]
    (src / "a.png").write_bytes(first.read_bytes())
    (src / "ward" / "b.png").write_bytes(second.read_bytes())
    (src / "ward" / "broken.png").write_bytes(b"not an image")
    finding = predictor.findings[0]
    done = cam_folder(predictor, src, tmp_path / "out", targets=finding, progress=False)
    assert [p.name for p, _ in done.failed] == ["broken.png"] and len(done.written) == 2
    assert (tmp_path / "out" / f"a_{finding}.png").is_file()
    assert (tmp_path / "out" / "ward" / f"b_{finding}.png").is_file()
    assert np.load(tmp_path / "out" / "ward" / f"b_{finding}.npy").shape == (64, 64)


def test_cli_folder_mode_exit_code(
    trained: Path, phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "ok.png").write_bytes(sorted((phantom / "images").glob("*.png"))[0].read_bytes())
    (src / "bad.png").write_bytes(b"junk")
    rc = main(
        [
            "cam",
            "--checkpoint",
            str(trained / "checkpoints" / "best.ckpt"),
            "--image",
            str(src),
            "--out",
            str(tmp_path / "out"),
            "--method",
            "HiResCAM",
            "--layer",
            "layer3",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 3 and "bad.png" in captured.err and "1 image(s) explained" in captured.out
    assert "CAM layers: layer3 (3 x 3)\n" in captured.out  # 48 px input, stride 16


def test_cam_evaluate_end_to_end(
    trained: Path, phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "loc"
    rc = main(
        [
            "cam",
            "--evaluate",
            "--checkpoint",
            str(trained / "checkpoints" / "best.ckpt"),
            "--boxes",
            str(phantom / "BBox_List_2017.csv"),
            "--images",
            str(phantom / "images"),
            "--split-file",
            str(phantom / "test_list.txt"),
            "--method",
            "gradcam,eigencam",
            "--top-percent",
            "20",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and "pointing" in capsys.readouterr().out
    result = json.loads((out / "localization.json").read_text())
    assert result["top_percent"] == 20 and set(result["methods"]) == {"gradcam", "eigencam"}
    # 48 px: layer4 is 2 x 2, layer3 3 x 3, layer2 6 x 6: none has 7 cells; the stride-8 stage
    assert result["layers"] == [{"name": "layer2", "grid": [6, 6]}]
    test_ids = set((phantom / "test_list.txt").read_text().split())
    boxes = read_boxes(phantom / "BBox_List_2017.csv")
    boxes = boxes[boxes["image"].isin(test_ids)]
    n_pairs = len(boxes.groupby(["image", "finding"]))
    for summary in result["methods"].values():
        total = summary["all"]
        assert total["pairs"] == n_pairs
        skipped = sum(v for k, v in total.items() if k.startswith("skipped_"))
        assert total["evaluated"] + skipped == n_pairs
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 2 * n_pairs and set(per_image["image"]) <= test_ids
