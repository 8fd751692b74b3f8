"""Drawing one synthetic part: a surface, its defects and its lighting (``make_part``).

Surfaces: brushed metal, cast metal, woven fabric, each under varied lighting, gamma, tint and sensor noise.
Defects: ``scratch`` (thin bright/dark curve; ``axis_scratches`` of them run along an image axis, as machining
marks do on a fixtured part), ``pit`` (small dark dent with a lit rim), ``stain`` (soft irregular tinted blob)
and ``crack`` (dark jagged branching line). Sizes go down to ~2.5 % of the image side and contrast down to ~5 %
of the intensity range, like faint defects on real parts, but never below what an inspector could see on that
surface (``defect_visibility``: a matched-filter SNR against the surface and the part's sensor noise, and the
contrast of the defect's core against the texture at its own scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # the parameters of what to draw; synth.py imports this module
    from industrial_qc.synth import SynthConfig

DEFECT_CLASSES: tuple[str, ...] = ("scratch", "pit", "stain", "crack")
SURFACES: tuple[str, ...] = ("brushed_metal", "cast", "woven_fabric")


@dataclass
class SynthImage:
    """One generated part: ``image`` (H, W, 3) uint8 BGR, ``boxes`` (K, 5) [class, cx, cy, w, h] normalised."""

    image: np.ndarray
    boxes: np.ndarray
    surface: str
    meta: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- surfaces
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise (size, size) in ~[-1, 1]: a coarse random grid upsampled with cubic interpolation."""
    grid = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(grid, (size + size // cells * 3, size + size // cells * 3), interpolation=cv2.INTER_CUBIC)
    off = size // cells
    return np.clip(big[off : off + size, off : off + size] / 1.5, -1.5, 1.5)


def _brushed_metal(rng: np.random.Generator, s: int) -> np.ndarray:
    base = rng.uniform(0.45, 0.72)
    noise = rng.standard_normal((s * 2, s * 2)).astype(np.float32)
    streaks = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(2.0, s / 12), sigmaY=0.6)
    streaks /= streaks.std() + 1e-6
    angle = rng.uniform(-20, 20) + (90 if rng.random() < 0.3 else 0)
    m = cv2.getRotationMatrix2D((s, s), angle, 1.0)
    streaks = cv2.warpAffine(streaks, m, (s * 2, s * 2), borderMode=cv2.BORDER_REFLECT)[s // 2 : s // 2 + s,
                                                                                         s // 2 : s // 2 + s]
    gray = base + rng.uniform(0.025, 0.05) * streaks + 0.03 * _smooth_noise(rng, s, 3)
    tint = np.array([1.0 + rng.uniform(-0.03, 0.05), 1.0, 1.0 + rng.uniform(-0.05, 0.03)], np.float32)
    return gray[..., None] * tint


def _cast(rng: np.random.Generator, s: int) -> np.ndarray:
    base = rng.uniform(0.32, 0.58)
    blotch = 0.05 * _smooth_noise(rng, s, 4) + 0.025 * _smooth_noise(rng, s, 12)
    grain = cv2.GaussianBlur(rng.standard_normal((s, s)).astype(np.float32), (0, 0), max(0.6, s / 400))
    grain /= grain.std() + 1e-6
    gray = base + blotch + rng.uniform(0.015, 0.035) * grain
    tint = np.array([1.0 + rng.uniform(-0.04, 0.02), 1.0, 1.0 + rng.uniform(-0.02, 0.06)], np.float32)
    return gray[..., None] * tint


def _woven_fabric(rng: np.random.Generator, s: int) -> np.ndarray:
    period = rng.uniform(s / 40, s / 18)
    period = max(period, 3.0)
    angle = rng.uniform(-0.25, 0.25)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    u = (xx * math.cos(angle) + yy * math.sin(angle)) / period
    v = (-xx * math.sin(angle) + yy * math.cos(angle)) / period
    warp = (np.floor(u) + np.floor(v)) % 2 == 0
    thread_u = np.sin(np.pi * (u % 1.0)) ** 0.7
    thread_v = np.sin(np.pi * (v % 1.0)) ** 0.7
    weave = np.where(warp, thread_v, thread_u)  # the thread on top shows its cross profile
    gray = 0.75 + 0.25 * weave + 0.03 * _smooth_noise(rng, s, 5)
    hsv = np.zeros((1, 1, 3), np.uint8)
    hsv[0, 0] = (rng.integers(0, 180), rng.integers(40, 170), 255)
    color = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32) / 255.0
    level = rng.uniform(0.45, 0.8)
    return gray[..., None] * color * level


_SURFACE_FNS = {"brushed_metal": _brushed_metal, "cast": _cast, "woven_fabric": _woven_fabric}


# ------------------------------------------------------------------------------------------------ defects
def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _line_width(s: int, rng: np.random.Generator) -> int:
    return max(1, round(rng.uniform(0.7, 1.8) * s / 320))


def _draw_scratch(rng: np.random.Generator, s: int, mask: np.ndarray, axis_share: float = 0.0) -> None:
    length = rng.uniform(0.08, 0.35) * s
    ang = rng.uniform(0, np.pi)
    if rng.random() < axis_share:  # along the part's machining axes, which a fixtured part aligns with the image
        ang = rng.choice([0.0, np.pi / 2]) + np.deg2rad(rng.uniform(-1.0, 1.0))
    c = rng.uniform(0.15, 0.85, size=2) * s
    d = np.array([math.cos(ang), math.sin(ang)]) * length / 2
    bend = rng.normal(0, 0.12) * length * np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-6)
    pts = _bezier(c - d, c + bend, c + d, 32)
    cv2.polylines(mask, [np.round(pts * 4).astype(np.int32)], False, 1.0, _line_width(s, rng), cv2.LINE_AA, shift=2)


