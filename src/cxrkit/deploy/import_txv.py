"""``cxrkit import torchxrayvision``: a torchxrayvision weights file -> a cxrkit bundle.

torchxrayvision (txv) publishes DenseNet-121 weights as pickled whole modules and a
ResNet-50 (512 px) as a pickled state dict. :func:`import_torchxrayvision` reads either
without running code from the file (:mod:`cxrkit.models.safe_pickle`), maps the keys onto
timm's ``densenet121`` / ``resnet50`` with a one-channel stem (the same names, checked strictly
with their shapes), keeps the outputs txv trained for those weights (the ``""`` entries of its
18 are dropped, the classifier rows sliced, the order kept), names them in cxrkit's vocabulary
and writes a bundle through :func:`cxrkit.deploy.export.write_bundle`.

Input convention: txv feeds ``(x / 255) * 2048 - 1024`` (one channel, [-1024, 1024]); with
cxrkit's ``(x / 255 - mean) / std`` that is ``mean`` 0.5, ``std`` 1/2048, exactly. The bundle
returns logits like every cxrkit model; ``sigmoid(logit)`` is txv's probability. txv's
``op_norm`` maps each operating point to 0.5, so its call at 0.5 is the call at the card's
``thresholds`` (txv's ``op_threshs``) on the sigmoid. cxrkit letterboxes images to a square
(zero padding) where txv's own pipeline centre-crops: outputs agree on the same preprocessed
tensor, not necessarily on the same image file.

The table below is txv 1.5.7's ``model_urls`` (labels, ``op_threshs``, input size), so that
importing needs no torchxrayvision installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrkit.data.labels import NIH_MAP, canonical_name
from cxrkit.errors import UserError, did_you_mean

if TYPE_CHECKING:
    import torch

#: txv's 18 outputs (``xrv.datasets.default_pathologies``), in its order
TXV_PATHOLOGIES = (
    "Atelectasis Consolidation Infiltration Pneumothorax Edema Emphysema Fibrosis Effusion "
    "Pneumonia Pleural_Thickening Cardiomegaly Nodule Mass Hernia"
).split() + ["Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]
N = None  # no operating point (txv: NaN)
LICENCE = (
    "torchxrayvision code: Apache-2.0 (https://github.com/mlmed/torchxrayvision). The package "
    "states no separate licence for its pretrained weights: their use follows the terms of "
    "the datasets they were trained on (several, e.g. CheXpert, MIMIC-CXR and PadChest, allow "
    "research use only and forbid redistribution or commercial use); check them before use"
)
DATASETS = {
    "nih": "NIH ChestX-ray14",
    "pc": "PadChest",
    "chex": "CheXpert",
    "mimic_ch": "MIMIC-CXR (CheXpert labeler)",
    "mimic_nb": "MIMIC-CXR (NegBio labeler)",
    "google": "NIH ChestX-ray14 with Google's expert labels",
    "openi": "OpenI (Indiana University)",
    "rsna": "RSNA Pneumonia Detection Challenge",
    "siim": "SIIM-ACR Pneumothorax",
    "vin": "VinDr-CXR",
}


@dataclass(frozen=True)
class TxvArch:
    """One ``--arch``: the timm ``backbone``, which of the 18 outputs were trained
    (``trained[j]``), txv's operating points (None: none), input size and data."""

    backbone: str
    input_size: int
    trained: tuple[bool, ...]
    op_threshs: tuple[float | None, ...] | None
    datasets: tuple[str, ...]
    description: str


def _named(input_size: int, blanks: str, op: list[float | None], data: str, text: str) -> TxvArch:
    """A named txv weights entry; ``blanks``: the indices of its ``""`` labels."""
    skip = {int(i) for i in blanks.split()}
    backbone = "resnet50" if input_size == 512 else "densenet121"
    trained = tuple(j not in skip for j in range(18))
    return TxvArch(backbone, input_size, trained, tuple(op), tuple(data.split("-")), text)


