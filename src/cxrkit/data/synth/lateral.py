"""Draw one phantom lateral chest radiograph: the view the frontal phantom never shows.

Material for the input gate's out-of-distribution benchmark: a model trained on the frontal
phantoms of :mod:`cxrkit.data.synth.phantom` should flag these. The patient faces image left:
in the canonical frame ``(u, v)`` (both in ``[-1, 1]`` across the film) ``u`` grows from the
anterior chest wall (sternum) to the back (spine), ``v`` grows downward, as in the frontal
phantom. The body, its levels (apex, domes), heart size, soft tissue and lung markings come
from the same :func:`~cxrkit.data.synth.dataset.sample_anatomy` draw as a frontal patient, and
the pose and exposure from :func:`~cxrkit.data.synth.dataset.sample_acquisition`, so lateral
and frontal films vary alike in patient size, rotation, exposure and noise.

What is drawn (brightness is attenuation, built additively in float32, then windowed to 8 bits
as the frontal films are): the body outline, front to back across the film; the thoracic spine
as a column of vertebral bodies along the posterior edge with their posterior elements; the
sternum, a thin dense strip anteriorly; the two lungs superimposed as one dark field, with the
retrosternal and retrocardiac clear spaces; the heart shadow anterior-inferior; both
hemidiaphragm domes at different heights (the gastric bubble under the lower one); the
trachea, hilum and aortic arch; the raised arms' soft tissue and humeri at the top; both
sides' posterior ribs, superimposed; the lung markings, from one hilum.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from cxrkit.data.synth.dataset import sample_acquisition, sample_anatomy
from cxrkit.data.synth.phantom import Acquisition, Anatomy, points, smooth

MARGIN = 1.3  # the drawing canvas spans u, v in [-MARGIN, MARGIN] so the pose never shows an edge
_BITS = 4  # fractional bits of the fixed-point coordinates handed to OpenCV
_AIR = 0.36  # brightness removed where both lungs hold air

# Outlines in canonical units, patient facing image left (anterior = negative u).
_BODY = points(
    "-0.5 -1.5 -0.55 -1.0 -0.76 -0.74 -0.87 -0.4 -0.91 0.1 -0.89 0.6 -0.85 1.5 "
    "0.99 1.5 0.97 0.6 0.95 -0.1 0.9 -0.6 0.76 -0.95 0.66 -1.5"
)
_ARMS = np.array(
    [points("0.22 -0.62 -0.2 -1.05 -0.5 -1.5"), points("0.32 -0.55 -0.1 -1.0 -0.3 -1.5")]
)
_TRACHEA = smooth(points("-0.04 -1.5 0.0 -0.85 0.06 -0.45 0.13 -0.16"), 2, False)
_AORTA = smooth(points("-0.3 0.0 -0.24 -0.3 -0.04 -0.46 0.2 -0.36 0.36 -0.05 0.42 0.4"), 2, False)
_STERNUM = smooth(points("-0.64 -0.62 -0.74 -0.3 -0.79 0.05 -0.79 0.36"), 2, False)


def _oval(
    cu: float, cv: float, a: float, b: float, tilt: float = 0.0, square: float = 1.0
) -> np.ndarray:
    """An ellipse outline ``(40, 2)`` with semi-axes ``a, b`` turned by ``tilt`` degrees;
    ``square`` below 1 squares it off towards a rectangle with rounded corners."""
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    c, s = np.cos(np.radians(tilt)), np.sin(np.radians(tilt))
    x = a * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** square
    y = b * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** square
    return np.stack([cu + c * x - s * y, cv + s * x + c * y], 1)


class _Canvas:
    """Float32 layers of ``m x m`` pixels covering the canonical square ``[-MARGIN, MARGIN]``."""

    def __init__(self, size: int) -> None:
        self.m = int(np.ceil(MARGIN * size))
        self.scale = self.m / (2 * MARGIN)  # pixels per canonical unit

    def _fixed(self, pts: np.ndarray) -> np.ndarray:
        """``(..., 2)`` canonical points -> int32 fixed-point canvas pixel coordinates."""
        return np.round(((pts + MARGIN) * self.scale - 0.5) * (1 << _BITS)).astype(np.int32)

    def fill(self, shapes: list[tuple[np.ndarray, float]], blur: float = 0.0) -> np.ndarray:
        """A new ``(m, m)`` layer: each ``(m_i, 2)`` polygon filled with its value, later ones
        on top, blurred by ``blur`` canonical units."""
        layer = np.zeros((self.m, self.m), np.float32)
        for polygon, value in shapes:
            cv2.fillPoly(layer, [self._fixed(polygon)], float(value), cv2.LINE_AA, _BITS)
        return self.blur(layer, blur)

    def lines(self, layer: np.ndarray, lines: np.ndarray, value: float, width: float) -> None:
        """Draw the open polylines ``(k, p, 2)`` of canonical ``width`` into ``layer``."""
        thick = max(1, round(width * self.scale))
        cv2.polylines(layer, list(self._fixed(lines)), False, value, thick, cv2.LINE_AA, _BITS)

    def blur(self, layer: np.ndarray, sigma: float) -> np.ndarray:
        """``layer`` blurred by ``sigma`` canonical units (as is, below a third of a pixel)."""
        sigma_px = sigma * self.scale
        return cv2.GaussianBlur(layer, (0, 0), sigma_px) if sigma_px > 0.33 else layer

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Canonical ``u`` of each column ``(1, m)`` and ``v`` of each row ``(m, 1)``."""
        c = ((np.arange(self.m, dtype=np.float32) + 0.5) / self.scale - MARGIN)[None]
        return c, c.T


