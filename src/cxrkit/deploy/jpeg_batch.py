"""JPEGs decoded in batches on the predictor's device (nvJPEG on CUDA): ``infer --gpu-decode``.

The decoding threads (:mod:`cxrkit.deploy.batch`) read each file and check its header as the CPU
reader does (:func:`cxrkit.io.images.check_jpeg`: header, pixel count, end-of-image marker, the
minimum side); a JPEG that passes and that nvJPEG handles (8-bit, 1 or 3 components, Huffman
baseline, extended or progressive) becomes a :class:`JpegFile`, anything else is read by
:func:`cxrkit.io.images.read_xray_bytes` there, as without this option. Then, batch by batch:

* one ``torchvision.io.decode_jpeg(list, mode=GRAY, device=...)`` call: libjpeg's and nvJPEG's
  gray output is the luma channel Y, which is what OpenCV's ``IMREAD_GRAYSCALE`` returns;
* the EXIF orientation (read from the bytes by :func:`exif_orientation`) applied on the device:
  torchvision applies it on the CPU only, never with ``device="cuda"``;
* colour JPEGs (3 components) decoded once more as RGB and averaged over 8 x 8 blocks, the
  block means libjpeg's 1/8-scale decode gives the CPU reader, for the gate's
  :func:`~cxrkit.io.images.chroma`;
* letterboxed on the device (:func:`letterbox_on`: OpenCV's ``INTER_AREA`` weights when
  shrinking, bilinear when enlarging), CLAHE on the CPU when the card asks for it;
* the gate's structural checks on the full-size gray image, copied to the CPU, only when the
  model has a gate.

A batch the decoder refuses is decoded image by image, and an image it refuses then is read by
the CPU reader alone: nothing fails a batch. See docs/devices.md for the measured difference
from the CPU path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from cxrkit.data.preprocess import Clahe, prepare_image
from cxrkit.deploy.gate import structural_reasons
from cxrkit.errors import UserError
from cxrkit.io.geometry import letterbox_layout
from cxrkit.io.images import check_jpeg, chroma, read_file, read_xray_bytes, sniff_format
from cxrkit.io.xray import DEFAULT_MAX_PIXELS, MIN_SIDE, ImageReadError, XRay

#: SOF markers nvJPEG decodes: baseline, extended (8-bit), progressive; all Huffman-coded
BATCHED_SOF = frozenset({0xC0, 0xC1, 0xC2})
_APP1, _SOS = 0xE1, 0xDA
_TAG_ORIENTATION = 0x0112


@dataclass(frozen=True)
class JpegFile:
    """A JPEG read and header-checked on the CPU, to be decoded in a batch."""

    name: str
    data: bytes
    colour: bool  # 3 components: its chroma is measured
    orientation: int  # EXIF orientation, 1 (none) to 8


def use_gpu_decode(gpu_decode: bool | None, device: torch.device) -> bool:
    """``gpu_decode`` resolved on ``device``: None (auto) is on for CUDA only; True off CUDA is
    a UserError."""
    if gpu_decode and device.type != "cuda":
        raise UserError(
            f"--gpu-decode on decodes JPEGs on a CUDA GPU, not on {device}; "
            "use --device cuda or --gpu-decode off"
        )
    return device.type == "cuda" if gpu_decode is None else gpu_decode


def read_deferred(path: object, *, modalities: object = None) -> JpegFile | XRay:
    """The file at ``path`` as a :class:`JpegFile` when it can be decoded in a batch, else read
    by the CPU reader (``modalities`` as :func:`~cxrkit.io.images.read_xray`; its errors)."""
    name, data = str(path), read_file(path)  # type: ignore[arg-type]
    if sniff_format(data) == "JPEG":
        try:
            head = check_jpeg(data, name, DEFAULT_MAX_PIXELS)
        except ImageReadError:
            head = None  # the CPU reader raises the same error
        if (
            head is not None
            and head.sof in BATCHED_SOF
            and head.precision == 8
            and head.components in (1, 3)
            and min(head.height, head.width) >= MIN_SIDE
        ):
            return JpegFile(name, data, head.components == 3, exif_orientation(data, head.scan))
    return read_xray_bytes(data, name=name, modalities=modalities)  # type: ignore[arg-type]


def exif_orientation(data: bytes, scan: int) -> int:
    """The Orientation tag (1-8) of the first APP1 Exif segment before ``scan``; 1 without."""
    i = 2
    while i + 4 <= scan:
        if data[i + 1] == 0xFF:  # fill byte
            i += 1
            continue
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if data[i + 1] == _APP1 and data[i + 4 : i + 10] == b"Exif\0\0":
            return _tiff_orientation(data[i + 10 : end])
        i = end
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)  # type: ignore[arg-type]
    count = int.from_bytes(tiff[ifd : ifd + 2], order)  # type: ignore[arg-type]
    for k in range(count):
        entry = tiff[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
        if len(entry) == 12 and int.from_bytes(entry[:2], order) == _TAG_ORIENTATION:  # type: ignore[arg-type]
            value = int.from_bytes(entry[8:10], order)  # type: ignore[arg-type]
            return value if 1 <= value <= 8 else 1
    return 1


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """``(C, H, W)`` as stored -> as displayed under EXIF ``orientation`` (1-8)."""
    if orientation >= 5:  # the transposed ones
        image = image.transpose(-2, -1)
    flips = {2: (-1,), 3: (-2, -1), 4: (-2,), 6: (-1,), 7: (-2, -1), 8: (-2,)}.get(orientation)
    return image.flip(flips) if flips else image


@lru_cache(maxsize=256)
def _area_taps(src: int, dst: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's ``INTER_AREA`` weights (``computeResizeAreaTab``) from ``src`` to ``dst < src``
    samples: ``(dst, K)`` source indices and float32 weights (0 for unused taps)."""
    scale = src / dst
    f1 = np.arange(dst) * scale
    f2 = f1 + scale
    cell = np.minimum(scale, src - f1)
    s2 = np.minimum(np.floor(f2), src - 1).astype(np.int64)
    s1 = np.minimum(np.ceil(f1).astype(np.int64), s2)
    taps = np.arange(int(np.ceil(scale)) + 2)
    index = s1[:, None] - 1 + taps[None]
    lead = np.where(s1 - f1 > 1e-3, (s1 - f1) / cell, 0.0)
    trail = np.where(np.minimum(f2, src) - s2 > 1e-3, np.minimum(np.minimum(f2 - s2, 1.0), cell), 0)
    weight = np.select(
        [index == s1[:, None] - 1, index < s2[:, None], index == s2[:, None]],
        [lead[:, None], 1.0 / cell[:, None], (trail / cell)[:, None]],
        0.0,
    )
    index = np.clip(index, 0, src - 1)
    return torch.from_numpy(index).to(device), torch.from_numpy(weight).float().to(device)


