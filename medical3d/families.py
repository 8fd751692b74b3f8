"""Phantom families: plain-data distributions that ``medical3d.synth`` draws studies from.

A family fixes what varies between studies and how much: the anatomy (body kinds, their size and internal
structure, the organ that hosts the lesion), the lesion (shape, radius, contrast sign and strength, margin),
the acquisition (modality, spacing, orientation, obliquity, noise, MRI bias) and the storage format mix. Train on
some families and test on another to measure how a model copes with a new scanner or anatomy.

A ``Range`` ``(low, high)`` is drawn uniformly; ``low == high`` is a constant and draws nothing, which keeps the
random stream of ``classic`` (the original generator) unchanged. Pure data and the standard library only: the CLI
imports this module to list the families.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from common.errors import InputError

Range = tuple[float, float]
Range3 = tuple[Range, Range, Range]
Kind = Literal["head", "torso"]
Modality = Literal["mri", "ct"]
LesionShape = Literal["sphere", "ellipsoid", "lobulated"]
Sign = Literal["bright", "dark", "either"]
Plane = Literal["axial", "coronal", "sagittal"]
Target = Literal["liver", "kidney", "spleen"]
FORMATS = ("dicom", "nii.gz", "nrrd", "mha", "mhd")


@dataclass(frozen=True)
class HeadShape:
    """Nested head compartments (mm; x left, y posterior, z superior half-axes). The lesion host is white matter."""

    outer_mm: Range3  # half-axes of the skin surface, before the per-study scale
    skin_mm: Range
    fat_mm: Range
    bone_mm: Range  # skull thickness
    csf_mm: Range  # subarachnoid space
    wm_fraction: Range  # white-matter half-axes / brain half-axes
    ventricles: bool  # two lateral ventricles (CSF) that lesions keep clear of
    ventricle_mm: Range3  # ventricle half-axes
    nuclei: bool  # two deep grey-matter nuclei inside the white matter


@dataclass(frozen=True)
class TorsoShape:
    """Torso layers (skin, fat, muscle, abdominal cavity) with liver, spine, a kidney, optional spleen and lungs."""

    outer_mm: Range3
    power: float  # superellipsoid exponent of the outline: 2 round, 4 box-like
    skin_mm: Range
    fat_mm: Range
    muscle_mm: Range
    kidney_mm: Range3
    spleen: bool
    lung_prob: float  # MRI: probability that the lung bases are in the field of view (CT: always)
    target: Target  # the organ that hosts the lesion


@dataclass(frozen=True)
class Anatomy:
    """Which bodies a family draws and their shapes."""

    kinds: tuple[Kind, ...]  # body kinds, alternated within each label so the kind says nothing of the label
    scale: Range  # per-study size factor
    head: HeadShape
    torso: TorsoShape


@dataclass(frozen=True)
class LesionModel:
    """How a lesion is drawn: shape, size, contrast sign and strength against its host tissue, margin, site."""

    shapes: tuple[LesionShape, ...]  # drawn uniformly; lobulated = union of 2-3 overlapping blobs
    radius_mm: Range  # radius of the main blob (an ellipsoid's smallest half-axis)
    sign: Sign  # brighter or darker than the host tissue, or either (drawn 50/50)
    mri_ratio: Range  # MRI: lesion/host intensity (bright) or host/lesion (dark), >= 1
    ct_offset_hu: Range  # CT: |lesion - host| in HU
    margin_mm: Range  # 10-90 % width of a diffuse edge; 0 = sharp (partial volume only)
    reach: float  # the centre lies within this fraction of the host organ's half-axes
    contained: bool  # the whole lesion (and its margin) lies inside the host organ
    clear_of: tuple[str, ...]  # structures the lesion keeps 3 mm away from: ventricles, nuclei, kidney, lungs


@dataclass(frozen=True)
class Acquisition:
    """The scanner: modality, voxel spacing, slice orientation and obliquity, noise and MRI bias."""

    modalities: tuple[Modality, ...]  # the first is the default
    inplane_mm: Range  # clinical in-plane spacing
    slice_mm: Range  # clinical slice spacing (thick slices: anisotropic)
    size_slice_ratio: Range  # with an explicit --size: slice / in-plane spacing, so thick stays thick in tests
    planes: tuple[Plane, ...]  # slice plane drawn uniformly (repeat an entry to weight it)
    standard_prob: float  # axial: probability of a plain LPS or RAS frame (else random axis signs)
    ras_prob: float  # ... of which RAS
    oblique_prob: float
    oblique_max_deg: float
    mri_noise: Range  # Rician sigma as a fraction of white-matter intensity
    ct_noise_hu: Range  # Gaussian sigma, HU
    bias: Range  # MRI bias-field strength (log-scale coefficients per 100 mm)


@dataclass(frozen=True)
class Storage:
    """How studies are written."""

    weights: tuple[float, float, float, float, float]  # over FORMATS: dicom, nii.gz, nrrd, mha, mhd


@dataclass(frozen=True)
class Family:
    """One phantom family; ``FAMILIES`` holds the registered ones."""

    name: str
    summary: str
    anatomy: Anatomy
    lesion: LesionModel
    acquisition: Acquisition
    storage: Storage
    paired: bool  # lesion drawn from its own random stream: a study's normal twin differs only by the lesion
    salt: int  # mixed into every random stream so families drawn with one seed are independent; 0 = classic's

    @property
    def modality(self) -> Modality:
        """The default modality: the first the family renders (classic renders mri and ct)."""
        return self.acquisition.modalities[0]


_HEAD = HeadShape(outer_mm=((68, 78), (82, 92), (78, 90)), skin_mm=(2, 3.5), fat_mm=(2.5, 5), bone_mm=(5, 8),
                  csf_mm=(2, 4), wm_fraction=(0.68, 0.78), ventricles=True,
                  ventricle_mm=((4, 7), (14, 22), (7, 11)), nuclei=False)
_TORSO = TorsoShape(outer_mm=((78, 90), (56, 68), (80, 90)), power=4.0, skin_mm=(2, 3), fat_mm=(7, 14),
                    muscle_mm=(7, 11), kidney_mm=((18, 24), (14, 18), (28, 36)), spleen=False, lung_prob=0.5,
                    target="liver")
_ACQ = Acquisition(modalities=("mri", "ct"), inplane_mm=(1.4, 2.4), slice_mm=(2.0, 4.0), size_slice_ratio=(1.0, 1.0),
                   planes=("axial", "axial", "coronal", "sagittal"), standard_prob=0.6, ras_prob=0.5,
                   oblique_prob=0.3, oblique_max_deg=25.0, mri_noise=(0.02, 0.02), ct_noise_hu=(7.0, 7.0),
                   bias=(0.15, 0.3))
_LESION = LesionModel(shapes=("sphere",), radius_mm=(2.0, 6.0), sign="bright", mri_ratio=(1.7, 2.2),
                      ct_offset_hu=(50.0, 80.0), margin_mm=(0.0, 0.0), reach=0.7, contained=False,
                      clear_of=("ventricles",))
_NEW_LESION = replace(_LESION, contained=True, clear_of=("ventricles", "nuclei", "kidney", "lungs"))

CLASSIC = Family(
    name="classic", summary="the original phantoms: head or torso, small bright spheres, mixed scanners",
    anatomy=Anatomy(kinds=("head", "torso"), scale=(0.9, 1.05), head=_HEAD, torso=_TORSO), lesion=_LESION,
    acquisition=_ACQ, storage=Storage(weights=(0.3, 0.35, 0.15, 0.1, 0.1)), paired=False, salt=0)

BRAIN_MIXED = replace(
    CLASSIC, name="brain_mixed", paired=True, salt=1,
    summary="rounder heads with a thick skull, large ventricles and deep nuclei; 5-10 mm lesions of either sign",
    anatomy=Anatomy(kinds=("head",), scale=(0.9, 1.0), torso=_TORSO, head=replace(
        _HEAD, outer_mm=((74, 82), (78, 86), (76, 86)), bone_mm=(7, 10), ventricle_mm=((6, 10), (18, 26), (9, 13)),
        nuclei=True)),
    lesion=replace(_NEW_LESION, shapes=("sphere", "ellipsoid"), radius_mm=(5.0, 10.0), sign="either",
                   mri_ratio=(1.4, 1.9), margin_mm=(0.5, 2.0)),
    acquisition=replace(_ACQ, modalities=("mri",), inplane_mm=(1.0, 1.6), slice_mm=(1.0, 2.5),
                        planes=("axial", "coronal", "sagittal"), standard_prob=1.0, oblique_prob=0.5,
                        oblique_max_deg=30.0, mri_noise=(0.015, 0.03), bias=(0.2, 0.4)),
    storage=Storage(weights=(0.4, 0.3, 0.3, 0.0, 0.0)))

THICK_SLICE = replace(
    CLASSIC, name="thick_slice", paired=True, salt=2,
    summary="thick 4-6 mm slices, ~1 mm in-plane, strong bias and more noise; head or torso",
    lesion=replace(_NEW_LESION, shapes=("sphere", "ellipsoid"), radius_mm=(5.0, 9.0), mri_ratio=(1.5, 2.0)),
    anatomy=replace(CLASSIC.anatomy, scale=(0.9, 1.0)),
    acquisition=replace(_ACQ, modalities=("mri",), inplane_mm=(0.9, 1.2), slice_mm=(4.0, 6.0),
                        size_slice_ratio=(1.8, 2.4), planes=("axial", "axial", "coronal"), standard_prob=1.0,
                        oblique_prob=0.2, oblique_max_deg=15.0, mri_noise=(0.03, 0.045), bias=(0.35, 0.5)),
    storage=Storage(weights=(0.5, 0.3, 0.1, 0.05, 0.05)))

ABDOMEN_MRI = replace(
    CLASSIC, name="abdomen_mri", paired=True, salt=3,
    summary="rounder abdomen without lungs; lobulated spleen lesions of either sign with diffuse margins",
    anatomy=Anatomy(kinds=("torso",), scale=(0.9, 1.0), head=_HEAD, torso=replace(
        _TORSO, outer_mm=((76, 86), (62, 72), (80, 90)), power=3.0, fat_mm=(5, 10), spleen=True, lung_prob=0.0,
        target="spleen")),
    lesion=replace(_NEW_LESION, shapes=("lobulated",), radius_mm=(5.0, 8.0), sign="either", mri_ratio=(1.5, 2.0),
                   margin_mm=(2.0, 5.0)),
    acquisition=replace(_ACQ, modalities=("mri",), inplane_mm=(1.2, 2.0), slice_mm=(3.0, 5.0),
                        size_slice_ratio=(1.2, 1.6), planes=("axial", "axial", "coronal"), standard_prob=0.8,
                        oblique_prob=0.2, oblique_max_deg=15.0, mri_noise=(0.02, 0.03), bias=(0.25, 0.4)),
    storage=Storage(weights=(0.2, 0.4, 0.2, 0.2, 0.0)))

SUBTLE = replace(
    CLASSIC, name="subtle", paired=True, salt=4,
    summary="low-contrast 4-5.5 mm lesions of either sign; elongated heads without ventricles, or torsos",
    anatomy=Anatomy(kinds=("head", "torso"), scale=(0.9, 1.0), torso=_TORSO, head=replace(
        _HEAD, outer_mm=((62, 70), (86, 92), (80, 88)), ventricles=False)),
    lesion=replace(_NEW_LESION, radius_mm=(4.0, 5.5), sign="either", mri_ratio=(1.2, 1.4)),
    acquisition=replace(_ACQ, modalities=("mri",), mri_noise=(0.01, 0.02), bias=(0.1, 0.2)),
    storage=Storage(weights=(0.2, 0.5, 0.1, 0.1, 0.1)))

CT_LIVER = replace(
    CLASSIC, name="ct_liver", paired=True, salt=5,
    summary="abdominal CT: hypodense liver lesions 20-60 HU below the liver, sharp to slightly diffuse",
    anatomy=Anatomy(kinds=("torso",), scale=(0.95, 1.05), head=_HEAD, torso=replace(_TORSO, spleen=True)),
    lesion=replace(_NEW_LESION, shapes=("sphere", "ellipsoid", "lobulated"), radius_mm=(5.0, 10.0), sign="dark",
                   ct_offset_hu=(20.0, 60.0), margin_mm=(0.0, 2.0)),
    acquisition=replace(_ACQ, modalities=("ct",), inplane_mm=(1.0, 1.5), slice_mm=(2.5, 5.0),
                        size_slice_ratio=(1.0, 1.5), planes=("axial",), standard_prob=1.0, oblique_prob=0.0,
                        ct_noise_hu=(8.0, 14.0)),
    storage=Storage(weights=(0.6, 0.3, 0.1, 0.0, 0.0)))

CT_HEAD = replace(
    CLASSIC, name="ct_head", paired=True, salt=6,
    summary="head CT with gantry tilt: hyperdense haemorrhage-like lesions 40-70 HU above white matter",
    anatomy=Anatomy(kinds=("head",), scale=(0.92, 1.02), torso=_TORSO, head=replace(
        _HEAD, bone_mm=(6, 9), ventricle_mm=((5, 8), (15, 24), (8, 12)))),
    lesion=replace(_NEW_LESION, shapes=("sphere", "lobulated"), radius_mm=(5.0, 10.0), sign="bright",
                   ct_offset_hu=(40.0, 70.0), margin_mm=(0.0, 1.0)),
    acquisition=replace(_ACQ, modalities=("ct",), inplane_mm=(1.0, 1.4), slice_mm=(2.5, 5.0),
                        size_slice_ratio=(1.0, 1.5), planes=("axial",), standard_prob=1.0, oblique_prob=0.5,
                        oblique_max_deg=20.0, ct_noise_hu=(3.0, 6.0)),
    storage=Storage(weights=(0.7, 0.3, 0.0, 0.0, 0.0)))

FAMILIES: dict[str, Family] = {f.name: f for f in (CLASSIC, BRAIN_MIXED, THICK_SLICE, ABDOMEN_MRI, SUBTLE, CT_LIVER,
                                                    CT_HEAD)}


def family_names() -> list[str]:
    return list(FAMILIES)


def get_family(name: str | Family) -> Family:
    """The registered family called ``name`` (a ``Family`` passes through); ``InputError`` names the known ones."""
    if isinstance(name, Family):
        return name
    if name not in FAMILIES:
        raise InputError(f"unknown phantom family {name!r}; known families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def resolve_modality(family: Family, modality: str | None) -> str:
    """The modality to render: the family's first when None; ``InputError`` when the family cannot render it."""
    if modality is None:
        return family.acquisition.modalities[0]
    if modality not in family.acquisition.modalities:
        raise InputError(f"family {family.name!r} renders {'/'.join(family.acquisition.modalities)}, "
                         f"not modality {modality!r}")
    return modality