_ALL = "trained on the datasets: nih-pc-chex-mimic_ch-google-openi-rsna (arXiv:2002.02497)"
_CHEX_BLANKS = "2 5 6 9 11 12 13"
# fmt: off
ARCHS: dict[str, TxvArch] = {
    "densenet121-res224-all": _named(224, "", [0.07422872, 0.038290843, 0.09814756, 0.0098118475, 0.023601074, 0.0022490358, 0.010060724, 0.103246614, 0.056810737, 0.026791653, 0.050318155, 0.023985857, 0.01939503, 0.042889766, 0.053369623, 0.035975814, 0.20204692, 0.05015312], "nih-pc-chex-mimic_ch-google-openi-rsna", _ALL),  # noqa: E501
    "densenet121-res224-nih": _named(224, "14 15 16 17", [0.039117552, 0.0034529066, 0.11396341, 0.0057298196, 0.00045666535, 0.0018880932, 0.012037827, 0.038744126, 0.0037213727, 0.014730946, 0.016149804, 0.054241467, 0.037198864, 0.0004403434, N, N, N, N], "nih", "trained on NIH ChestX-ray14"),  # noqa: E501
    "densenet121-res224-pc": _named(224, "14 16 17", [0.031012505, 0.013347598, 0.081435576, 0.001262615, 0.002587246, 0.0035944257, 0.0023071, 0.055412333, 0.044385884, 0.042766232, 0.043258056, 0.037629247, 0.005658899, 0.0091741895, N, 0.026507627, N, N], "pc", "trained on PadChest"),  # noqa: E501
    "densenet121-res224-chex": _named(224, _CHEX_BLANKS, [0.1988969, 0.05710573, N, 0.0531293, 0.1435217, N, N, 0.27212676, 0.07749717, N, 0.19712369, N, N, N, 0.09932402, 0.09273402, 0.3270967, 0.10888247], "chex", "trained on CheXpert"),  # noqa: E501
    "densenet121-res224-rsna": _named(224, "0 1 2 3 4 5 6 7 9 10 11 12 13 14 15 17", [N] * 8 + [0.13486601] + [N] * 7 + [0.13511065, N], "rsna", "trained on the RSNA Pneumonia Detection Challenge"),  # noqa: E501
    "densenet121-res224-mimic_nb": _named(224, _CHEX_BLANKS, [0.08558747, 0.011884617, N, 0.0040595434, 0.010733786, N, N, 0.118761964, 0.022924708, N, 0.06358637, N, N, N, 0.022143636, 0.017476924, 0.1258702, 0.014020768], "mimic_nb", "trained on MIMIC-CXR (NegBio labels)"),  # noqa: E501
    "densenet121-res224-mimic_ch": _named(224, _CHEX_BLANKS, [0.09121389, 0.010573786, N, 0.005023008, 0.003698257, N, N, 0.08001232, 0.037242252, N, 0.05006329, N, N, N, 0.019866971, 0.03823637, 0.11303808, 0.0069147074], "mimic_ch", "trained on MIMIC-CXR (CheXpert labels)"),  # noqa: E501
    "resnet50-res512-all": _named(512, "", [0.51570356, 0.50444704, 0.53787947, 0.50723547, 0.5025118, 0.5035252, 0.5038076, 0.51862943, 0.5078151, 0.50724894, 0.5056339, 0.510706, 0.5053923, 0.5020846, N, 0.5080557, 0.5138526, N], "pc-nih-rsna-siim-vin", "trained on the datasets pc-nih-rsna-siim-vin at a 512x512 resolution"),  # noqa: E501
    "densenet121": TxvArch("densenet121", 224, (True,) * 18, None, (), "a torchxrayvision DenseNet-121 (own training)"),  # noqa: E501
    "resnet50": TxvArch("resnet50", 512, (True,) * 18, None, (), "a torchxrayvision ResNet-50 (own training)"),  # noqa: E501
}
# fmt: on
HEADS = {"densenet121": "classifier", "resnet50": "fc"}
SIGNATURES = {  # a key only that family's state dict has
    "densenet121": "features.denseblock4.denselayer16.conv2.weight",
    "resnet50": "layer4.2.conv3.weight",
}