def _area(image: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
    """``(H, W)`` float32 -> ``(new_h, new_w)`` with area weights, along the width first."""
    index, weight = _area_taps(image.shape[1], new_w, image.device)
    rows = (image[:, index] * weight).sum(-1)
    index, weight = _area_taps(image.shape[0], new_h, image.device)
    return (rows[index] * weight[..., None]).sum(1)


def letterbox_on(gray: torch.Tensor, size: int) -> torch.Tensor:
    """``(H, W)`` uint8 on any device -> ``(size, size)`` uint8 there, placed as
    :func:`cxrkit.io.geometry.letterbox` places it (its geometry, zero padding)."""
    height, width = gray.shape
    scale, new_h, new_w, pad_y, pad_x = letterbox_layout(height, width, size)
    if (new_h, new_w) == (height, width):
        resized = gray
    else:
        x = gray.float()
        if scale < 1:
            x = _area(x, new_h, new_w)
        else:
            x = F.interpolate(x[None, None], (new_h, new_w), mode="bilinear")[0, 0]
        resized = (x + 0.5).floor_().clamp_(0, 255).to(torch.uint8)
    out = torch.zeros((size, size), dtype=torch.uint8, device=gray.device)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return out


def _decoded(files: Sequence[JpegFile], mode: str, device: torch.device) -> list[object]:
    """Each file decoded (``(C, H, W)`` uint8 on ``device``) in one call, or image by image
    when the batch fails; None for a file the decoder refuses."""
    from torchvision.io import decode_jpeg

    if not files:
        return []
    tensors = [torch.frombuffer(bytearray(f.data), dtype=torch.uint8) for f in files]
    try:
        return list(decode_jpeg(tensors, mode=mode, device=device))
    except RuntimeError:
        out: list[object] = []
        for t in tensors:
            try:
                out.append(decode_jpeg([t], mode=mode, device=device)[0])
            except RuntimeError:
                out.append(None)
        return out


def colour_of(rgb: torch.Tensor, orientation: int) -> float:
    """``(3, H, W)`` uint8 -> :func:`~cxrkit.io.images.chroma` of its 8 x 8 block means (the
    CPU reader measures a 1/8-scale decode: the same block means, rounded)."""
    blocks = F.avg_pool2d(rgb[None].float(), 8, ceil_mode=True)[0]
    reduced = orient((blocks + 0.5).floor_().to(torch.uint8), orientation)
    return chroma(reduced.permute(1, 2, 0).cpu().numpy())


class Pending(Protocol):
    """What :func:`decode_pending` fills in: :class:`cxrkit.deploy.batch.Item`."""

    jpeg: JpegFile | None
    pixels: object
    error: str | None
    checks: list[str]


def decode_pending(
    items: Sequence[Pending], size: int, clahe: Clahe | None, checks: bool, device: torch.device
) -> None:
    """Decode the items holding a :class:`JpegFile`, in place: ``pixels`` ``(1, size, size)``
    uint8 on ``device`` (numpy when the CPU reader took over), ``checks`` the gate's
    structural reasons (with ``checks``), or ``error``."""
    pending = [it for it in items if it.jpeg is not None]
    if not pending:
        return
    files = [it.jpeg for it in pending]
    grays = _decoded(files, "GRAY", device)  # type: ignore[arg-type]
    colour = [k for k, f in enumerate(files) if f.colour and grays[k] is not None]  # type: ignore[union-attr]
    rgbs = dict(zip(colour, _decoded([files[k] for k in colour], "RGB", device), strict=True))
    for k, (it, f, gray) in enumerate(zip(pending, files, grays, strict=True)):
        it.jpeg = None
        if gray is None or (k in rgbs and rgbs[k] is None):
            _on_cpu(it, f, size, clahe, checks)
            continue
        image = orient(gray, f.orientation)[0]  # type: ignore[arg-type]
        square = letterbox_on(image, size)
        if clahe is not None:
            square = torch.from_numpy(clahe.apply(square.cpu().numpy())).to(device)
        it.pixels = square[None]
        if checks:
            tint = colour_of(rgbs[k], f.orientation) if k in rgbs else 0.0  # type: ignore[arg-type]
            it.checks = structural_reasons(
                XRay(image.cpu().numpy(), f.name, "JPEG", 8, None, None, tint)
            )


def _on_cpu(it: Pending, f: JpegFile, size: int, clahe: Clahe | None, checks: bool) -> None:
    """``it`` decoded by the CPU reader, as without batched decoding."""
    try:
        xray = read_xray_bytes(f.data, name=f.name)
    except ImageReadError as err:
        it.error = err.reason
        return
    it.pixels = prepare_image(xray.pixels, size, clahe)[None]
    it.checks = structural_reasons(xray) if checks else []


def batch_pixels(
    items: Sequence[Pending], size: int, clahe: Clahe | None, checks: bool, device: torch.device
) -> tuple[list[Pending], torch.Tensor | None]:
    """The items decoded (:func:`decode_pending`) and ``(N, 1, size, size)`` uint8 pixels of
    the ``N`` that were (None when none was): on the CPU when none was decoded in a batch
    (the predictor moves them), else on ``device``."""
    decode_pending(items, size, clahe, checks, device)
    good = [it for it in items if it.pixels is not None]
    return good, _stacked([it.pixels for it in good], device) if good else None


def _stacked(pixels: Sequence[object], device: torch.device) -> torch.Tensor:
    arrays = [k for k, p in enumerate(pixels) if isinstance(p, np.ndarray)]
    if len(arrays) == len(pixels):
        return torch.from_numpy(np.stack(pixels))  # type: ignore[arg-type]
    tensors = [p for p in pixels if isinstance(p, torch.Tensor)]
    out = torch.empty((len(pixels), *tensors[0].shape), dtype=torch.uint8, device=device)
    if arrays:
        out[arrays] = torch.from_numpy(np.stack([pixels[k] for k in arrays])).to(device)  # type: ignore[misc]
    for k, p in enumerate(pixels):
        if isinstance(p, torch.Tensor):
            out[k] = p
    return out
