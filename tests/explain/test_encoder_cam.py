"""CAMs of a foundation encoder point where a timm ViT's point: a DINOv2 tower (``hf:``) and a
timm ViT holding the *same* weights (converted here, the RGB normalisation folded into a
one-channel patch embedding) are the same function, so cxrkit must hook the same layer, drop
the same class token and lay the patch tokens on the same grid: the heatmaps must agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

pytest.importorskip("transformers")

from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from tiny_encoders import SIZE, write_rad_dino_like  # noqa: E402

from cxrkit.explain.cam import open_cam  # noqa: E402
from cxrkit.explain.layers import cam_layers  # noqa: E402
from cxrkit.models.backbones import create_model  # noqa: E402
from cxrkit.models.encoders import EncoderNet  # noqa: E402


def timm_twin(encoder: EncoderNet) -> torch.nn.Module:
    """A timm ViT computing what ``encoder`` computes on ``(N, 1, S, S)`` [0, 1] inputs."""
    cfg = encoder.tower.config
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=encoder.head.out_features,
        in_chans=1, img_size=SIZE, patch_size=cfg.patch_size, embed_dim=cfg.hidden_size,
        depth=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads, mlp_ratio=cfg.mlp_ratio,
        init_values=1.0,
    )  # fmt: skip
    src = encoder.tower.state_dict()
    mean, std = encoder.rgb_mean.flatten(), encoder.rgb_std.flatten()
    w = src["embeddings.patch_embeddings.projection.weight"]  # (D, 3, p, p)
    b = src["embeddings.patch_embeddings.projection.bias"]
    out = {
        "cls_token": src["embeddings.cls_token"],
        "pos_embed": src["embeddings.position_embeddings"],
        # sum_c W_c (x - m_c) / s_c  ==  (sum_c W_c / s_c) x  -  sum_c m_c / s_c * sum W_c
        "patch_embed.proj.weight": (w / std.view(1, 3, 1, 1)).sum(1, keepdim=True),
        "patch_embed.proj.bias": b - (w.sum((2, 3)) * (mean / std)).sum(1),
        "norm.weight": src["layernorm.weight"],
        "norm.bias": src["layernorm.bias"],
        "head.weight": encoder.head.weight.detach(),
        "head.bias": encoder.head.bias.detach(),
    }
    for i in range(cfg.num_hidden_layers):
        h, t = f"encoder.layer.{i}.", f"blocks.{i}."
        qkv = ("q_proj", "k_proj", "v_proj")
        out[t + "attn.qkv.weight"] = torch.cat([src[h + f"attention.{n}.weight"] for n in qkv])
        out[t + "attn.qkv.bias"] = torch.cat([src[h + f"attention.{n}.bias"] for n in qkv])
        pairs = {
            "norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.o_proj",
            "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
        }  # fmt: skip
        for a, c in pairs.items():
            out[t + a + ".weight"] = src[h + c + ".weight"]
            out[t + a + ".bias"] = src[h + c + ".bias"]
        out[t + "ls1.gamma"] = src[h + "layer_scale1.lambda1"]
        out[t + "ls2.gamma"] = src[h + "layer_scale2.lambda1"]
    vit.load_state_dict(out, strict=True)
    return vit.eval()


def test_encoder_cam_equals_the_timm_vit_cam(tmp_path: Path) -> None:
    if "embeddings.patch_embeddings.projection.weight" not in _names():
        pytest.skip("this transformers version names DINOv2's tensors differently")
    torch.manual_seed(0)
    folder = write_rad_dino_like(tmp_path / "dino")
    encoder = create_model(f"hf:{folder}", 3, pretrained=True).eval()
    vit = timm_twin(encoder)
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(vit(x), encoder(x), atol=2e-5, rtol=1e-4)
    (enc_layer,) = cam_layers(encoder, f"hf:{folder}", SIZE)
    (vit_layer,) = cam_layers(vit, "vit_tiny_patch16_224", SIZE)
    assert enc_layer.grid == vit_layer.grid == (SIZE // 8, SIZE // 8)
    for target in range(3):
        maps = []
        for model, layer in ((encoder, enc_layer), (vit, vit_layer)):
            with open_cam(model, layer, "gradcam") as cam:
                maps.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(target)] * 2))
        assert maps[0].shape == (2, SIZE, SIZE)
        np.testing.assert_allclose(maps[0], maps[1], atol=1e-3)
        assert all(np.unravel_index(m.argmax(), m.shape) == np.unravel_index(v.argmax(), v.shape)
                   for m, v in zip(maps[0], maps[1], strict=True))  # fmt: skip


def _names() -> set[str]:
    import transformers as tr

    config = tr.Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=1)
    return set(tr.Dinov2Model(config).state_dict())