@dataclass
class ImportResult:
    """What :func:`import_torchxrayvision` wrote: the bundle and its card."""

    bundle: Path
    card: dict[str, Any]

    def describe(self) -> str:
        c = self.card
        values = (c.get("thresholds") or {}).get("values") or {}
        lines = [
            f"imported {c['origin']['file']} ({c['origin']['arch']}) as a {c['backbone']} "
            f"bundle: {self.bundle}",
            f"  {len(c['findings'])} findings kept: {', '.join(c['findings'])}",
            f"  dropped {len(c['origin']['dropped_outputs'])} untrained outputs: "
            + (", ".join(c["origin"]["dropped_outputs"]) or "none"),
            f"  input: {c['input_size']} px, 1 channel; {c['normalization']['input']}",
            f"  thresholds: {len(values)} operating points recorded"
            if values
            else "  thresholds: none (every finding called at 0.5)",
            f"  licence: {c['licence']}",
            f"next: cxrkit infer --checkpoint {self.bundle} --source IMAGES --out preds.csv",
        ]
        return "\n".join(lines)


def import_torchxrayvision(
    weights: str | Path, arch: str, out: str | Path, *, onnx: bool = True, overwrite: bool = False
) -> ImportResult:
    """Read ``weights`` (txv ``--arch`` ``arch``), check it fits, write the bundle ``out``.

    torch, timm and the exporter are imported here, so that the CLI lists :data:`ARCHS`
    in its help without loading them."""
    from cxrkit.deploy.export import write_bundle
    from cxrkit.models.backbones import create_model
    from cxrkit.models.checkpoint import file_sha256
    from cxrkit.models.safe_pickle import read_weights

    if arch not in ARCHS:
        raise did_you_mean(arch, ARCHS, what="torchxrayvision --arch")
    spec, path = ARCHS[arch], Path(weights)
    read = read_weights(path)
    state = {k: v.float() if v.is_floating_point() else v for k, v in read.state.items()}
    file_threshs = state.pop("op_threshs", None)
    if state and all(k.startswith("model.") for k in state):  # txv's ResNet wraps torchvision's
        state = {k[len("model.") :]: v for k, v in state.items()}
    _check_family(state, arch, spec, path)
    keep = [j for j in range(18) if spec.trained[j]]
    head = HEADS[spec.backbone]
    for name in (f"{head}.weight", f"{head}.bias"):
        state[name] = state[name][keep].contiguous()
    model = create_model(spec.backbone, len(keep), pretrained=False)
    _check_shapes(model.state_dict(), state, arch, path)
    model.load_state_dict(state, strict=True)
    findings = [canonical_name(TXV_PATHOLOGIES[j], NIH_MAP) for j in keep]
    origin = {"arch": arch, "file": path.name, "sha256": file_sha256(path)}
    card = _card(spec, origin, read.container, findings, keep, file_threshs)
    return ImportResult(write_bundle(model, card, out, onnx=onnx, overwrite=overwrite), card)


def _check_family(state: dict[str, torch.Tensor], arch: str, spec: TxvArch, path: Path) -> None:
    """A UserError unless ``state`` is a ``spec.backbone`` with txv's 18 outputs."""
    found = [f for f, key in SIGNATURES.items() if key in state]
    if spec.backbone not in found:
        if found:
            fits = sorted(a for a, s in ARCHS.items() if s.backbone == found[0])
            raise UserError(
                f"{path} holds {found[0]} weights, not the {spec.backbone} of --arch {arch}: "
                f"use --arch {' or '.join(fits)}"
            )
        raise UserError(
            f"{path} is not a torchxrayvision densenet121 or resnet50 (its keys start "
            f"{', '.join(list(state)[:3]) or '(none)'}; expected e.g. {SIGNATURES[spec.backbone]})"
        )
    rows = state.get(f"{HEADS[spec.backbone]}.weight")
    if rows is None or rows.ndim != 2 or rows.shape[0] != len(TXV_PATHOLOGIES):
        got = "no" if rows is None else f"{rows.shape[0]}"
        raise UserError(
            f"{path} has {got} outputs; torchxrayvision's {spec.backbone} has 18 (its "
            "default pathologies), which --arch maps onto cxrkit's findings"
        )


