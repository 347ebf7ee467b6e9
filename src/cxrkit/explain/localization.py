"""Localisation scores of CAM heatmaps against bounding boxes (NIH ``BBox_List_2017.csv``).

Coordinates are continuous and corner-based in original-image pixels: pixel ``(r, c)`` spans
``[c, c + 1) x [r, r + 1)`` and its centre is ``(c + 0.5, r + 0.5)``. A box ``[x, y, w, h]``
covers the pixels whose centre lies in ``[x, x + w) x [y, y + h)``.

* **Pointing game** (Zhang et al., 2016): a hit when the heatmap's maximum (see :func:`peak`
  for ties) has its centre inside any box of the finding on the image, or within
  ``tolerance`` pixels (Euclidean) of one. The hit rate is hits / evaluated.
* **IoU of the top k%**: the mask of the ``ceil(k/100 * H * W)`` highest heatmap pixels (ties
  broken in row-major order) against the union of the finding's boxes on the image.

A (image, finding) pair is evaluated only when the model calls the finding positive on the
image at the card's thresholds; the others are counted as skipped.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cxrkit.data.labels import NIH_MAP
from cxrkit.deploy.predictor import Predictor
from cxrkit.deploy.sources import resolve_sources
from cxrkit.errors import UserError
from cxrkit.explain.cam import cam_targets, heatmaps, resolve_method
from cxrkit.explain.layers import CamLayer, describe_layers
from cxrkit.files import claim_folder, write_json
from cxrkit.io.images import read_xray
from cxrkit.io.xray import ImageReadError

BOX_COLUMNS = ["image", "finding", "x", "y", "w", "h"]
PER_IMAGE_COLUMNS = [
    "method",
    "image",
    "finding",
    "status",
    "n_boxes",
    "probability",
    "hit",
    "iou",
    "peak_row",
    "peak_col",
]
Summary = dict[str, dict[str, float | int | None]]


def read_boxes(path: str | Path) -> pd.DataFrame:
    """An NIH-format box list (``Image Index,Finding Label,Bbox [x,y,w,h],,,``; ``.gz`` too)
    as a table with :data:`BOX_COLUMNS`. Trailing empty columns and blank lines are ignored;
    NIH spellings become canonical ones (``Infiltrate`` -> ``Infiltration``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--boxes {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", newline="") as fh:  # type: ignore[operator]
        for line_no, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or (line_no == 1 and cells[0] == "Image Index"):
                continue
            try:
                x, y, w, h = (float(v) for v in cells[2:6])
            except ValueError:
                raise UserError(
                    f"{path}, line {line_no}: expected image,finding,x,y,w,h; got {row!r}"
                ) from None
            rows.append((cells[0], NIH_MAP.get(cells[1], cells[1]), x, y, w, h))
    return pd.DataFrame(rows, columns=BOX_COLUMNS)


def box_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool: the union of ``boxes`` ``(K, 4)`` ``[x, y, w, h]`` (pixel centres in)."""
    rows = np.arange(shape[0])[:, None] + 0.5
    cols = np.arange(shape[1])[None, :] + 0.5
    mask = np.zeros(shape, bool)
    for x, y, w, h in np.asarray(boxes, np.float64).reshape(-1, 4):
        mask |= (rows >= y) & (rows < y + h) & (cols >= x) & (cols < x + w)
    return mask


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the heatmap's maximum. When several pixels share it (a plateau, e.g.
    the border cells of a coarse map upsampled with edge replication), the tied pixel nearest
    to their centroid (the first in row-major order if still tied)."""
    rows, cols = np.nonzero(heatmap == heatmap.max())
    k = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return int(rows[k]), int(cols[k])


def pointing_hit(heatmap: np.ndarray, boxes: np.ndarray, *, tolerance: float = 0.0) -> bool:
    """Whether the centre of :func:`peak` lies in (or within ``tolerance`` px of) a box."""
    r, c = peak(heatmap)
    py, px = r + 0.5, c + 0.5
    for x, y, w, h in np.asarray(boxes, np.float64).reshape(-1, 4):
        inside = x <= px < x + w and y <= py < y + h
        dx, dy = max(x - px, 0.0, px - (x + w)), max(y - py, 0.0, py - (y + h))
        if inside or (tolerance > 0 and math.hypot(dx, dy) <= tolerance):
            return True
    return False


def top_mask(heatmap: np.ndarray, top_percent: float) -> np.ndarray:
    """``(H, W)`` bool: the ``ceil(top_percent/100 * H * W)`` highest pixels (at least one)."""
    if not 0 < top_percent <= 100:
        raise UserError(f"--top-percent must be in (0, 100], got {top_percent}")
    flat = heatmap.ravel()
    n = max(1, math.ceil(top_percent / 100 * flat.size))
    mask = np.zeros(flat.size, bool)
    mask[np.argsort(-flat, kind="stable")[:n]] = True
    return mask.reshape(heatmap.shape)


def top_iou(heatmap: np.ndarray, boxes: np.ndarray, top_percent: float) -> float:
    """IoU of :func:`top_mask` with the union of ``boxes`` ``(K, 4)``; 0 when both are empty."""
    a, b = top_mask(heatmap, top_percent), box_mask(boxes, heatmap.shape)
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 0.0


def read_image_list(path: str | Path) -> set[str]:
    """Image file names, one per line (e.g. NIH's ``test_list.txt``); folders are dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--split-file {path} does not exist")
    return {Path(line.strip()).name for line in path.read_text().splitlines() if line.strip()}


@dataclass
class LocalizationResult:
    """``summary[method][finding]`` (and ``"all"``) metrics, one row per image, finding and
    method (``status`` ``ok`` or the reason it was skipped), and the CAM layers hooked
    (several: their maps were fused)."""

    summary: dict[str, Summary]
    per_image: pd.DataFrame
    layers: list[CamLayer]


def evaluate_localization(
    predictor: Predictor,
    boxes: pd.DataFrame,
    images: str | Path,
    *,
    methods: Sequence[str] = ("gradcam",),
    top_percent: float = 10.0,
    tolerance: float = 0.0,
    image_ids: set[str] | None = None,
    layers: Sequence[str] | None = None,
    progress: bool = True,
) -> LocalizationResult:
    """Score each method's heatmaps on every (image, finding) pair of ``boxes`` (restricted to
    ``image_ids`` when given) whose image is found under ``images`` (by file name, recursive)
    and whose finding the model calls positive, on the CAM layers named ``layers`` (default:
    see :mod:`cxrkit.explain.layers`)."""
    methods = [resolve_method(m) for m in methods]
    hooked = [layer for layer, _ in cam_targets(predictor, layers)]
    top_mask(np.zeros((1, 1)), top_percent)  # validates top_percent before any work
    if image_ids is not None:
        boxes = boxes[boxes["image"].isin(image_ids)]
    if boxes.empty:
        raise UserError("no boxes to evaluate (none in the file, or none on the listed images)")
    if not Path(images).is_dir():
        raise UserError(f"--images {images} is not a folder")
    index = {p.name: p for p in resolve_sources(images)}
    rows: list[dict[str, object]] = []
    groups = boxes.groupby("image", sort=True)
    for name, group in tqdm(groups, desc="localization", unit="img", disable=not progress):
        by_finding = {f: g[["x", "y", "w", "h"]].to_numpy() for f, g in group.groupby("finding")}
        status = {f: "image_missing" for f in by_finding}
        if name in index:
            try:
                pixels = read_xray(index[name]).pixels
                status = _calls(predictor, pixels, list(by_finding))
            except ImageReadError:
                status = {f: "unreadable" for f in by_finding}
        todo = [f for f, s in status.items() if s == "ok"]
        for method in methods:
            rows += [
                {
                    "method": method,
                    "image": name,
                    "finding": f,
                    "status": s,
                    "n_boxes": len(by_finding[f]),
                }
                for f, s in status.items()
                if s != "ok"
            ]
            found = heatmaps(predictor, pixels, todo, method=method, layers=layers) if todo else []
            for r in found:
                rows.append(
                    {
                        "method": method,
                        "image": name,
                        "finding": r.finding,
                        "status": "ok",
                        **_scores(r.heatmap, by_finding[r.finding], top_percent, tolerance),
                        "probability": r.probability,
                    }
                )
    table = pd.DataFrame(rows, columns=PER_IMAGE_COLUMNS)
    summary = {m: summarise(table[table["method"] == m]) for m in methods}
    return LocalizationResult(summary, table, hooked)


def _scores(
    heatmap: np.ndarray, boxes: np.ndarray, top_percent: float, tolerance: float
) -> dict[str, object]:
    """The per-pair columns of :attr:`LocalizationResult.per_image` for one heatmap."""
    row, col = peak(heatmap)
    return {
        "n_boxes": len(boxes),
        "hit": pointing_hit(heatmap, boxes, tolerance=tolerance),
        "iou": top_iou(heatmap, boxes, top_percent),
        "peak_row": row,
        "peak_col": col,
    }


def _calls(predictor: Predictor, pixels: np.ndarray, findings: list[str]) -> dict[str, str]:
    """``ok`` for each finding the model calls positive on ``pixels``, else why not."""
    probs = predictor.predict_batch(torch.from_numpy(predictor.preprocess(pixels)[None]))
    called = predictor.calls(probs)[0]
    names = predictor.findings
    return {
        f: "not_in_model" if f not in names else "ok" if called[names.index(f)] else "not_predicted"
        for f in findings
    }


def summarise(table: pd.DataFrame) -> Summary:
    """Per finding (and ``all``): pairs evaluated, pointing-game hit rate, mean top-k% IoU
    (None when nothing was evaluated) and ``skipped_<reason>`` counts, from one method's rows
    of :attr:`LocalizationResult.per_image`."""
    out: Summary = {}
    for name in [*sorted(set(table["finding"])), "all"]:
        t = table if name == "all" else table[table["finding"] == name]
        ok = t[t["status"] == "ok"]
        entry: dict[str, float | int | None] = {
            "pairs": len(t),
            "evaluated": len(ok),
            "pointing_game": float(ok["hit"].astype(float).mean()) if len(ok) else None,
            "iou_top": float(ok["iou"].astype(float).mean()) if len(ok) else None,
        }
        for reason, count in t.loc[t["status"] != "ok", "status"].value_counts().items():
            entry[f"skipped_{reason}"] = int(count)
        out[name] = entry
    return out


def write_localization(
    result: LocalizationResult, out_dir: str | Path, settings: dict[str, object]
) -> Path:
    """Write ``localization.json`` (``settings`` + summary) and ``per_image.csv``."""
    out = Path(out_dir)
    claim_folder(out, "localisation", resume=True)
    result.per_image.to_csv(out / "per_image.csv", index=False)
    path = out / "localization.json"
    layers = [{"name": layer.name, "grid": list(layer.grid)} for layer in result.layers]
    document = {**settings, "layers": layers, "methods": result.summary}
    write_json(path, document)
    return path


def format_table(result: LocalizationResult, top_percent: float) -> str:
    """A text table: one line per method and finding, under a line naming the CAM layers."""
    title = f"CAM layers: {describe_layers(result.layers)}\n"
    head = f"{'Method':<10} {'Finding':<16} {'pairs':>6} {'eval':>5} {'pointing':>9} "
    lines = [head + f"{f'IoU@{top_percent:g}%':>9}"]
    for method, summary in result.summary.items():
        for finding, m in summary.items():
            pg, iou = m["pointing_game"], m["iou_top"]
            lines.append(
                f"{method:<10} {finding:<16} {m['pairs']:>6} {m['evaluated']:>5} "
                f"{'n/a' if pg is None else f'{pg:.3f}':>9} "
                f"{'n/a' if iou is None else f'{iou:.3f}':>9}"
            )
    return title + "\n".join(lines)
