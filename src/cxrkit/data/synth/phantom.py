"""Draw one phantom frontal chest radiograph: anatomy, acquisition and findings.

Anatomy and lesions live in a canonical frame ``(u, v)`` spanning ``[-1, 1]``: ``u`` grows to
the image right (the patient's left, where the heart points), ``v`` grows downward. An
:class:`Acquisition` maps that frame to pixels (patient size, small rotation and shift) and sets
the exposure. :func:`render` is a pure function of its arguments, so the same anatomy can be
drawn with and without a finding.

Brightness is built additively as a float32 image (bright = attenuating): large smooth
structures on a half-resolution canvas, bones, lung markings and small lesions at full
resolution; then noise, a slight blur and a window/gamma look-up table give the 8-bit image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from threading import local
from typing import NamedTuple

import cv2
import numpy as np

FINDINGS: tuple[str, ...] = tuple(
    "Atelectasis Cardiomegaly Consolidation Effusion Mass Nodule Pneumothorax".split()
)
_AIR = 0.34  # brightness removed by fully aerated lung
_SHIFT = 4  # fractional bits of the integer point coordinates handed to OpenCV
_SPARE = local()  # per thread and canvas size: float32 buffers reused by every render


def points(text: str) -> np.ndarray:
    """Parse ``"u v u v ..."`` into an ``(n, 2)`` float array."""
    return np.array(text.split(), float).reshape(-1, 2)


@dataclass(frozen=True)
class Anatomy:
    """One patient's body in canonical units, shared by all of the patient's images.

    ``lungs`` holds the two lung outlines (image left first) as ``(2, n, 2)`` ``(u, v)``
    points; ``bones`` the outlines of the posterior ribs, their cores, the anterior
    ribs, clavicles and vertebrae, each ``(k, m, 2)``; ``vessels`` the lung markings by
    branching generation (thick to thin), each ``(k, 3, 2)``.
    """

    scale: float  # patient size relative to the field of view
    body: float  # half-width of the body outline
    chest: float  # half-width of the rib cage (lateral lung walls)
    apex: float  # v of the lung apices
    cp: float  # v of the costophrenic angles
    dome: float  # v of the highest diaphragm dome
    heart: tuple[float, float, float, float]  # centre u, top v, cardiothoracic ratio, tilt (deg)
    tissue: float  # soft-tissue brightness
    female: bool
    lungs: np.ndarray
    bones: tuple[np.ndarray, ...]
    vessels: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class Acquisition:
    """How one image was taken: view, pose, exposure and the seed of its noise."""

    view: str  # "PA" or "AP"
    zoom: float  # canonical -> frame scale (patient size, AP magnification)
    angle: float  # in-plane rotation in degrees
    shift: tuple[float, float]  # translation in canonical units
    level: float  # window offset
    contrast: float
    gamma: float
    noise: float  # noise standard deviation, brightness units
    marker: bool  # side marker "R" (top left) if True, else "L" (top right)
    seed: int


@dataclass(frozen=True)
class Lesion:
    """One finding instance. ``side`` is -1 (image left), +1 (image right) or 0 (both sides).

    ``u, v`` is its centre, ``size`` its radius (Nodule, Mass, Consolidation), length
    (Atelectasis), fluid height (Effusion), collapse fraction (Pneumothorax) or the
    cardiothoracic ratio (Cardiomegaly); ``strength`` scales its contrast; ``seed`` its shape.
    """

    name: str
    side: int
    u: float
    v: float
    size: float
    strength: float
    seed: int


class Box(NamedTuple):
    """A finding's bounding box in pixels of the rendered image."""

    label: str
    x: float
    y: float
    w: float
    h: float


def smooth(lines: np.ndarray, iterations: int, closed: bool = True) -> np.ndarray:
    """Smooth polylines ``(..., n, 2)`` by corner cutting; returns ``(..., m, 2)``, m > n."""
    for _ in range(iterations):
        if closed:
            cur, nxt = lines, np.roll(lines, -1, -2)
        else:
            cur, nxt = lines[..., :-1, :], lines[..., 1:, :]
        cut = np.empty((*cur.shape[:-2], 2 * cur.shape[-2], 2))
        cut[..., 0::2, :], cut[..., 1::2, :] = 0.75 * cur + 0.25 * nxt, 0.25 * cur + 0.75 * nxt
        if not closed:
            cut = np.concatenate([lines[..., :1, :], cut, lines[..., -1:, :]], -2)
        lines = cut
    return lines


