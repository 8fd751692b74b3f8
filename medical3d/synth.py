"""Synthetic CT/MRI studies: head- and torso-like phantoms with tissue layers, half with a lesion.

Each phantom is defined analytically in patient (LPS, mm) space (``medical3d.synth_anatomy``) and sampled on a
scanner grid with its own spacing, orientation (axial/coronal/sagittal, RAS or LPS, some oblique) and position,
so the data exercise the physical-space handling of the pipeline. MRI studies get a smooth multiplicative bias
field and Rician noise; CT studies are in HU with Gaussian noise. Some studies are written as DICOM series. A
phantom family (``medical3d.families``) fixes the distributions; ``classic`` is the original generator.

Deterministic per seed: case ``i`` draws from ``numpy.random.default_rng([seed, i])`` (other families append their
salt; a paired family draws the lesion from its own stream, so a normal rendering differs only by the lesion).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from common.errors import InputError
from medical3d.families import CLASSIC, FORMATS, Acquisition, Family, Kind, Range, get_family, resolve_modality
from medical3d.synth_anatomy import (
    CT,
    MRI,
    Layer,
    bias_field,
    draw,
    draw_lesion,
    head_layers,
    lesion_indicator,
    rotation,
    smooth_field,
    soft_ellipsoid,
    torso_layers,
)
from medical3d.writers import write_dicom_series, write_volume

LABELS = ("normal", "lesion")
FORMAT_WEIGHTS = CLASSIC.storage.weights
__all__ = ["CT", "FORMATS", "FORMAT_WEIGHTS", "LABELS", "MRI", "CaseSpec", "Grid", "bias_field", "bias_phantom",
           "render_case", "rotation", "smooth_field", "soft_ellipsoid", "synth_dataset"]


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
    """What was drawn for one study (one row of cases.jsonl). Lesion fields are None for a normal study.

    ``lesion_contrast``: MRI lesion / host intensity, CT lesion - host in HU, before bias and noise.
    """

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
    family: str = "classic"
    lesion_shape: str | None = None
    lesion_sign: str | None = None
    lesion_contrast: float | None = None
    lesion_margin_mm: float | None = None
    lesion_extent_mm: float | None = None
    host_tissue: str | None = None


def _stream(seed: int, family: Family, *parts: int) -> np.random.Generator:
    return np.random.default_rng([seed, *parts, *([family.salt] if family.salt else [])])


# ---------------------------------------------------------------- grids


def _base_direction(rng: np.random.Generator, acq: Acquisition) -> tuple[np.ndarray, str]:
    """A scanner orientation: axial, coronal or sagittal slices, any signs; columns are the axis directions."""
    plane = rng.choice(list(acq.planes))
    perm = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}[plane]
    d = np.zeros((3, 3))
    signs = rng.choice([-1.0, 1.0], size=3)
    if plane == "axial" and rng.random() < acq.standard_prob:
        lps = rng.random() < 1.0 - acq.ras_prob
        signs = np.array([1.0, 1.0, 1.0]) if lps else np.array([-1.0, -1.0, 1.0])  # LPS or RAS
    for col, row in enumerate(perm):
        d[row, col] = signs[col]
    return d, str(plane)


def _grid(rng: np.random.Generator, half_extent: float, size: int | None, dicom: bool, acq: Acquisition
          ) -> tuple[Grid, float]:
    """A scanner grid around the body; axis 2 is the slice axis (thick in anisotropic families)."""
    direction, _ = _base_direction(rng, acq)
    oblique = 0.0
    if rng.random() < acq.oblique_prob:
        rot = rotation(rng, acq.oblique_max_deg)
        direction = rot @ direction
        oblique = float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1))))
    if dicom and np.linalg.det(direction) < 0:
        direction[:, 2] *= -1  # DICOM slice axis is row x column: right-handed only
    extent = 2 * half_extent * rng.uniform(1.02, 1.12)
    if size is not None:
        spacing = extent / size * rng.uniform(0.92, 1.08, size=3)
        spacing[2] *= draw(rng, acq.size_slice_ratio)
    else:
        spacing = np.array([draw(rng, acq.inplane_mm)] * 2 + [draw(rng, acq.slice_mm)])
        spacing[1] = spacing[0] * rng.uniform(0.95, 1.05)
    n = np.maximum(np.ceil(extent / spacing), 8).astype(int)
    centre = np.array([rng.uniform(-20, 20), rng.uniform(-30, 10), rng.uniform(-60, 60)])
    origin = centre - direction @ (spacing * (n - 1) / 2)
    grid = Grid(size=tuple(int(v) for v in n), spacing=tuple(float(round(s, 4)) for s in spacing),
                direction=direction, origin=origin)
    return grid, oblique


# ---------------------------------------------------------------- rendering


def _paint_body(rng: np.random.Generator, grid: Grid, layers: list[Layer], tissue: dict[str, float], modality: str
                ) -> tuple[np.ndarray, dict]:
    """The body on ``grid`` (float32 z, y, x) with a smooth texture, and the object frame: ``q`` object
    coordinates of every voxel, ``pts`` physical ones, ``rot``/``centre`` object to patient, ``edge`` mm."""
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
    return img, {"q": q, "pts": pts, "rot": obj_rot, "centre": obj_centre, "edge": edge}


def _acquire(rng: np.random.Generator, img: np.ndarray, frame: dict, tissue: dict[str, float], modality: str,
             acq: Acquisition) -> np.ndarray:
    """Scanner effects: MRI bias field and Rician noise, CT Gaussian noise; int16 like a stored study."""
    if modality == "mri":
        img *= bias_field(frame["pts"], frame["centre"], rng, strength=draw(rng, acq.bias))
        sigma = draw(rng, acq.mri_noise) * tissue["wm"]
        img = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)
    else:
        img = img + rng.normal(0, draw(rng, acq.ct_noise_hu), img.shape)
    return np.clip(np.rint(img), -32768, 32767).astype(np.int16)


def render_case(index: int, seed: int, label: str, modality: str | None = None, *, kind: Kind | None = None,
                size: int | None = None, lesion_radius_mm: Range | None = None, dicom: bool = False,
                oblique_prob: float | None = None, family: str | Family = "classic") -> tuple[sitk.Image, CaseSpec]:
    """Render one study of ``family``. ``size`` (voxels per axis) overrides the clinical spacing ranges (tests:
    32); ``lesion_radius_mm`` and ``oblique_prob`` override the family's (None: the family's own)."""
    fam = get_family(family)
    modality = resolve_modality(fam, modality)
    acq = fam.acquisition if oblique_prob is None else replace(fam.acquisition, oblique_prob=oblique_prob)
    rng = _stream(seed, fam, index)
    drawn: Kind = "head" if rng.random() < 0.5 else "torso"
    kind = kind or (drawn if drawn in fam.anatomy.kinds else fam.anatomy.kinds[0])
    tissue = MRI if modality == "mri" else CT
    scale = draw(rng, fam.anatomy.scale)
    if kind == "head":
        layers, parts = head_layers(rng, scale, fam.anatomy.head)
    else:
        layers, parts = torso_layers(rng, scale, fam.anatomy.torso, modality)
    half = float(max(np.max(r + np.abs(c)) for _, c, r, _ in layers)) + 6.0
    grid, oblique = _grid(rng, half, size, dicom, acq)
    img, frame = _paint_body(rng, grid, layers, tissue, modality)

    lesion = None
    if label == "lesion":
        lesion_rng = _stream(seed, fam, index, 11) if fam.paired else rng
        lesion = draw_lesion(lesion_rng, fam.lesion, parts, tissue, modality, lesion_radius_mm or fam.lesion.radius_mm)
        m = lesion_indicator(frame["q"], lesion, frame["edge"])
        img += m * (lesion.value - img)
    arr = _acquire(rng, img, frame, tissue, modality, acq)

    spec = CaseSpec(
        index=index, label=label, kind=kind, modality=modality, format="dicom" if dicom else "",
        spacing=list(grid.spacing), size=list(grid.size),
        orientation=sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(grid.direction.ravel().tolist()),
        oblique_deg=round(oblique, 2), family=fam.name,
    )
    if lesion is not None:
        centre = frame["centre"] + frame["rot"] @ lesion.centre
        spec = replace(spec, lesion_center_mm=[round(float(v), 2) for v in centre],
                       lesion_radius_mm=round(lesion.radius, 2), lesion_shape=lesion.shape, lesion_sign=lesion.sign,
                       lesion_contrast=round(lesion.contrast, 3), lesion_margin_mm=round(lesion.margin, 2),
                       lesion_extent_mm=round(lesion.extent, 2), host_tissue=lesion.host)
    return grid.image(arr), spec


def _labels_and_kinds(cases: int, seed: int, fam: Family) -> tuple[list[str], list[Kind]]:
    """Half the studies (rounded down) carry a lesion, in a seeded order; body kinds cycle within each label, so
    the kind says nothing about the label (no shortcut to learn)."""
    order = _stream(seed, fam, 10**6).permutation(cases)
    labels = ["lesion" if rank < cases // 2 else "normal" for rank in np.argsort(order)]
    seen = {"lesion": 0, "normal": 0}
    kinds: list[Kind] = []
    for lab in labels:
        kinds.append(fam.anatomy.kinds[(seen[lab] + seed) % len(fam.anatomy.kinds)])
        seen[lab] += 1
    return labels, kinds


def _format_weights(fam: Family, dicom_fraction: float | None) -> np.ndarray:
    weights = np.asarray(fam.storage.weights)
    if dicom_fraction is not None:
        rest = weights[1:] if weights[1:].sum() > 0 else np.ones(len(weights) - 1)
        weights = np.array([dicom_fraction, *list((1 - dicom_fraction) * rest / rest.sum())])
    return weights / weights.sum()


def synth_dataset(out: str | Path, cases: int = 40, modality: str | None = None, seed: int = 0, *,
                  family: str | Family = "classic", size: int | None = None, lesion_radius_mm: Range | None = None,
                  dicom_fraction: float | None = None, on_case=None) -> Path:
    """Write ``cases`` studies of ``family`` under ``out`` plus ``manifest.csv`` (``path,label``) and
    ``cases.jsonl`` (one ``CaseSpec`` per study).

    ``modality``: None for the family's own (classic: mri); a modality the family does not render is an
    ``InputError``. ``lesion_radius_mm`` overrides the family's radius range. Half the studies (rounded down)
    carry a lesion. ``on_case(spec)`` is called after each study (progress). Returns the manifest path.
    """
    fam = get_family(family)
    modality = resolve_modality(fam, modality)
    if lesion_radius_mm is not None and not 0 < lesion_radius_mm[0] <= lesion_radius_mm[1]:
        raise InputError(f"lesion radius range {tuple(lesion_radius_mm)} mm: need 0 < min <= max")
    if dicom_fraction is not None and not 0.0 <= dicom_fraction <= 1.0:
        raise InputError(f"dicom_fraction {dicom_fraction}: need a fraction in [0, 1]")
    out = Path(out)
    (out / "studies").mkdir(parents=True, exist_ok=True)
    labels, kinds = _labels_and_kinds(cases, seed, fam)
    weights = _format_weights(fam, dicom_fraction)
    rows, specs = [], []
    for i in range(cases):
        fmt = str(_stream(seed, fam, i, 7).choice(FORMATS, p=weights))
        image, spec = render_case(i, seed, labels[i], modality, kind=kinds[i], size=size,
                                  lesion_radius_mm=lesion_radius_mm, dicom=fmt == "dicom", family=fam)
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
    layers, _ = head_layers(rng, 1.0, CLASSIC.anatomy.head)
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