def _draw_crack(rng: np.random.Generator, s: int, mask: np.ndarray) -> None:
    length = rng.uniform(0.08, 0.3) * s
    n = rng.integers(6, 14)
    step = length / n
    ang = rng.uniform(0, 2 * np.pi)
    p = rng.uniform(0.15, 0.85, size=2) * s
    pts = [p.copy()]
    for _ in range(n):
        ang += rng.normal(0, 0.6)
        p = p + step * np.array([math.cos(ang), math.sin(ang)])
        pts.append(p.copy())
    width = _line_width(s, rng)
    cv2.polylines(mask, [np.round(np.array(pts) * 4).astype(np.int32)], False, 1.0, width, cv2.LINE_AA, shift=2)
    if rng.random() < 0.6:  # a branch
        start = pts[rng.integers(1, len(pts) - 1)]
        b_ang = ang + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
        q = [start]
        for _ in range(rng.integers(2, 5)):
            b_ang += rng.normal(0, 0.5)
            q.append(q[-1] + step * 0.8 * np.array([math.cos(b_ang), math.sin(b_ang)]))
        cv2.polylines(mask, [np.round(np.array(q) * 4).astype(np.int32)], False, 1.0, max(1, width - 1),
                      cv2.LINE_AA, shift=2)


def _draw_pit(rng: np.random.Generator, s: int, mask: np.ndarray, rim: np.ndarray) -> None:
    r = rng.uniform(0.012, 0.035) * s
    c = rng.uniform(0.1, 0.9, size=2) * s
    axes = (max(1.0, r * rng.uniform(0.7, 1.0)), max(1.0, r))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    dx, dy = xx - c[0], yy - c[1]
    u = (dx * math.cos(ang) + dy * math.sin(ang)) / axes[0]
    v = (-dx * math.sin(ang) + dy * math.cos(ang)) / axes[1]
    rr = np.sqrt(u**2 + v**2)
    mask += np.clip(1.2 - rr, 0, 1) ** 1.5 * (rr < 1.2)
    light = rng.uniform(0, 2 * np.pi)
    side = (dx * math.cos(light) + dy * math.sin(light)) / (r + 1e-6)
    rim += np.exp(-((rr - 1.15) ** 2) / 0.05) * np.clip(side, 0, 1)


def _draw_stain(rng: np.random.Generator, s: int, mask: np.ndarray) -> None:
    size = rng.uniform(0.05, 0.15) * s
    c = rng.uniform(0.15, 0.85, size=2) * s
    blob = np.zeros_like(mask)
    for _ in range(rng.integers(3, 7)):
        o = c + rng.normal(0, size / 4, size=2)
        ax = (max(1, int(rng.uniform(0.2, 0.45) * size)), max(1, int(rng.uniform(0.2, 0.45) * size)))
        cv2.ellipse(blob, (int(o[0]), int(o[1])), ax, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA)
    blob = cv2.GaussianBlur(blob, (0, 0), max(0.8, size / 10))
    mask += blob / (blob.max() + 1e-6)


def _box_from_mask(m: np.ndarray, s: int, thresh: float = 0.3) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(m >= thresh * (m.max() + 1e-9))
    if len(xs) == 0:
        return None
    pad = max(1.0, 0.004 * s)
    x1, x2 = xs.min() - pad, xs.max() + 1 + pad
    y1, y2 = ys.min() - pad, ys.max() + 1 + pad
    min_side = 0.025 * s  # a label box is never thinner than ~2.5 % of the side, so IoU on thin scratches is fair
    if x2 - x1 < min_side:
        cx = (x1 + x2) / 2
        x1, x2 = cx - min_side / 2, cx + min_side / 2
    if y2 - y1 < min_side:
        cy = (y1 + y2) / 2
        y1, y2 = cy - min_side / 2, cy + min_side / 2
    x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(s), x2), min(float(s), y2)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    return ((x1 + x2) / 2 / s, (y1 + y2) / 2 / s, (x2 - x1) / s, (y2 - y1) / s)