_ANGLES = np.linspace(0, 2 * np.pi, 48, endpoint=False)
_CIRCLE48 = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], 1)  # unit circle, (48, 2)
_CIRCLE = _CIRCLE48[::2]


def heart_outline(anatomy: Anatomy, ctr: float, view: str) -> np.ndarray:
    """The heart silhouette, a tilted ellipse whose width is ``ctr`` of the chest; ``(48, 2)``."""
    hu, top, normal, tilt = anatomy.heart
    half = ctr * anatomy.chest * (1.05 if view == "AP" else 1.0)
    c, s = np.cos(np.radians(tilt)), np.sin(np.radians(tilt))
    a = half / np.hypot(c, 0.65 * s)
    x, y = a * _CIRCLE48[:, 0], 0.65 * a * _CIRCLE48[:, 1]
    centre = (hu + 0.4 * (half - normal * anatomy.chest), top + a * np.hypot(s, 0.65 * c))
    return np.stack([centre[0] + x * c - y * s, centre[1] + x * s + y * c], 1)


def _ellipse(cu: float, cv: float, a: float, b: float) -> np.ndarray:
    """An axis-aligned ellipse outline, ``(24, 2)`` canonical points."""
    return _CIRCLE * [a, b] + [cu, cv]


class _Frame:
    """Maps canonical points to pixel coordinates of an ``n x n`` canvas and draws there.

    Canvases come from buffers kept between renders (fresh memory costs page faults); a frame
    hands each buffer out once, so canvases of one render never alias.
    """

    def __init__(self, acq: Acquisition, n: int) -> None:
        c, s = np.cos(np.radians(acq.angle)), np.sin(np.radians(acq.angle))
        self.n, self.px_per_unit = n, n / 2 * acq.zoom
        self.m = self.px_per_unit * np.array([[c, -s], [s, c]])
        self.t = n / 2 * (1 + np.asarray(acq.shift)) - 0.5
        self.spare: list[np.ndarray] = _SPARE.__dict__.setdefault(n, [])
        self.used = 0

    def px(self, pts: np.ndarray) -> np.ndarray:
        """``(..., 2)`` canonical points -> ``(..., 2)`` pixel coordinates."""
        return pts @ self.m.T + self.t

    def cv(self, pts: np.ndarray) -> np.ndarray:
        """``(..., 2)`` canonical points -> int32 fixed-point pixel coordinates for OpenCV."""
        return np.round(self.px(pts) * (1 << _SHIFT)).astype(np.int32)

    def thick(self, length: float) -> int:
        """A canonical line width in whole pixels (at least 1)."""
        return max(1, round(length * self.px_per_unit))

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Canonical ``u`` of each column ``(1, n)`` and ``v`` of each row ``(n, 1)``, float32,
        ignoring the small rotation (for smooth, large-scale shading only)."""
        centres = np.arange(self.n, dtype=np.float32)
        u = (centres - float(self.t[0])) / self.px_per_unit
        v = (centres - float(self.t[1])) / self.px_per_unit
        return u[None, :], v[:, None]

    def canvas(self) -> np.ndarray:
        """A blank ``(n, n)`` float32 canvas, not handed out before by this frame."""
        if self.used == len(self.spare):
            self.spare.append(np.empty((self.n, self.n), np.float32))
        self.used += 1
        self.spare[self.used - 1].fill(0)
        return self.spare[self.used - 1]

    def fill(self, shapes: Sequence[tuple[np.ndarray, float]], blur: float) -> np.ndarray:
        """Rasterise ``(polygons, value)`` pairs, polygons ``(k, m, 2)`` canonical and not
        overlapping each other, in order (later pairs overwrite) on a blank canvas, then blur
        by ``blur`` canonical units."""
        canvas = self.canvas()
        for polygons, value in shapes:
            cv2.fillPoly(canvas, list(self.cv(polygons)), value, cv2.LINE_8, _SHIFT)
        return self.blur(canvas, blur)

    def lines(self, canvas: np.ndarray, lines: np.ndarray, value: float, width: float) -> None:
        """Draw open polylines ``(k, m, 2)`` (canonical) of canonical ``width``."""
        pts = list(self.cv(lines))
        cv2.polylines(canvas, pts, False, value, self.thick(width), cv2.LINE_8, _SHIFT)

    def discs(self, canvas: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> None:
        """Fill discs of value 1 at ``(k, 2)`` canonical ``centres`` with ``(k,)`` radii."""
        for (x, y), r in zip(self.cv(centres), radii * self.px_per_unit * 16, strict=True):
            cv2.circle(canvas, (int(x), int(y)), int(r), 1.0, -1, cv2.LINE_8, _SHIFT)

    def blur(self, canvas: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian blur in place by ``sigma`` canonical units (none below a third of a pixel)."""
        s = sigma * self.px_per_unit
        return cv2.GaussianBlur(canvas, (0, 0), s, dst=canvas) if s > 0.33 else canvas


