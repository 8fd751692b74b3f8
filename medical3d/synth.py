"""Synthetic CT/MRI studies: head- and torso-like phantoms with tissue layers, half with a small lesion.

Each phantom is defined analytically in patient (LPS, mm) space and sampled on a scanner grid with its own
spacing, orientation (axial/coronal/sagittal, RAS or LPS, some oblique) and position, so the data exercise
the physical-space handling of the pipeline. MRI studies get a smooth multiplicative bias field and Rician
noise; CT studies are in HU with Gaussian noise. Some studies are written as DICOM series.

Deterministic per seed: case ``i`` draws from ``numpy.random.default_rng([seed, i])``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medical3d.writers import write_dicom_series, write_volume

Kind = Literal["head", "torso"]
FORMATS = ("dicom", "nii.gz", "nrrd", "mha", "mhd")
FORMAT_WEIGHTS = (0.3, 0.35, 0.15, 0.1, 0.1)
LABELS = ("normal", "lesion")

# Tissue intensities: MRI in arbitrary T1-like units, CT in HU.
MRI = {"air": 0.0, "skin": 520.0, "fat": 820.0, "bone": 130.0, "csf": 260.0, "gm": 470.0, "wm": 660.0,
       "muscle": 360.0, "viscera": 430.0, "liver": 560.0, "kidney": 610.0, "lung": 40.0}
CT = {"air": -1000.0, "skin": 40.0, "fat": -95.0, "bone": 850.0, "csf": 8.0, "gm": 40.0, "wm": 28.0,
      "muscle": 48.0, "viscera": 30.0, "liver": 58.0, "kidney": 35.0, "lung": -820.0}


@dataclass
class Grid:
    """A scanner grid: size (x, y, z) voxels, spacing mm, direction (3x3, columns = axis directions), origin."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    direction: np.ndarray
    origin: np.ndarray

    def points(self) -> np.ndarray:
        """Physical coordinates of every voxel centre, shape (3, Z, Y, X) float32 (array order z, y, x)."""
        k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in self.size[::-1]), indexing="ij")
        idx = np.stack([i, j, k]) * np.asarray(self.spacing, dtype=np.float32)[:, None, None, None]
        pts = np.tensordot(self.direction.astype(np.float32), idx, axes=1)
        return pts + self.origin.astype(np.float32)[:, None, None, None]

    def image(self, array_zyx: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array_zyx)
        img.SetSpacing([float(s) for s in self.spacing])
        img.SetDirection(self.direction.ravel().tolist())
        img.SetOrigin(self.origin.tolist())
        return img


@dataclass
class CaseSpec:
    index: int
    label: str
    kind: Kind
    modality: str
    format: str
    spacing: list[float]
    size: list[int]
    orientation: str
    oblique_deg: float
    lesion_center_mm: list[float] | None = None
    lesion_radius_mm: float | None = None
    path: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- geometry helpers


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


Layer = tuple[str, np.ndarray, np.ndarray, float]  # tissue, centre (mm), radii (mm), z power


def _layers_head(rng: np.random.Generator, scale: float) -> tuple[list[Layer], dict]:
    """Nested head compartments as (tissue, centre, radii, z_power), outermost first, plus named parts."""
    outer = np.array([rng.uniform(68, 78), rng.uniform(82, 92), rng.uniform(78, 90)]) * scale
    t_skin, t_fat, t_bone, t_csf = rng.uniform(2, 3.5), rng.uniform(2.5, 5), rng.uniform(5, 8), rng.uniform(2, 4)
    c0 = np.zeros(3)
    brain = outer - (t_skin + t_fat + t_bone + t_csf)
    wm = brain * rng.uniform(0.68, 0.78)
    layers = [
        ("skin", c0, outer, 2.0),
        ("fat", c0, outer - t_skin, 2.0),
        ("bone", c0, outer - t_skin - t_fat, 2.0),
        ("csf", c0, outer - t_skin - t_fat - t_bone, 2.0),
        ("gm", c0, brain, 2.0),
        ("wm", c0 + rng.normal(0, 2, 3), wm, 2.0),
    ]
    off = rng.uniform(7, 12)
    vr = np.array([rng.uniform(4, 7), rng.uniform(14, 22), rng.uniform(7, 11)]) * scale
    for sign in (-1, 1):
        layers.append(("csf", np.array([sign * off, rng.uniform(-6, 4), rng.uniform(0, 10)]), vr, 2.0))
    return layers, {"organ": ("wm", c0, wm), "avoid": [(layer[1], layer[2]) for layer in layers[-2:]]}