@dataclass
class _Lighting:
    """Everything ``_lighting`` draws, drawn before it is applied so the defects can be made visible against the
    sensor noise the part will get."""

    gradient: np.ndarray
    spot: np.ndarray
    spot_gain: float
    gain: float
    gamma: float
    noise_sd: float
    noise: np.ndarray
    blur: float | None


def defect_visibility(before: np.ndarray, after: np.ndarray, box_px: tuple[int, int, int, int], noise_sd: float
                      ) -> tuple[float, float]:
    """How visible one defect is: (snr, core_cnr).

    ``snr``: its matched-filter signal over the clutter that filter sees on the surface.

    ``before`` / ``after``: (H, W) float grey images in [0, 1] without / with the defect; ``box_px``: x1, y1, x2,
    y2 of its label box. The template is the defect's own zero-mean change over its box (a centre-surround shape:
    lighting offsets drop out); the signal is the template's response to the defect, the clutter the standard
    deviation of its response over the surface around the box, plus the sensor noise (the template has unit norm,
    so white noise of ``noise_sd`` adds ``noise_sd``). Ridges parallel to a scratch, threads as wide as a pit or
    blotches as large as a stain raise the clutter, which a peak-contrast floor misses.
    ``core_cnr``: the mean change over the defect's core (where it is at least half its peak) over the texture
    at the defect's scale and the noise, per pixel."""
    h, w = before.shape
    x1, y1, x2, y2 = box_px
    t = (after - before)[y1:y2, x1:x2].astype(np.float32)
    t = t - t.mean()
    norm = float(np.sqrt((t**2).sum()))
    if norm <= 1e-9:
        return 0.0, 0.0
    t /= norm
    bw, bh = x2 - x1, y2 - y1
    rx1, ry1 = max(0, x1 - 2 * bw), max(0, y1 - 2 * bh)
    rx2, ry2 = min(w, x2 + 2 * bw), min(h, y2 + 2 * bh)
    region = before[ry1:ry2, rx1:rx2].astype(np.float32)
    if region.shape[0] <= bh or region.shape[1] <= bw:
        region = before.astype(np.float32)
    response = cv2.filter2D(region, cv2.CV_32F, t, borderType=cv2.BORDER_REFLECT)
    clutter = float(response.std())
    snr = norm / float(np.hypot(clutter, noise_sd))
    # An eye does not integrate a large faint blob over hundreds of pixels as a matched filter does: the defect's
    # core must also stand out from the pixel-to-pixel texture and noise on its own.
    delta = np.abs(after - before)[y1:y2, x1:x2]
    core = delta >= 0.5 * delta.max()
    # The texture that masks it is the texture up to the defect's own thickness (core area / length: a scratch's
    # width, a pit's or a stain's diameter): fabric threads hide a stain, not a hairline scratch.
    thickness = float(core.sum()) / max(bw, bh, 1)
    texture = region - cv2.GaussianBlur(region, (0, 0), max(2.0, thickness))
    return snr, float(delta[core].mean()) / float(np.hypot(texture.std(), noise_sd))


@dataclass
class _Defect:
    cls: str
    box: tuple[float, float, float, float]
    render: object  # (img, amp) -> img with the defect
    amp: float


def _draw_defect(img_size: int, cls: str, rng: np.random.Generator, cfg: SynthConfig) -> _Defect | None:
    """Draw one defect's shape and strength (nothing is rendered yet); None if it fell outside the image."""
    s = img_size
    mask = np.zeros((s, s), np.float32)
    rim = np.zeros((s, s), np.float32)
    {"scratch": lambda: _draw_scratch(rng, s, mask, cfg.axis_scratches), "crack": lambda: _draw_crack(rng, s, mask),
     "pit": lambda: _draw_pit(rng, s, mask, rim), "stain": lambda: _draw_stain(rng, s, mask)}[cls]()
    box = _box_from_mask(mask, s)
    if box is None:
        return None
    amp = rng.uniform(*cfg.contrast)
    sign = 1.0 if rng.random() < 0.6 else -1.0  # scratch: bright or dark
    tint = np.array([rng.uniform(0.2, 0.9), rng.uniform(0.5, 1.0), 1.0], np.float32)  # stain: e.g. oil or rust

    def render(img: np.ndarray, a: float) -> np.ndarray:
        if cls == "scratch":
            return img + (sign * a * mask)[..., None]
        if cls == "crack":
            return img * (1.0 - np.clip(a * 2.2, 0, 0.8) * mask)[..., None]
        if cls == "pit":
            return img * (1.0 - np.clip(a * 2.0, 0, 0.8) * mask)[..., None] + (0.8 * a * rim)[..., None]
        # stain: a tinted darkening
        return img - (a * 1.3 * mask)[..., None] * (1.0 - tint * 0.5) * max(float(img.mean()), 0.3) * 2

    return _Defect(cls, box, render, amp)