def _box(label: str, mask: np.ndarray) -> list[Box]:
    """The bounding box of a boolean ``(n, n)`` mask, or nothing if it is empty."""
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    return [Box(label, float(x), float(y), float(w), float(h))] if w and h else []


_BODY = points("-0.3 -1.4 -0.6 -1.1 -0.85 -1.02 -1.0 -0.85 -1.03 -0.55 -1.0 0.1 -0.97 1.4")
_AIRWAY = smooth(
    points("-.04 -1.3 .04 -1.3 .045 -.33 .17 -.14 .13 -.11 0 -.26 -.11 -.13 -.15 -.16 -.045 -.33"),
    1,
)
_SCAPULA = points("0.55 -0.78 0.88 -0.72 0.72 -0.2")
_VESSEL_STYLE = ((0.07, 0.016), (0.055, 0.011), (0.045, 0.007), (0.035, 0.004))  # value, width


def _coarse_layers(
    anatomy: Anatomy, acq: Acquisition, lesions: dict[str, Lesion], f: _Frame
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, np.ndarray]]]:
    """The smooth anatomy on an ``(m, m)`` canvas: brightness, lung air left after opacities
    and, per coarse finding instance (Effusion per side, Consolidation), its label
    and the ``(m, m)`` air it removed."""
    u, v = f.axes()
    half = _BODY * [anatomy.body, 1]
    shapes = [(np.vstack([half, half[::-1] * [-1, 1]])[None], 1.0)]  # the body outline, then
    if anatomy.female:  # breast shadows,
        breasts = [_ellipse(s * 0.5, anatomy.cp - 0.15, 0.32, 0.24) for s in (-1, 1)]
        shapes.append((np.array(breasts), 1.1))
    if acq.view == "AP":  # scapulae over the upper lungs,
        shapes.append((np.array([_SCAPULA, _SCAPULA * [-1, 1]]), 1.07))
    shapes.append((np.array([_ellipse(s * 0.2, -0.02, 0.06, 0.1) for s in (-1, 1)]), 1.07))
    bubble = _ellipse(0.35, anatomy.dome + 0.14, 0.1, 0.05)  # hila, airway, gastric bubble
    body = f.fill([*shapes, (_AIRWAY[None], 0.88), (bubble[None], 0.88)], 0.02)
    cardio = lesions.get("Cardiomegaly")
    heart = heart_outline(anatomy, cardio.size if cardio else anatomy.heart[2], acq.view)
    knob = _ellipse(anatomy.heart[0], -0.33, 0.075, 0.075)  # the aortic knob
    lung = f.fill([(anatomy.lungs, 1.0), (heart[None], 0.0), (knob[None], 0.0)], 0.01)
    lateral = 0.8 + 0.25 * np.minimum(np.abs(u) / anatomy.chest, 1)
    air = lung * (_AIR * lateral * (1 - 0.4 * np.exp((anatomy.apex - v) / 0.16)))
    removed = []
    effusion = lesions.get("Effusion")
    for side in (-1, 1) if effusion else ():
        if effusion.side in (0, side):
            wall = np.clip((np.abs(u) - 0.1) / (anatomy.chest - 0.1), 0, 1)
            level = anatomy.dome + 0.1 - effusion.size - 0.3 * wall**2.5  # meniscus
            fluid = np.clip((v - level) / 0.08, 0, 0.95) * (u * side > 0)
            removed.append(("Effusion", (air + 0.04 * lung) * fluid))
            air = air - removed[-1][1]
    consolidation = lesions.get("Consolidation")
    if consolidation:
        rng, size = np.random.default_rng(consolidation.seed), consolidation.size
        patches = f.canvas()
        centres = rng.normal(0, 0.45 * size, (8, 2)) + [consolidation.u, consolidation.v]
        f.discs(patches, centres, rng.uniform(0.3, 0.6, 8) * size)
        opacity = np.minimum(f.blur(patches, 0.035), 1) * 0.8 * min(consolidation.strength, 1)
        removed.append(("Consolidation", air * opacity))
        air = air - removed[-1][1]
    thickness = 0.2 * np.sqrt(np.clip(1 - (u / anatomy.body) ** 2, 0, 1))
    across = anatomy.tissue + thickness + 0.12 * np.exp(-((u - 0.02) ** 2) / 0.025)
    bright = body * (across + 0.2 * np.clip((v - anatomy.cp + 0.1) / 0.4, 0, 1))
    return bright - air, air, removed