def _rng(r: Range, unit: str = "", digits: int = 0) -> str:
    lo, hi = (f"{v:.{digits}f}" for v in r)
    return f"{lo}{unit}" if lo == hi else f"{lo}-{hi}{unit}"


def _anatomy_words(f: Family) -> str:
    parts = []
    for kind in f.anatomy.kinds:
        if kind == "head":
            h = f.anatomy.head
            inner = ["ventricles " + _rng(h.ventricle_mm[1], " mm") if h.ventricles else "no ventricles"]
            inner += ["deep nuclei"] if h.nuclei else []
            parts.append(f"head {'x'.join(_rng(r) for r in h.outer_mm)} mm, skull {_rng(h.bone_mm, ' mm')}, "
                         f"{', '.join(inner)}; lesion in white matter")
        else:
            t = f.anatomy.torso
            extra = ["spleen"] if t.spleen else []
            if f.acquisition.modalities == ("ct",):
                extra.append("lungs")
            elif t.lung_prob > 0:
                extra.append(f"lungs {t.lung_prob:.0%} on MRI")
            parts.append(f"torso {'x'.join(_rng(r) for r in t.outer_mm)} mm (power {t.power:g}), "
                         f"{', '.join(['liver', 'kidney', *extra])}; lesion in {t.target}")
    return " | ".join(parts)