def _dome(u: np.ndarray, top: float, sulcus: float) -> np.ndarray:
    """A hemidiaphragm: ``v`` at each ``u``, highest (``top``) a third of the way back, falling
    to the anterior sulcus and deepest at the posterior sulcus ``sulcus``."""
    back = np.clip((u + 0.25) / 1.05, 0, None)
    return top + 0.7 * (u + 0.25) ** 2 * (u < -0.25) + (sulcus - top) * back**2.2


def _lungs(anatomy: Anatomy, depth: float) -> tuple[np.ndarray, np.ndarray]:
    """The two lung outlines ``(p, 2)`` each, as superimposed in a lateral film: one above the
    higher (right) dome, one above the lower (left) dome, a little magnified."""
    a = anatomy.apex + 0.05
    front, back = -0.7 * depth, 0.8 * depth
    upper = smooth(
        points(
            f"{back} {anatomy.cp - 0.2} {back} -0.2 {0.74 * depth} {a + 0.35} 0.45 {a + 0.06} "
            f"0.2 {a} -0.05 {a + 0.07} -0.32 {a + 0.3} {-0.58 * depth} -0.38 {front} 0.05"
        ),
        2,
        False,
    )
    u = np.linspace(front, back, 24)
    outlines = []
    for drop, grow in ((0.0, 1.0), (0.07, 1.035)):
        base = np.stack([u, _dome(u, anatomy.dome - 0.02 + drop, anatomy.cp + 0.1 + drop)], 1)
        outline = np.vstack([upper, base])
        outlines.append((outline - [0.05, 0]) * grow + [0.05, 0])
    return outlines[0], outlines[1]


def _spine(anatomy: Anatomy, depth: float) -> list[tuple[np.ndarray, float]]:
    """Vertebral bodies (cortex, then core) and their posterior elements at the vertebral levels
    of ``anatomy``, on a gentle kyphosis along the posterior edge."""
    levels = anatomy.bones[4][:, :, 1].mean(1)
    shapes: list[tuple[np.ndarray, float]] = []
    for v in levels:
        cu = (0.5 + 0.07 * (1 - ((v - 0.1) / 1.1) ** 2)) * depth
        tilt = 12 * (v - 0.1)
        shapes += [(_oval(cu + 0.22 * depth, v + 0.02, 0.1, 0.03, tilt + 20), 0.06)]
        shapes += [(_oval(cu, v, 0.085 * depth, 0.043, tilt, 0.3), 0.17)]  # cortex
        shapes += [(_oval(cu, v, 0.07 * depth, 0.032, tilt, 0.4), 0.12)]  # cancellous core
    return shapes