def _bones(anatomy: Anatomy, acq: Acquisition, f: _Frame) -> np.ndarray:
    """Ribs, clavicles and vertebrae as an ``(n, n)`` float32 brightness layer."""
    posterior, core, anterior, clavicles, vertebrae = anatomy.bones
    clavicles = clavicles - [0, 0.07] if acq.view == "AP" else clavicles
    bones = f.fill([(posterior, 0.08), (core, 0.055), (clavicles, 0.09), (vertebrae, 0.06)], 0)
    bones += f.fill([(anterior, 0.03)], 0)  # anterior ribs cross the posterior ones
    return bones


def _small_lesion(lesion: Lesion, anatomy: Anatomy, f: _Frame) -> tuple[np.ndarray, np.ndarray]:
    """A full-resolution finding: ``(n, n)`` brightness added and ``(n, n)`` extent mask.

    Pneumothorax adds negative brightness (lucency) and a bright pleural line."""
    rng = np.random.default_rng(lesion.seed)
    canvas = f.canvas()
    centre, r = np.array([lesion.u, lesion.v]), lesion.size
    if lesion.name in ("Nodule", "Mass"):
        if lesion.name == "Nodule":
            f.discs(canvas, centre[None], np.array([r]))
        else:  # lobulated: four overlapping lobes
            f.discs(canvas, centre + rng.normal(0, 0.3 * r, (4, 2)), r * rng.uniform(0.6, 0.8, 4))
        layer = f.blur(canvas, 0.25 * r)
        contrast = 0.27 if lesion.name == "Nodule" else 0.25
        return contrast * lesion.strength * layer, layer > 0.3
    if lesion.name == "Atelectasis":
        ang = np.radians(rng.uniform(-25, 25))
        axis = np.array([np.cos(ang), np.sin(ang)]) * r / 2
        if rng.random() < 0.6:  # plate-like band
            band = np.stack([centre - axis, centre + [0, rng.normal(0, 0.02)], centre + axis])
            f.lines(canvas, smooth(band[None], 2, False), 1.0, rng.uniform(0.04, 0.06))
        else:  # wedge with its base on the lateral chest wall
            base = np.array([lesion.side * (anatomy.chest + 0.05), lesion.v])
            tip = base + [-lesion.side * r * 1.3, rng.normal(0, 0.05)]
            wedge = np.stack([tip, base - [0, 0.6 * r], base + [0, 0.6 * r]])
            cv2.fillPoly(canvas, [f.cv(wedge)], 1.0, cv2.LINE_8, _SHIFT)
        layer = f.blur(canvas, 0.012)
        return 0.22 * lesion.strength * layer, layer > 0.3
    lung = anatomy.lungs[int(lesion.side > 0)]  # Pneumothorax: the lung collapses medially
    pull = np.clip((anatomy.dome - lung[:, 1:]) / 0.25, 0, 1) * lesion.size
    collapsed = lung + pull * (np.array([lesion.side * 0.2, anatomy.dome]) - lung)
    rim = f.fill([(lung[None], 1.0), (collapsed[None], 0.0)], 0.006)
    start = int(np.argmax(lung[:, 1]))  # begin the outline at its lowest point
    edge = np.roll(collapsed, -start, 0)[np.roll(pull[:, 0], -start) > 0.3 * lesion.size]
    f.lines(canvas, edge[None], 1.0, 0.008)
    line = f.blur(canvas, 0.004)
    return 0.2 * line - _AIR * 0.45 * lesion.strength * rim, (rim > 0.3) | (line > 0.3)