def _layers_torso(rng: np.random.Generator, scale: float, modality: str) -> tuple[list[Layer], dict]:
    outer = np.array([rng.uniform(78, 90), rng.uniform(56, 68), rng.uniform(80, 90)]) * scale
    t_skin, t_fat, t_muscle = rng.uniform(2, 3), rng.uniform(7, 14), rng.uniform(7, 11)
    c0 = np.zeros(3)
    cavity = outer - (t_skin + t_fat + t_muscle)
    liver_c = np.array([-cavity[0] * rng.uniform(0.35, 0.45), -cavity[1] * rng.uniform(0.05, 0.2),
                        rng.uniform(-10, 10)])
    liver_r = np.array([cavity[0] * rng.uniform(0.45, 0.55), cavity[1] * rng.uniform(0.6, 0.72),
                        cavity[2] * rng.uniform(0.45, 0.6)])
    layers = [
        ("skin", c0, outer, 4.0),
        ("fat", c0, outer - t_skin, 4.0),
        ("muscle", c0, outer - t_skin - t_fat, 4.0),
        ("viscera", c0, cavity, 4.0),
        ("liver", liver_c, liver_r, 2.0),
        ("bone", np.array([0.0, cavity[1] * 0.8, 0.0]), np.array([11.0, 11.0, cavity[2] + 5]) * scale, 4.0),
    ]
    kid_r = np.array([rng.uniform(18, 24), rng.uniform(14, 18), rng.uniform(28, 36)]) * scale
    layers.append(("kidney", np.array([cavity[0] * 0.45, cavity[1] * 0.5, rng.uniform(-30, -15)]), kid_r, 2.0))
    if modality == "ct" or rng.random() < 0.5:
        lung_r = np.array([cavity[0] * 0.35, cavity[1] * 0.6, cavity[2] * 0.3])
        for sign in (-1, 1):
            layers.append(("lung", np.array([sign * cavity[0] * 0.45, -cavity[1] * 0.05, cavity[2] * 0.75]),
                           lung_r, 2.0))
    return layers, {"organ": ("liver", liver_c, liver_r), "avoid": []}


def _lesion_site(rng: np.random.Generator, parts: dict, radius: float) -> np.ndarray:
    """A point well inside the target organ, clear of the structures in ``parts['avoid']``."""
    _, centre, radii = parts["organ"]
    for _ in range(200):
        v = rng.normal(size=3)
        v *= rng.uniform(0.0, 0.7) / np.linalg.norm(v)
        p = centre + v * radii
        if all(np.linalg.norm((p - c) / (r + radius + 3.0)) > 1.0 for c, r in parts["avoid"]):
            return p
    return centre.copy()


# ---------------------------------------------------------------- grids