def _check_shapes(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], arch: str, path: Path
) -> None:
    """Every key of the timm network present with its shape, and nothing else."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or extra or shapes):
        return
    detail = [f"missing {missing[:3]}"] if missing else []
    detail += [f"unexpected {extra[:3]}"] if extra else []
    if shapes:
        key = shapes[0]
        got, want = tuple(state[key].shape), tuple(expected[key].shape)
        stem = key == next(iter(expected)) and got[1:2] != want[1:2]
        hint = " (torchxrayvision models take 1 channel)" if stem else ""
        detail.append(f"{key} is {got}, expected {want}{hint}")
    raise UserError(f"{path} does not fit --arch {arch}: {'; '.join(detail)}")


def _card(
    spec: TxvArch,
    origin: dict[str, str],
    container: str,
    findings: list[str],
    keep: list[int],
    file_threshs: torch.Tensor | None,
) -> dict[str, Any]:
    """The model card of the imported bundle (without the files' entries); ``origin``: the
    ``arch``, the weights ``file`` name and its ``sha256``."""
    from cxrkit.models.checkpoint import new_model_card  # torch: only when importing

    op: list[float | None] | None = list(spec.op_threshs) if spec.op_threshs else None
    method = "torchxrayvision operating point"
    if op is None and file_threshs is not None and file_threshs.numel() == 18:
        op, method = [float(t) for t in file_threshs], f"{method} (op_threshs in the file)"
    values = {}
    for f, j in zip(findings, keep, strict=True):
        t = None if op is None else op[j]
        if t is not None and math.isfinite(t):
            values[f] = float(t)
    thresholds = {
        "method": method,
        "split": "torchxrayvision's own",
        "values": values,
        "note": "txv's op_norm maps each operating point to 0.5: calling sigmoid(logit) >= t "
        "here is txv's call at 0.5; findings without one are called at 0.5",
    }
    normalization = {
        "mean": 0.5,
        "std": 1 / 2048,
        "letterbox_size": spec.input_size,
        "clahe": None,
        "input": "uint8 gray / 255, letterboxed to a square; (x - 0.5) * 2048 is "
        "torchxrayvision's (x / 255) * 2048 - 1024, in [-1024, 1024]",
    }
    training_data = {
        "source": "torchxrayvision",
        "description": spec.description,
        "dataset_names": [DATASETS.get(d, d) for d in spec.datasets],
    }
    origin_entry = {
        "kind": "torchxrayvision",
        **origin,
        "container": container,
        "kept_outputs": [TXV_PATHOLOGIES[j] for j in keep],
        "dropped_outputs": [TXV_PATHOLOGIES[j] for j in range(18) if j not in keep],
        "input_convention": "torchxrayvision: 1 channel, (x / 255) * 2048 - 1024 in "
        "[-1024, 1024], its own pipeline centre-crops to a square and resizes to "
        f"{spec.input_size} px; cxrkit letterboxes (zero padding) instead",
    }
    card = new_model_card(
        findings,
        spec.backbone,
        spec.input_size,
        normalization,
        training_data=training_data,
        thresholds=thresholds if values else None,
        origin=origin_entry,
        licence=LICENCE,
    )
    card.pop("format")  # a bundle card: write_bundle sets its own format
    return {"source_format": "torchxrayvision", **card}