def draw(anatomy: Anatomy, acq: Acquisition, size: int) -> np.ndarray:
    """The lateral film of ``anatomy`` taken as ``acq``: ``(size, size)`` uint8, bone bright."""
    canvas = _Canvas(size)
    depth = 0.95 + 0.3 * (anatomy.body - 1)  # front-to-back half-depth relative to the frame
    u, v = canvas.grid()
    tissue = anatomy.tissue + 0.1 + 0.18 * np.sqrt(np.clip(1 - ((u - 0.05) / depth) ** 2, 0, 1))
    tissue = tissue + 0.18 * np.clip((v - anatomy.dome) / 0.45, 0, 1)  # the abdomen below
    shapes = [(_BODY * [depth, 1], 1.0)]
    if anatomy.female:
        shapes.append((_oval(-0.82 * depth, anatomy.cp - 0.32, 0.2, 0.24), 1.0))
    body = canvas.fill(shapes, 0.015)
    arms = np.zeros_like(body)  # the raised arms' soft tissue, both superimposed
    canvas.lines(arms, _ARMS, 0.13, 0.3)
    arms = canvas.blur(arms, 0.05)
    first, second = _lungs(anatomy, depth)
    ratio = anatomy.heart[2] / 0.41
    heart = _oval(-0.28 * depth, anatomy.dome - 0.2, 0.33 * ratio, 0.27 * ratio, -28)
    fade = 1 - 0.45 * np.exp((anatomy.apex - v) / 0.14)  # apices behind the shoulders
    lung = canvas.fill([(first, 0.5)], 0.012) + canvas.fill([(second, 0.5)], 0.012)
    dense = canvas.fill([(heart, 0.6), (_oval(0.1, -0.06, 0.1, 0.08), 0.45)], 0.03)
    aorta = np.zeros_like(lung)
    canvas.lines(aorta, _AORTA[None], 0.35, 0.11)
    air = lung * (1 - dense) * (1 - canvas.blur(aorta, 0.01)) * fade * _AIR
    airway = np.zeros_like(lung)
    canvas.lines(airway, _TRACHEA[None], 0.08, 0.075)
    bubble = _oval(-0.05, anatomy.dome + 0.16, 0.12, 0.05)
    air += canvas.fill([(bubble, 0.12)], 0.02) + canvas.blur(airway, 0.01)
    bright = body * tissue + arms - air
    bones = canvas.fill(_spine(anatomy, depth), 0.004)
    sternum = _STERNUM * [depth / 0.8, 1]
    canvas.lines(bones, sternum[None], 0.1, 0.045)
    canvas.lines(bones, sternum[None, :4], 0.1, 0.09)  # the wider manubrium
    canvas.lines(bones, _ARMS, 0.07, 0.07)  # the humeri
    ribs = np.zeros_like(lung)  # both sides' posterior ribs, the far side magnified
    for grow in (1.0, 1.06):
        for top in anatomy.bones[4][2:13, :, 1].mean(1):
            arc = points(f"0.82 {top} 0.55 {top + 0.1} 0.2 {top + 0.28} -0.2 {top + 0.45}")
            canvas.lines(ribs, smooth(arc[None] * [depth, 1] * grow, 2, False), 0.04, 0.025)
    vessels = np.zeros_like(lung)
    for generation, width in zip(anatomy.vessels, (0.016, 0.011, 0.007, 0.004), strict=True):
        side = np.sign(generation[:, :1, :1])  # the frontal left lung's markings go forward
        lines = (generation - side * [0.19, 0]) * [0.9, 1] + [0.08, 0]  # from one hilum
        canvas.lines(vessels, lines, 0.05, width)
    aerated = np.minimum(lung * 2, 1)
    bright += bones * (0.35 + aerated) + ribs * aerated + vessels * aerated * (1 - dense)
    return _expose(bright, acq, size)


def _expose(bright: np.ndarray, acq: Acquisition, size: int) -> np.ndarray:
    """Pose ``bright`` (the ``(m, m)`` canvas) onto the ``(size, size)`` film, then grain, blur,
    window and gamma as the frontal phantom's acquisition does; returns uint8."""
    c, s = np.cos(np.radians(acq.angle)), np.sin(np.radians(acq.angle))
    turn = size / 2 * acq.zoom * np.array([[c, -s], [s, c]])  # canonical -> film pixels
    per_px = 2 * MARGIN / bright.shape[0]  # canonical units per canvas pixel
    corner = np.full(2, per_px / 2 - MARGIN)  # canonical u, v of canvas pixel (0, 0)
    origin = (size / 2) * (1 + np.asarray(acq.shift)) - 0.5 + turn @ corner
    pose = np.hstack([turn * per_px, origin[:, None]])
    film = cv2.warpAffine(bright, pose, (size, size), flags=cv2.INTER_LINEAR)
    grain = np.random.default_rng(acq.seed).standard_normal((size // 2,) * 2).astype(np.float32)
    film += acq.noise * cv2.resize(grain, (size, size), interpolation=cv2.INTER_LINEAR)
    sigma = 0.5 + size / 512
    film = cv2.GaussianBlur(film, (0, 0), sigma)
    windowed = np.clip((film - 0.5) * acq.contrast + 0.5 + acq.level, 0, 1) ** acq.gamma
    image = (windowed * 255).round().astype(np.uint8)
    k = max(8, size // 16)  # the side marker, top anterior corner
    cv2.putText(image, "L", (size // 25, size // 25 + k), cv2.FONT_HERSHEY_SIMPLEX, k / 32, 245,
                max(1, k // 12))  # fmt: skip
    return image


def render_lateral(seed: int, size: int = 256) -> np.ndarray:
    """A random patient's lateral chest film, a pure function of ``seed``: ``(size, size)``
    uint8, bone bright (exposure, pose and noise drawn as for a frontal PA film)."""
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    rng = np.random.default_rng([seed, 0x1A7])
    anatomy = sample_anatomy(rng, female=bool(rng.random() < 0.45))
    acq = replace(sample_acquisition(rng, anatomy, "PA"), view="LL")
    return draw(anatomy, acq, size)