def _base_direction(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A scanner orientation: axial, coronal or sagittal slices, any signs; columns are the axis directions."""
    plane = rng.choice(["axial", "axial", "coronal", "sagittal"])
    perm = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}[plane]
    d = np.zeros((3, 3))
    signs = rng.choice([-1.0, 1.0], size=3)
    if plane == "axial" and rng.random() < 0.6:
        signs = np.array([1.0, 1.0, 1.0]) if rng.random() < 0.5 else np.array([-1.0, -1.0, 1.0])  # LPS or RAS
    for col, row in enumerate(perm):
        d[row, col] = signs[col]
    return d, str(plane)


def _grid(rng: np.random.Generator, half_extent: float, size: int | None, dicom: bool, oblique_prob: float
          ) -> tuple[Grid, float]:
    direction, _ = _base_direction(rng)
    oblique = 0.0
    if rng.random() < oblique_prob:
        rot = rotation(rng, 25.0)
        direction = rot @ direction
        oblique = float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1))))
    if dicom and np.linalg.det(direction) < 0:
        direction[:, 2] *= -1  # DICOM slice axis is row x column: right-handed only
    extent = 2 * half_extent * rng.uniform(1.02, 1.12)
    if size is not None:
        spacing = extent / size * rng.uniform(0.92, 1.08, size=3)
    else:
        spacing = np.array([rng.uniform(1.4, 2.4)] * 2 + [rng.uniform(2.0, 4.0)])
        spacing[1] = spacing[0] * rng.uniform(0.95, 1.05)
    n = np.maximum(np.ceil(extent / spacing), 8).astype(int)
    centre = np.array([rng.uniform(-20, 20), rng.uniform(-30, 10), rng.uniform(-60, 60)])
    origin = centre - direction @ (spacing * (n - 1) / 2)
    grid = Grid(size=tuple(int(v) for v in n), spacing=tuple(float(round(s, 4)) for s in spacing),
                direction=direction, origin=origin)
    return grid, oblique


# ---------------------------------------------------------------- rendering


def render_case(index: int, seed: int, label: str, modality: str, *, kind: Kind | None = None,
                size: int | None = None, lesion_radius_mm: tuple[float, float] = (2.0, 6.0),
                dicom: bool = False, oblique_prob: float = 0.3) -> tuple[sitk.Image, CaseSpec]:
    """Render one study. ``size`` (voxels per axis) overrides the clinical spacing ranges (tests: 32)."""
    rng = np.random.default_rng([seed, index])
    drawn: Kind = "head" if rng.random() < 0.5 else "torso"
    kind = kind or drawn
    tissue = MRI if modality == "mri" else CT
    scale = rng.uniform(0.9, 1.05)
    if kind == "head":
        layers, parts = _layers_head(rng, scale)
    else:
        layers, parts = _layers_torso(rng, scale, modality)
    half = float(max(np.max(r + np.abs(c)) for _, c, r, _ in layers)) + 6.0
    grid, oblique = _grid(rng, half, size, dicom, oblique_prob)

    obj_rot = rotation(rng, 10.0)
    obj_centre = grid.origin + grid.direction @ (np.asarray(grid.spacing) * (np.asarray(grid.size) - 1) / 2)
    obj_centre = obj_centre + rng.uniform(-6, 6, size=3)
    pts = grid.points()
    q = np.tensordot(obj_rot.T.astype(np.float32), pts - obj_centre.astype(np.float32)[:, None, None, None], axes=1)
    edge = 0.3 * float(np.mean(grid.spacing))

    img = np.full(pts.shape[1:], tissue["air"], dtype=np.float32)
    for name, centre, radii, zp in layers:
        m = soft_ellipsoid(q, centre, radii, edge, zp)
        img += m * (tissue[name] - img)
    texture = 1.0 + smooth_field(rng, img.shape, 0.04)
    body = img > (tissue["air"] + 50 if modality == "ct" else 50.0)
    img = np.where(body, img * texture if modality == "mri" else img + 25 * (texture - 1) / 0.04, img)

    spec_lesion = None
    if label == "lesion":
        radius = float(rng.uniform(*lesion_radius_mm))
        site = _lesion_site(rng, parts, radius)
        organ_value = tissue[parts["organ"][0]]
        # Hyperintense, as FLAIR/T2 lesions or enhancing lesions are: 1.7-2.2x the host tissue on MRI,
        # +50-80 HU on CT.
        if modality == "mri":
            value = organ_value * rng.uniform(1.7, 2.2)
        else:
            value = organ_value + rng.uniform(50.0, 80.0)
        m = soft_ellipsoid(q, site, np.full(3, radius), edge)
        img += m * (value - img)
        spec_lesion = (obj_centre + obj_rot @ site, radius)

    if modality == "mri":
        img *= bias_field(pts, obj_centre, rng, strength=rng.uniform(0.15, 0.3))
        sigma = 0.02 * tissue["wm"]
        img = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)
    else:
        img = img + rng.normal(0, 7.0, img.shape)
    arr = np.clip(np.rint(img), -32768, 32767).astype(np.int16)

    image = grid.image(arr)
    spec = CaseSpec(
        index=index, label=label, kind=kind, modality=modality, format="dicom" if dicom else "",
        spacing=list(grid.spacing), size=list(grid.size),
        orientation=sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(grid.direction.ravel().tolist()),
        oblique_deg=round(oblique, 2),
        lesion_center_mm=[round(float(v), 2) for v in spec_lesion[0]] if spec_lesion else None,
        lesion_radius_mm=round(spec_lesion[1], 2) if spec_lesion else None,
    )
    return image, spec


def synth_dataset(out: str | Path, cases: int = 40, modality: str = "mri", seed: int = 0, *,
                  size: int | None = None, lesion_radius_mm: tuple[float, float] = (2.0, 6.0),
                  dicom_fraction: float | None = None, on_case=None) -> Path:
    """Write ``cases`` studies under ``out`` plus ``manifest.csv`` (``path,label``) and ``cases.jsonl``.

    Half the studies (rounded down) carry a lesion. ``on_case(spec)`` is called after each study (progress).
    Returns the manifest path.
    """
    out = Path(out)
    (out / "studies").mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng([seed, 10**6]).permutation(cases)
    labels = ["lesion" if rank < cases // 2 else "normal" for rank in np.argsort(order)]
    # Body kind alternates within each label, so kind says nothing about the label (no shortcut to learn).
    seen = {"lesion": 0, "normal": 0}
    kinds: list[Kind] = []
    for lab in labels:
        kinds.append("head" if (seen[lab] + seed) % 2 == 0 else "torso")
        seen[lab] += 1
    weights = np.asarray(FORMAT_WEIGHTS)
    if dicom_fraction is not None:
        weights = np.array([dicom_fraction, *list((1 - dicom_fraction) * weights[1:] / weights[1:].sum())])
    rows, specs = [], []
    for i in range(cases):
        fmt = str(np.random.default_rng([seed, i, 7]).choice(FORMATS, p=weights / weights.sum()))
        image, spec = render_case(i, seed, labels[i], modality, kind=kinds[i], size=size,
                                  lesion_radius_mm=lesion_radius_mm, dicom=fmt == "dicom")
        name = f"case_{i:04d}"
        if fmt == "dicom":
            rel = Path("studies") / name
            write_dicom_series(image, out / rel, modality="MR" if modality == "mri" else "CT")
        else:
            rel = Path("studies") / f"{name}.{fmt}"
            write_volume(image, out / rel)
        spec.format, spec.path = fmt, rel.as_posix()
        rows.append({"path": rel.as_posix(), "label": spec.label})
        specs.append(spec)
        if on_case is not None:
            on_case(spec)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "cases.jsonl", "w", encoding="utf-8") as f:
        for spec in specs:
            f.write(json.dumps(asdict(spec)) + "\n")
    return manifest


# ---------------------------------------------------------------- benchmark phantom


def bias_phantom(size: tuple[int, int, int] = (160, 192, 192), spacing: float = 1.0, seed: int = 0,
                 strength: float = 0.3) -> dict:
    """An MRI head phantom on an axial LPS grid with a known bias field, for the N4 benchmark.

    Returns {"image": biased sitk float32, "truth": unbiased sitk float32, "bias": sitk float32,
    "wm_mask": sitk uint8} where ``wm_mask`` is the eroded white matter, a single tissue whose
    coefficient of variation measures residual bias (noise sets its floor).
    """
    rng = np.random.default_rng(seed)
    n = np.asarray(size)
    grid = Grid(size=tuple(int(v) for v in n), spacing=(spacing,) * 3, direction=np.eye(3),
                origin=-(n - 1) * spacing / 2)
    pts = grid.points()
    layers, _ = _layers_head(rng, 1.0)
    half = np.asarray(size) * spacing / 2
    outer = layers[0][2]
    fit = min(1.0, float(np.min((half - 4) / outer)))  # shrink the head to fit the grid
    edge = 0.3 * spacing
    img = np.zeros(pts.shape[1:], dtype=np.float32)
    wm = None
    for name, centre, radii, zp in layers:
        m = soft_ellipsoid(pts, centre * fit, radii * fit, edge, zp)
        img += m * (MRI[name] - img)
        if name == "wm":
            wm = m > 0.99
    for _, centre, radii, zp in layers[6:]:
        wm &= soft_ellipsoid(pts, centre * fit, radii * fit + 3.0, edge, zp) < 0.01  # keep ventricles out
    bias = bias_field(pts, np.zeros(3), rng, strength=strength)
    sigma = 0.02 * MRI["wm"]
    truth = img
    noisy = np.sqrt((img * bias + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)
    wm = ndimage.binary_erosion(wm, iterations=2)
    return {
        "image": grid.image(noisy.astype(np.float32)),
        "truth": grid.image(truth.astype(np.float32)),
        "bias": grid.image(bias),
        "wm_mask": grid.image(wm.astype(np.uint8)),
    }