def _lesion_words(f: Family) -> str:
    les, mods = f.lesion, f.acquisition.modalities
    contrast = []
    if "mri" in mods:
        contrast.append(f"x{_rng(les.mri_ratio, digits=2)}")
    if "ct" in mods:
        contrast.append(f"{_rng(les.ct_offset_hu, ' HU')}")
    margin = "sharp" if les.margin_mm == (0.0, 0.0) else f"margin {_rng(les.margin_mm, ' mm', 1)}"
    return (f"{'/'.join(les.shapes)}, r {_rng(les.radius_mm, ' mm', 1)}, {les.sign} {' or '.join(contrast)}, "
            f"{margin}")


def _acquisition_words(f: Family) -> str:
    a = f.acquisition
    planes = "/".join(dict.fromkeys(a.planes))
    noise = []
    if "mri" in a.modalities:
        noise.append(f"noise {_rng(tuple(100 * v for v in a.mri_noise), ' %', 1)}, bias {_rng(a.bias, digits=2)}")
    if "ct" in a.modalities:
        noise.append(f"noise {_rng(a.ct_noise_hu, ' HU')}")
    oblique = f"{a.oblique_prob:.0%} oblique <= {a.oblique_max_deg:g} deg" if a.oblique_prob > 0 else "no oblique"
    return (f"{'/'.join(a.modalities)}; {_rng(a.inplane_mm, digits=1)} mm in-plane, {_rng(a.slice_mm, digits=1)} mm "
            f"slices; {planes}; {oblique}; {'; '.join(noise)}")


def describe_families() -> list[dict[str, str]]:
    """One row per family for a table: name, modality, anatomy, lesion, acquisition, storage (in words)."""
    rows = []
    for f in FAMILIES.values():
        storage = ", ".join(f"{fmt} {w:.0%}" for fmt, w in zip(FORMATS, f.storage.weights, strict=True) if w > 0)
        rows.append({"name": f.name, "modality": "/".join(f.acquisition.modalities),
                     "anatomy": _anatomy_words(f), "lesion": _lesion_words(f),
                     "acquisition": _acquisition_words(f), "storage": storage, "summary": f.summary})
    return rows
