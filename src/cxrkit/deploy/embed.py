"""``cxrkit embed``: a prepared folder's frozen embeddings, once, for many probes.

The encoder is a trained checkpoint or bundle (``--checkpoint``) or a backbone without a
trained head (``--backbone``, any name :func:`cxrkit.models.backbones.create_model` builds).
The forward pass is the :class:`~cxrkit.deploy.predictor.Predictor`'s (the evaluation
transform, then ``forward_features`` and ``forward_head(pre_logits=True)``), so an embedding
is exactly the feature vector the model's own head sees at inference. Rows are embedded in
chunks into the store of :mod:`cxrkit.data.embeddings`, each chunk flushed and marked, so a
killed run continues where it stopped.

The encoder is saved into the folder (``encoder.safetensors`` and its card with the file's
sha256): a probe trained on the embeddings becomes a full model (encoder + head) from the
folder alone, even after the source checkpoint is deleted or a backbone's downloaded weights
change upstream, and a resumed run embeds its remaining rows with exactly these weights (a
``--no-pretrained`` backbone is random: rebuilding it would give another network).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from cxrkit import __version__
from cxrkit.data import embeddings as store
from cxrkit.data.manifest import load_manifest
from cxrkit.deploy.predictor import Predictor
from cxrkit.errors import UserError
from cxrkit.files import write_json
from cxrkit.models.backbones import create_model, encoder_card_fields
from cxrkit.models.checkpoint import (
    BUNDLE_WEIGHTS,
    LoadedModel,
    file_sha256,
    load_model,
    new_model_card,
    read_bundle_card,
)
from cxrkit.models.devices import resolve_runtime
from cxrkit.models.inputs import input_normalization

CHUNK = 1024  # rows embedded, flushed and marked at a time


@dataclass
class EmbedResult:
    """What :func:`embed` did: the folder, rows embedded now / before, D, seconds."""

    out: Path
    n: int
    dim: int
    embedded: int
    resumed: int
    seconds: float
    already_done: bool = False


def backbone_model(
    backbone: str,
    manifest_findings: list[str],
    letterbox_size: int,
    clahe: Any,
    *,
    pretrained: bool,
    image_size: int | None = None,
) -> LoadedModel:
    """An untrained-head encoder wrapped with the card training would start with: input size
    (``image_size``, else the backbone's pretrained input size), its gray-level normalisation
    (:func:`~cxrkit.models.inputs.input_normalization`) and its encoder fields."""
    with torch.random.fork_rng():
        torch.manual_seed(0)  # a --no-pretrained backbone: the same random network every time
        model = create_model(backbone, len(manifest_findings), pretrained=pretrained)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = image_size or int((cfg.get("input_size") or (1, 224, 224))[-1])
    mean, std = input_normalization(model)
    normalization = {
        "letterbox_size": letterbox_size,
        "clahe": clahe,
        "mean": mean,
        "std": std,
        "input": "uint8 gray / 255, letterboxed to a square",
    }
    card = new_model_card(
        manifest_findings,
        backbone,
        size,
        normalization,
        pretrained=pretrained,
        **encoder_card_fields(model),
    )
    return LoadedModel(model.eval(), card)


def embed(
    data: str | Path,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    backbone: str | None = None,
    pretrained: bool = True,
    image_size: int | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> EmbedResult:
    """Embed the ``splits`` rows of prepared folder ``data`` into embedding folder ``out``."""
    started = time.perf_counter()
    if (checkpoint is None) == (backbone is None):
        raise UserError("embed needs one of --checkpoint CKPT or --backbone NAME")
    if checkpoint is not None and (image_size is not None or not pretrained):
        raise UserError(
            "--image-size and --no-pretrained apply to --backbone; a checkpoint's card fixes "
            "its input size and weights"
        )
    manifest = load_manifest(data)
    table = manifest.table
    unknown = [s for s in splits if s not in set(table["split"])]
    if unknown or not splits:
        have = ", ".join(sorted(set(table["split"])))
        raise UserError(f"--splits {','.join(unknown) or '(none)'}: {data} has splits {have}")
    rows = table[table["split"].isin(splits)]
    _, _, _, cache_size = manifest.cache_entry()
    clahe = manifest.header["cache"].get("clahe")
    if checkpoint is not None:
        loaded = load_model(checkpoint)
        source = Path(checkpoint)
        ident = {
            "checkpoint": str(source.resolve()),
            "sha256": file_sha256(source) if source.is_file() else _bundle_sha(source),
        }
    else:
        assert backbone is not None
        loaded = backbone_model(
            backbone,
            manifest.findings,
            cache_size,
            clahe,
            pretrained=pretrained,
            image_size=image_size,
        )
        ident = {"backbone": backbone, "pretrained": pretrained}
    card = loaded.card
    letterbox = int(card["normalization"].get("letterbox_size", card["input_size"]))
    if letterbox != cache_size:
        raise UserError(
            f"{data} caches images at {cache_size} px but the model was trained on a "
            f"{letterbox} px cache; prepare again with --size {letterbox}"
        )
    runtime = resolve_runtime(device, precision)
    settings = {
        "model": ident,
        "manifest_sha256": store.manifest_fingerprint(manifest),
        "splits": list(splits),
        "precision": runtime.precision,
        "input_size": int(card["input_size"]),
    }
    dim = int(loaded.model.num_features)
    record = {
        "dim": dim,
        "dtype": "float16",
        "model": {**ident, "backbone": card["backbone"]},
        "input_size": int(card["input_size"]),
        "normalization": card["normalization"],
        "manifest": {"folder": manifest.origin, "sha256": settings["manifest_sha256"]},
        "splits": list(splits),
        "precision": runtime.precision,
        "device": str(runtime.device),
        "cxrkit_version": __version__,
    }
    writer = store.start(out, settings, rows, record, overwrite=overwrite)
    out = Path(out)
    if writer is None:
        return EmbedResult(out, len(rows), dim, 0, len(rows), 0.0, already_done=True)
    if (out / store.ENCODER).is_file():  # resuming: the weights the first rows were made with
        loaded.model.load_state_dict(load_file(out / store.ENCODER))
    else:
        save_encoder(out, loaded)
    predictor = Predictor(
        loaded, batch_size=batch_size, device=device, precision=precision, backend="torch"
    )
    todo = writer.todo
    resumed = len(rows) - len(todo)
    bar = tqdm(total=len(rows), initial=resumed, desc="embedding", unit="img", disable=not progress)
    with bar:
        for k in range(0, len(todo), CHUNK):
            positions = todo[k : k + CHUNK]
            writer.write(positions, predictor.embed_manifest(manifest, rows.iloc[positions]))
            bar.update(len(positions))
    seconds = time.perf_counter() - started
    writer.finish({"seconds": round(seconds, 1)})
    return EmbedResult(out, len(rows), dim, len(todo), resumed, seconds)


def save_encoder(out: Path, loaded: LoadedModel) -> None:
    """``encoder.safetensors`` and ``encoder_card.json`` (the card and the file's sha256)."""
    state = {k: v.detach().contiguous() for k, v in loaded.model.state_dict().items()}
    save_file(state, out / store.ENCODER, metadata={"format": store.FORMAT})
    path = out / store.ENCODER
    files = {store.ENCODER: {"sha256": file_sha256(path), "bytes": path.stat().st_size}}
    write_json(out / store.ENCODER_CARD, {**loaded.card, "files": files})


def _bundle_sha(folder: Path) -> str:
    """A bundle's identity: the sha256 of its weights file, as its card lists it."""
    return str(read_bundle_card(folder)["files"][BUNDLE_WEIGHTS]["sha256"])