def _apply_defect(img: np.ndarray, d: _Defect, cfg: SynthConfig, noise_sd: float) -> tuple[float, float]:
    """Render ``d`` into ``img`` (in place), raising its strength until it is visible: ``defect_visibility``
    reaches ``cfg.min_snr`` and ``cfg.min_core_cnr`` against the surface and ``noise_sd``. Returns them."""
    s = img.shape[0]
    cx, cy, bw, bh = d.box
    box_px = (int(max(0, (cx - bw / 2) * s)), int(max(0, (cy - bh / 2) * s)),
              int(min(s, np.ceil((cx + bw / 2) * s))), int(min(s, np.ceil((cy + bh / 2) * s))))
    gray = img.mean(axis=2)
    amp = d.amp
    out = d.render(img, amp)
    vis = defect_visibility(gray, out.mean(axis=2), box_px, noise_sd)
    # Faint, but never below what an inspector can see on this surface: a 5 % scratch along brushed-metal streaks
    # of the same amplitude, or a pit the size of the fabric's threads, is invisible, and such a label teaches noise.
    for _ in range(6):  # multiplicative defects saturate: a few proportional steps reach the floor
        short = max(cfg.min_snr / max(vis[0], 1e-6), cfg.min_core_cnr / max(vis[1], 1e-6))
        if short <= 1.0 or min(vis) <= 0:
            break
        amp *= min(short * 1.02, 4.0)
        out = d.render(img, amp)
        vis = defect_visibility(gray, out.mean(axis=2), box_px, noise_sd)
    img[...] = out
    return vis


def _draw_lighting(rng: np.random.Generator, s: int) -> _Lighting:
    g = rng.uniform(-0.25, 0.25, size=2)
    spot = rng.uniform(-0.5, 0.5, size=2)
    spot_gain = rng.uniform(0.0, 0.25)
    gain = rng.uniform(0.8, 1.15)
    gamma = rng.uniform(0.8, 1.25)
    noise_sd = rng.uniform(0.004, 0.025)
    noise = rng.normal(0, noise_sd, size=(s, s, 3)).astype(np.float32)
    blur = rng.uniform(0.4, 0.9) if rng.random() < 0.3 else None
    return _Lighting(g, spot, spot_gain, gain, gamma, noise_sd, noise, blur)


def _lighting(img: np.ndarray, light: _Lighting) -> np.ndarray:
    s = img.shape[0]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    illum = 1.0 + light.gradient[0] * xx + light.gradient[1] * yy
    spot = light.spot
    illum += light.spot_gain * np.exp(-((xx - spot[0]) ** 2 + (yy - spot[1]) ** 2) / 0.15)
    img = img * illum[..., None] * light.gain
    img = np.clip(img, 0, 1) ** light.gamma
    img += light.noise
    if light.blur is not None:
        img = cv2.GaussianBlur(img, (0, 0), light.blur)
    return img


def make_part(rng: np.random.Generator, size: int, defective: bool, cfg: SynthConfig) -> SynthImage:
    """Draw one part; ``defective`` parts carry 1..max_defects defects of random classes.

    ``meta`` has per defect its class, ``snr`` and ``core_cnr`` (``defect_visibility`` against the part's sensor
    noise)."""
    surface = SURFACES[int(rng.integers(len(SURFACES)))]
    img = _SURFACE_FNS[surface](rng, size).astype(np.float32)
    drawn: list[tuple[int, _Defect]] = []
    if defective:
        n = int(rng.choice(np.arange(1, cfg.max_defects + 1), p=_count_probs(cfg.max_defects)))
        for _ in range(n):
            cls_id = int(rng.integers(len(DEFECT_CLASSES)))
            d = _draw_defect(size, DEFECT_CLASSES[cls_id], rng, cfg)
            if d is not None:
                drawn.append((cls_id, d))
    light = _draw_lighting(rng, size)
    boxes: list[list[float]] = []
    meta: list[dict] = []
    # The noise is added after the gain: relative to the surface it is noise_sd / gain.
    noise_sd = light.noise_sd / light.gain
    for cls_id, d in drawn:
        snr, core_cnr = _apply_defect(img, d, cfg, noise_sd)
        boxes.append([cls_id, *d.box])
        meta.append({"class": d.cls, "snr": snr, "core_cnr": core_cnr})
    img = _lighting(img, light)
    out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return SynthImage(image=out, boxes=np.array(boxes, np.float64).reshape(-1, 5), surface=surface, meta=meta)


def _count_probs(k: int) -> np.ndarray:
    p = np.array([0.5**i for i in range(k)])
    return p / p.sum()