def render(
    anatomy: Anatomy, acq: Acquisition, lesions: Sequence[Lesion], size: int
) -> tuple[np.ndarray, list[Box]]:
    """Draw one radiograph: ``(size, size)`` uint8 image and one :class:`Box` per lesion drawn.

    At most one lesion per finding name; a lesion that ends up invisible gets no box.
    """
    by_name = {lesion.name: lesion for lesion in lesions}
    f, fc = _Frame(acq, size), _Frame(acq, size // 2)
    bright_c, air_c, removed_c = _coarse_layers(anatomy, acq, by_name, fc)
    noise = np.random.default_rng(acq.seed).standard_normal(bright_c.shape, dtype=np.float32)
    bright_c += acq.noise * noise  # grain of about two pixels once upsampled

    def up(layer: np.ndarray) -> np.ndarray:
        return cv2.resize(layer, (size, size), f.canvas(), interpolation=cv2.INTER_LINEAR)

    bright, visible = up(bright_c), up(air_c * (1 / _AIR))
    boxes: list[Box] = []
    if "Cardiomegaly" in by_name:
        heart = heart_outline(anatomy, by_name["Cardiomegaly"].size, acq.view)
        heart = f.px(heart[heart[:, 1] < anatomy.dome + 0.1])  # the part above the diaphragm
        (x0, y0), (x1, y1) = np.clip(heart.min(0), 0, size), np.clip(heart.max(0), 0, size)
        boxes.append(Box("Cardiomegaly", float(x0), float(y0), float(x1 - x0), float(y1 - y0)))
    for label, layer in removed_c:
        layer = up(layer)
        boxes += _box(label, layer > 0.3 * layer.max())
        if label == "Consolidation":  # air bronchograms: aerated bronchi inside the opacity
            rng, tubes = np.random.default_rng(by_name[label].seed + 1), f.canvas()
            steps = rng.normal(0, 0.03, (3, 5, 2)) + 0.05 * _CIRCLE[rng.integers(0, 24, 3), None]
            walks = np.cumsum(steps, 1) + [by_name[label].u, by_name[label].v]
            f.lines(tubes, walks, 0.6, 0.012)
            bright -= layer * f.blur(tubes, 0.004)
    vessels = f.canvas()
    for lines, (value, width) in zip(anatomy.vessels, _VESSEL_STYLE, strict=True):
        f.lines(vessels, lines, value, width)
    small = [by_name[n] for n in ("Atelectasis", "Mass", "Nodule", "Pneumothorax") if n in by_name]
    aerated = np.minimum(visible * 2, 1) if small else visible  # lesions show against air only
    for lesion in small:
        layer, extent = _small_lesion(lesion, anatomy, f)
        if lesion.name == "Pneumothorax":  # no lung markings beyond the pleural line
            vessels *= 1 - extent
        layer *= aerated
        bright += layer
        boxes += _box(lesion.name, extent & (aerated > 0.5))
    bones = _bones(anatomy, acq, f)  # sharpest against the lungs, faint elsewhere
    cv2.scaleAdd(bones, 0.3, bright, dst=bright)
    cv2.accumulateProduct(bones, visible, bright)
    cv2.accumulateProduct(vessels, visible, bright)  # markings only where the lung holds air
    sigma = 0.5 + size / 512
    cv2.GaussianBlur(bright, (2 * round(2 * sigma) + 1,) * 2, sigma, dst=bright)
    levels = (np.arange(256) / 255 - 0.5) * acq.contrast + 0.5 + acq.level
    lut = (np.clip(levels, 0, 1) ** acq.gamma * 255).round().astype(np.uint8)
    image = cv2.LUT(cv2.convertScaleAbs(bright, alpha=255.0), lut)
    stamp = _marker(size, "R" if acq.marker else "L")
    k, y = len(stamp), size // 25
    x = y if acq.marker else size - y - k
    np.maximum(image[y : y + k, x : x + k], stamp, out=image[y : y + k, x : x + k])
    return image, boxes


@lru_cache(maxsize=8)
def _marker(size: int, letter: str) -> np.ndarray:
    """The side-marker stamp for images of ``size`` px: ``(k, k)`` uint8, a bright letter on 0."""
    k = max(8, size // 16)
    stamp, font = np.zeros((k, k), np.uint8), cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(stamp, letter, (k // 6, k - k // 6), font, k / 32, 245, max(1, k // 12))
    return stamp
