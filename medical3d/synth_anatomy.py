"""Analytic anatomy and lesions for the synthetic phantoms (``medical3d.synth``), in object coordinates (mm).

A body is a list of nested (super)ellipsoid compartments painted outermost first; a lesion is a sphere, an
ellipsoid or a union of overlapping blobs placed inside a host organ. Every draw comes from the caller's
``numpy.random.Generator`` in a fixed order, so a seed reproduces a study.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medical3d.families import HeadShape, LesionModel, Range, TorsoShape

# Tissue intensities: MRI in arbitrary T1-like units, CT in HU.
MRI = {"air": 0.0, "skin": 520.0, "fat": 820.0, "bone": 130.0, "csf": 260.0, "gm": 470.0, "wm": 660.0,
       "muscle": 360.0, "viscera": 430.0, "liver": 560.0, "kidney": 610.0, "lung": 40.0, "spleen": 500.0}
CT = {"air": -1000.0, "skin": 40.0, "fat": -95.0, "bone": 850.0, "csf": 8.0, "gm": 40.0, "wm": 28.0,
      "muscle": 48.0, "viscera": 30.0, "liver": 58.0, "kidney": 35.0, "lung": -820.0, "spleen": 45.0}

Layer = tuple[str, np.ndarray, np.ndarray, float]  # tissue, centre (mm), radii (mm), z power
Ellipsoid = tuple[np.ndarray, np.ndarray]  # centre, radii (mm)


def draw(rng: np.random.Generator, r: Range) -> float:
    """Uniform in ``r``; a constant range ``(v, v)`` returns ``v`` without drawing (keeps older streams intact)."""
    return float(r[0]) if r[0] == r[1] else float(rng.uniform(*r))


def rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation of at most ``max_deg`` about a random axis (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def soft_ellipsoid(q: np.ndarray, centre: np.ndarray, radii: np.ndarray, edge: float, z_power: float = 2.0
                   ) -> np.ndarray:
    """Smooth indicator (0..1) of an axis-aligned (super)ellipsoid in object coordinates ``q`` (3, ...).

    ``z_power`` > 2 flattens the ends along z (a cylinder-like torso). The edge is a logistic ramp of width
    ``edge`` mm, which gives partial-volume voxels instead of aliasing.
    """
    d = [(q[i] - centre[i]) / radii[i] for i in range(3)]
    rxy2 = d[0] ** 2 + d[1] ** 2
    if z_power == 2.0:
        r = np.sqrt(rxy2 + d[2] ** 2)
    else:
        r = (rxy2 ** (z_power / 2) + np.abs(d[2]) ** z_power) ** (1.0 / z_power)
    dist = (r - 1.0) * float(np.min(radii))
    return (1.0 / (1.0 + np.exp(np.clip(dist / max(edge, 1e-3), -50, 50)))).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float, coarse: int = 5) -> np.ndarray:
    """A smooth random field of mean ~0 and max |value| ~ ``amplitude`` on ``shape`` (cubic upsampling)."""
    small = rng.uniform(-1.0, 1.0, size=(coarse,) * 3)
    zoom = [s / coarse for s in shape]
    out = ndimage.zoom(small, zoom, order=3, mode="nearest")[tuple(slice(0, s) for s in shape)]
    return (amplitude * out / max(np.abs(out).max(), 1e-6)).astype(np.float32)


def bias_field(points: np.ndarray, centre: np.ndarray, rng: np.random.Generator, strength: float = 0.25
               ) -> np.ndarray:
    """Smooth multiplicative MRI bias ``exp(a.u + u^T B u)`` over physical points (3, ...), u in 100 mm units."""
    u = (points - centre.astype(np.float32)[:, None, None, None]) / 100.0
    a = rng.normal(0.0, strength, size=3)
    b = rng.normal(0.0, strength * 0.6, size=(3, 3))
    b = (b + b.T) / 2
    log_b = np.tensordot(a.astype(np.float32), u, axes=1)
    for i in range(3):
        for j in range(3):
            log_b += np.float32(b[i, j]) * u[i] * u[j]
    return np.exp(log_b).astype(np.float32)


# ---------------------------------------------------------------- anatomy


def head_layers(rng: np.random.Generator, scale: float, shape: HeadShape) -> tuple[list[Layer], dict]:
    """Nested head compartments as (tissue, centre, radii, z_power), outermost first, plus named parts:
    ``organ`` (tissue, centre, radii) hosts the lesion; ``structures`` maps a name to ellipsoids to keep clear of.
    """
    outer = np.array([draw(rng, r) for r in shape.outer_mm]) * scale
    t_skin, t_fat, t_bone, t_csf = (draw(rng, shape.skin_mm), draw(rng, shape.fat_mm), draw(rng, shape.bone_mm),
                                    draw(rng, shape.csf_mm))
    c0 = np.zeros(3)
    brain = outer - (t_skin + t_fat + t_bone + t_csf)
    wm = brain * draw(rng, shape.wm_fraction)
    layers = [
        ("skin", c0, outer, 2.0),
        ("fat", c0, outer - t_skin, 2.0),
        ("bone", c0, outer - t_skin - t_fat, 2.0),
        ("csf", c0, outer - t_skin - t_fat - t_bone, 2.0),
        ("gm", c0, brain, 2.0),
        ("wm", c0 + rng.normal(0, 2, 3), wm, 2.0),
    ]
    structures: dict[str, list[Ellipsoid]] = {}
    off = 0.0
    if shape.ventricles:
        off = rng.uniform(7, 12)
        vr = np.array([draw(rng, r) for r in shape.ventricle_mm]) * scale
        for sign in (-1, 1):
            layers.append(("csf", np.array([sign * off, rng.uniform(-6, 4), rng.uniform(0, 10)]), vr, 2.0))
        off += vr[0]
        structures["ventricles"] = [(layer[1], layer[2]) for layer in layers[-2:]]
    if shape.nuclei:  # deep grey nuclei lateral to the ventricles
        nr = np.array([rng.uniform(6, 9), rng.uniform(9, 13), rng.uniform(7, 10)]) * scale
        for sign in (-1, 1):
            layers.append(("gm", np.array([sign * (off + nr[0] + rng.uniform(3, 6)), rng.uniform(-4, 6),
                                           rng.uniform(-8, 2)]), nr, 2.0))
        structures["nuclei"] = [(layer[1], layer[2]) for layer in layers[-2:]]
    return layers, {"organ": ("wm", c0, wm), "structures": structures}


def torso_layers(rng: np.random.Generator, scale: float, shape: TorsoShape, modality: str
                 ) -> tuple[list[Layer], dict]:
    """Torso compartments (see ``head_layers`` for the returned parts); the lesion host is ``shape.target``."""
    outer = np.array([draw(rng, r) for r in shape.outer_mm]) * scale
    t_skin, t_fat, t_muscle = draw(rng, shape.skin_mm), draw(rng, shape.fat_mm), draw(rng, shape.muscle_mm)
    c0 = np.zeros(3)
    cavity = outer - (t_skin + t_fat + t_muscle)
    liver_c = np.array([-cavity[0] * rng.uniform(0.35, 0.45), -cavity[1] * rng.uniform(0.05, 0.2),
                        rng.uniform(-10, 10)])
    liver_r = np.array([cavity[0] * rng.uniform(0.45, 0.55), cavity[1] * rng.uniform(0.6, 0.72),
                        cavity[2] * rng.uniform(0.45, 0.6)])
    p = shape.power
    layers = [
        ("skin", c0, outer, p),
        ("fat", c0, outer - t_skin, p),
        ("muscle", c0, outer - t_skin - t_fat, p),
        ("viscera", c0, cavity, p),
        ("liver", liver_c, liver_r, 2.0),
        ("bone", np.array([0.0, cavity[1] * 0.8, 0.0]), np.array([11.0, 11.0, cavity[2] + 5]) * scale, 4.0),
    ]
    kid_r = np.array([draw(rng, r) for r in shape.kidney_mm]) * scale
    layers.append(("kidney", np.array([cavity[0] * 0.45, cavity[1] * 0.5, rng.uniform(-30, -15)]), kid_r, 2.0))
    organs = {"liver": (liver_c, liver_r), "kidney": (layers[-1][1], kid_r)}
    if shape.spleen:  # left upper quadrant, against the lateral wall, above the kidney
        sr = np.array([rng.uniform(18, 24), rng.uniform(22, 28), rng.uniform(30, 38)]) * scale
        sc = np.array([cavity[0] - sr[0] - rng.uniform(2, 5), cavity[1] * rng.uniform(-0.15, 0.05),
                       cavity[2] - sr[2] - rng.uniform(4, 10)])
        layers.append(("spleen", sc, sr, 2.0))
        organs["spleen"] = (sc, sr)
    structures: dict[str, list[Ellipsoid]] = {"kidney": [organs["kidney"]]} if shape.target != "kidney" else {}
    if modality == "ct" or rng.random() < shape.lung_prob:
        lung_r = np.array([cavity[0] * 0.35, cavity[1] * 0.6, cavity[2] * 0.3])
        for sign in (-1, 1):
            layers.append(("lung", np.array([sign * cavity[0] * 0.45, -cavity[1] * 0.05, cavity[2] * 0.75]),
                           lung_r, 2.0))
        structures["lungs"] = [(layer[1], layer[2]) for layer in layers[-2:]]
    return layers, {"organ": (shape.target, *organs[shape.target]), "structures": structures}


# ---------------------------------------------------------------- lesions


@dataclass
class Lesion:
    """A drawn lesion in object coordinates: blobs (centre, radii, rotation) whose union is the lesion."""

    shape: str
    sign: str
    radius: float  # main blob radius (an ellipsoid's smallest half-axis), mm
    extent: float  # farthest lesion surface from the main centre, mm
    margin: float  # 10-90 % edge width, mm (0: sharp)
    host: str
    value: float  # intensity (MRI) or HU (CT) painted inside
    contrast: float  # MRI: lesion / host; CT: lesion - host (HU)
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))
    blobs: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = field(default_factory=list)


def _blobs(rng: np.random.Generator, shape: str, radius: float
           ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], float]:
    """Blobs relative to the main centre and the extent. A sphere draws nothing (the classic stream)."""
    if shape == "sphere":
        return [(np.zeros(3), np.full(3, radius), None)], radius
    if shape == "ellipsoid":
        radii = radius * np.array([1.0, rng.uniform(1.0, 1.6), rng.uniform(1.0, 1.6)])
        return [(np.zeros(3), radii, rotation(rng, 180.0))], float(radii.max())
    blobs: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = [(np.zeros(3), np.full(3, radius), None)]
    extent = radius
    for _ in range(1 + int(rng.random() < 0.5)):  # 2-3 overlapping blobs
        d = rng.normal(size=3)
        r_lobe = radius * rng.uniform(0.55, 0.8)
        offset = d / np.linalg.norm(d) * radius * rng.uniform(0.45, 0.7)
        blobs.append((offset, np.full(3, r_lobe), None))
        extent = max(extent, float(np.linalg.norm(offset)) + r_lobe)
    return blobs, extent


def lesion_site(rng: np.random.Generator, parts: dict, extent: float, avoid_names: tuple[str, ...],
                reach: float = 0.7, keep_inside: float | None = None) -> np.ndarray:
    """A point inside the host organ, 3 mm clear of the named structures, within ``reach`` of its half-axes.

    ``keep_inside`` (mm): the lesion plus this much stays inside the organ. A point at normalized radius rho of
    an ellipsoid is at least (1 - rho) * min half-axis from its surface, which bounds the reach.
    """
    _, centre, radii = parts["organ"]
    if keep_inside is not None:
        reach = max(0.0, min(reach, 1.0 - (extent + keep_inside) / float(np.min(radii))))
    avoid = [e for name in avoid_names for e in parts["structures"].get(name, [])]
    best, best_clearance = centre.copy(), -np.inf
    for _ in range(200):
        v = rng.normal(size=3)
        v *= rng.uniform(0.0, reach) / np.linalg.norm(v)
        p = centre + v * radii
        clearance = min((np.linalg.norm((p - c) / (r + extent + 3.0)) for c, r in avoid), default=np.inf)
        if clearance > 1.0:
            return p
        if clearance > best_clearance:
            best, best_clearance = p, clearance
    # A crowded organ: the contained families take the clearest point tried, classic its centre (as it always has).
    return best if keep_inside is not None else centre.copy()


def draw_lesion(rng: np.random.Generator, model: LesionModel, parts: dict, tissue: dict[str, float],
                modality: str, radius_mm: Range) -> Lesion:
    """Shape, radius, blobs, margin, site, contrast and sign, in that order (draws only what varies)."""
    shape = model.shapes[0] if len(model.shapes) == 1 else str(rng.choice(list(model.shapes)))
    radius = float(rng.uniform(*radius_mm))
    blobs, extent = _blobs(rng, shape, radius)
    margin = draw(rng, model.margin_mm)
    keep = margin / 2 + 2.0 if model.contained else None
    site = lesion_site(rng, parts, extent, model.clear_of, model.reach, keep)
    host = parts["organ"][0]
    strength = rng.uniform(*(model.mri_ratio if modality == "mri" else model.ct_offset_hu))
    sign = model.sign if model.sign != "either" else ("bright" if rng.random() < 0.5 else "dark")
    if modality == "mri":
        value = tissue[host] * strength if sign == "bright" else tissue[host] / strength
        contrast = value / tissue[host]
    else:
        value = tissue[host] + strength if sign == "bright" else tissue[host] - strength
        contrast = value - tissue[host]
    return Lesion(shape=shape, sign=sign, radius=radius, extent=extent, margin=margin, host=host, value=float(value),
                  contrast=float(contrast), centre=site, blobs=blobs)


def lesion_indicator(q: np.ndarray, lesion: Lesion, edge: float) -> np.ndarray:
    """Smooth 0..1 indicator of the lesion over object coordinates ``q`` (3, ...): the max over its blobs.

    The edge is the partial-volume ramp ``edge`` or the lesion's diffuse margin, whichever is wider (a logistic
    of scale s spans 4.4 s from 10 % to 90 %).
    """
    edge = max(edge, lesion.margin / 4.4)
    out = None
    for offset, radii, rot in lesion.blobs:
        c = lesion.centre + offset
        qq = q
        if rot is not None:  # rotate the lesion about its centre
            c32 = c.astype(np.float32)[:, None, None, None]
            qq = np.tensordot(rot.T.astype(np.float32), q - c32, axes=1) + c32
        m = soft_ellipsoid(qq, c, radii, edge)
        out = m if out is None else np.maximum(out, m)
    return out
