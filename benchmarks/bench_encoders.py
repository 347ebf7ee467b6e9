"""Embedding throughput and memory of the foundation encoders' architectures on this machine.

Each architecture is built from its published config with random weights (throughput and
memory do not depend on the weight values, and nothing is downloaded), saved as a local folder
the way the real model ships, and loaded through cxrkit's ``hf:`` / ``open_clip:`` backbone.
Each runs in its own process, so that its peak resident memory (``VmHWM``) is its own:

    python benchmarks/bench_encoders.py [--models rad-dino,biomedclip] [--batch 8] [--rounds 3]

Reports, per model and precision: parameters, images/s of ``forward_features`` on
``(B, 1, S, S)`` inputs at the model's native size (median of ``--rounds`` timed rounds after
a warm-up), and the process's peak memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: name -> (family, config written to the folder, native size, what the real one is)
MODELS: dict[str, tuple[str, dict, int, str]] = {
    "densenet121": ("timm", {}, 224, "timm densenet121 (the CheXNet CNN, for reference), 224 px"),
    "rad-dino": (
        "hf-dinov2",
        {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
         "patch_size": 14, "image_size": 518, "mlp_ratio": 4},
        518,
        "microsoft/rad-dino (DINOv2 ViT-B/14, 518 px)",
    ),
    "medsiglip": (
        "hf-siglip",
        {"hidden_size": 1152, "num_hidden_layers": 27, "num_attention_heads": 16,
         "intermediate_size": 4304, "patch_size": 14, "image_size": 448},
        448,
        "google/medsiglip-448 (SigLIP So400m/14 vision tower, 448 px)",
    ),
    "biomedclip": (
        "open_clip",
        {"embed_dim": 512, "vision_cfg": {"timm_model_name": "vit_base_patch16_224",
         "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear",
         "image_size": 224}},
        224,
        "BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 (timm ViT-B/16, 224 px)",
    ),
    "chexzero": (
        "open_clip",
        {"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768,
         "patch_size": 32}},
        224,
        "CheXzero (OpenAI CLIP ViT-B/32, 224 px)",
    ),
}  # fmt: skip


def write_folder(name: str, root: Path) -> str:
    """A local model folder of ``name``'s architecture; returns its cxrkit backbone string
    (a timm model needs no folder: random weights, ``pretrained=False``)."""
    import torch

    family, cfg, _, _ = MODELS[name]
    if family == "timm":
        return name
    folder = root / name
    torch.manual_seed(0)
    if family == "hf-dinov2":
        import transformers as tr

        tr.Dinov2Model(tr.Dinov2Config(**cfg)).save_pretrained(folder)
        return f"hf:{folder}"
    if family == "hf-siglip":
        import transformers as tr

        tr.SiglipVisionModel(tr.SiglipVisionConfig(**cfg)).save_pretrained(folder)
        return f"hf:{folder}"
    from open_clip.model import _build_vision_tower
    from safetensors.torch import save_file

    tower = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"])
    folder.mkdir(parents=True)
    state = {f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    return f"open_clip:{folder}"


def measure(backbone: str, size: int, batch: int, rounds: int, precision: str) -> dict:
    """In this process: images/s of ``forward_features`` and the peak memory."""
    import torch

    from cxrkit.models.backbones import create_model

    model = create_model(backbone, 14, pretrained=":" in backbone).eval()
    x = torch.rand(batch, 1, size, size)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=precision == "bf16"):
        model.forward_features(x[:1])  # warm-up
        for _ in range(rounds):
            start = time.perf_counter()
            model.forward_features(x)
            times.append(time.perf_counter() - start)
    status = Path("/proc/self/status").read_text()
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "images_per_s": batch / statistics.median(times),
        "peak_gib": peak_kb / 2**20,
        "dim": model.num_features,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--child", nargs=4, metavar=("BACKBONE", "SIZE", "PRECISION", "OUT"))
    a = p.parse_args()
    if a.child:
        backbone, size, precision, out = a.child
        Path(out).write_text(json.dumps(measure(backbone, int(size), a.batch, a.rounds, precision)))
        return
    print("| model | architecture | D | params | precision | images/s | peak memory |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            backbone = write_folder(name, Path(tmp))
            for precision in a.precisions.split(","):
                out = Path(tmp) / f"{name}-{precision}.json"
                cmd = [sys.executable, __file__, "--batch", str(a.batch), "--rounds",
                       str(a.rounds), "--child", backbone, str(MODELS[name][2]), precision,
                       str(out)]  # fmt: skip
                subprocess.run(cmd, check=True)
                r = json.loads(out.read_text())
                print(f"| {name} | {MODELS[name][3]} | {r['dim']} | {r['params_m']:.0f} M | "
                      f"{precision} | {r['images_per_s']:.2f} | {r['peak_gib']:.2f} GiB |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
