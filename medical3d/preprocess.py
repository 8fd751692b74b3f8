"""Preprocessing: pure functions over ``sitk.Image``, each returning ``(image, report)``, composed from config.

orient (``sitk.DICOMOrient``) -> N4 bias correction (MRI) -> resample onto an axis-aligned grid of the
canonical orientation -> crop/pad around the foreground box -> CT window or MRI z-score.

Every step works in physical space: a study stored RAS or LPS, oblique or not, lands on the same physical
grid. Arrays handed to the network are ``(1, D, H, W)`` float32, i.e. SimpleITK's (z, y, x) array order.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from common.errors import InputError
from common.results import display_text as shown
from medical3d.config import CropConfig, IntensityConfig, N4Config, OrientConfig, PreprocessConfig, ResampleConfig
from medical3d.io import StudyInfo, read_study

_INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}


# ---------------------------------------------------------------- helpers


def orientation_code(image: sitk.Image) -> str:
    """Three-letter DICOM orientation code of the closest axis-aligned orientation (e.g. ``LPS``)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def obliquity_deg(image: sitk.Image) -> float:
    """Largest angle (degrees) between an image axis and the closest patient axis; 0 for a straight scan."""
    d = np.abs(np.asarray(image.GetDirection(), dtype=float).reshape(3, 3))
    return float(np.degrees(np.arccos(np.clip(d.max(axis=0), -1.0, 1.0))).max())


def foreground_mask(image: sitk.Image, bins: int = 128) -> sitk.Image:
    """Otsu foreground (uint8, 1 inside): the voxels brighter than the Otsu threshold."""
    return sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1, bins)


def foreground_cv(image: sitk.Image, mask: sitk.Image) -> float:
    """Coefficient of variation (std / mean) of ``image`` inside ``mask``; NaN for an empty mask."""
    arr = sitk.GetArrayViewFromImage(image)
    m = sitk.GetArrayViewFromImage(mask) > 0
    if not m.any():
        return float("nan")
    vals = arr[m].astype(np.float64)
    mean = vals.mean()
    return float(vals.std() / mean) if mean != 0 else float("nan")


def set_threads(n: int | None) -> None:
    """SimpleITK worker threads for every filter created afterwards (None leaves the default: all cores)."""
    if n:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(n))


# ---------------------------------------------------------------- steps


@dataclass
class OrientReport:
    original: str
    result: str
    oblique_deg: float


def reorient(image: sitk.Image, cfg: OrientConfig) -> tuple[sitk.Image, OrientReport]:
    """Permute/flip axes to ``cfg.code`` (no interpolation; an oblique scan stays oblique until resampling)."""
    original = orientation_code(image)
    out = sitk.DICOMOrient(image, cfg.code) if cfg.enabled else image
    report = OrientReport(original=original, result=orientation_code(out), oblique_deg=round(obliquity_deg(image), 3))
    return out, report


@dataclass
class N4Report:
    seconds: float
    shrink_factor: int
    levels: int
    fit_size: list[int]
    bias_min: float  # of the bias field inside the foreground, normalised to mean 1 there
    bias_max: float
    cv_before: float  # foreground (Otsu) coefficient of variation
    cv_after: float


def n4_correct(image: sitk.Image, cfg: N4Config, mask: sitk.Image | None = None
               ) -> tuple[sitk.Image, sitk.Image, N4Report]:
    """N4 bias-field correction. Returns (corrected float32, bias field float32 on ``image``'s grid, report).

    The B-spline fit runs on ``image`` shrunk by ``cfg.shrink_factor`` inside an Otsu mask (or ``mask``); the
    log bias field is then evaluated on the full-resolution grid and divided out, so no detail is lost.
    The bias field is rescaled to mean 1 in the foreground (N4 leaves its scale free), which keeps the
    corrected intensities in the input's range.
    """
    t0 = time.perf_counter()
    img = sitk.Cast(image, sitk.sitkFloat32)
    full_mask = mask if mask is not None else foreground_mask(img, cfg.otsu_bins)
    f = cfg.shrink_factor
    small = sitk.Shrink(img, [f] * 3) if f > 1 else img
    small_mask = sitk.Shrink(full_mask, [f] * 3) if f > 1 else full_mask
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in cfg.iterations])  # its length is the number of levels
    n4.SetConvergenceThreshold(cfg.convergence_threshold)
    n4.SetNumberOfControlPoints([cfg.control_points] * 3)
    n4.SetSplineOrder(cfg.spline_order)
    n4.SetNumberOfHistogramBins(cfg.histogram_bins)
    n4.SetBiasFieldFullWidthAtHalfMaximum(cfg.fwhm)
    n4.SetWienerFilterNoise(cfg.wiener_noise)
    n4.Execute(small, small_mask)
    log_bias = n4.GetLogBiasFieldAsImage(img)
    m = sitk.GetArrayViewFromImage(full_mask) > 0
    log_arr = sitk.GetArrayViewFromImage(log_bias)
    offset = float(np.log(np.mean(np.exp(log_arr[m])))) if m.any() else 0.0
    bias = sitk.Exp(log_bias - offset)
    corrected = sitk.Cast(sitk.Divide(img, bias), sitk.sitkFloat32)
    bias_fg = sitk.GetArrayViewFromImage(bias)[m] if m.any() else np.ones(1)
    report = N4Report(
        seconds=round(time.perf_counter() - t0, 3),
        shrink_factor=f,
        levels=len(cfg.iterations),
        fit_size=list(small.GetSize()),
        bias_min=round(float(bias_fg.min()), 4),
        bias_max=round(float(bias_fg.max()), 4),
        cv_before=round(foreground_cv(img, full_mask), 5),
        cv_after=round(foreground_cv(corrected, full_mask), 5),
    )
    return corrected, sitk.Cast(bias, sitk.sitkFloat32), report


@dataclass
class ResampleReport:
    spacing: list[float]
    size: list[int]


def canonical_direction(code: str) -> tuple[float, ...]:
    """Direction cosines (row-major 3x3) of the axis-aligned grid in orientation ``code``."""
    return tuple(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(code))


def resample(image: sitk.Image, cfg: ResampleConfig, direction: tuple[float, ...] | None = None,
             source: str = "image") -> tuple[sitk.Image, ResampleReport]:
    """Resample onto a grid with spacing ``cfg.spacing`` and ``direction`` (default: the image's own) that
    covers the image's whole physical extent.

    The grid starts at the extent's lower corner in the output frame, so two copies of a study that cover the
    same physical box (e.g. stored RAS and LPS) get the very same grid. Downsampling is preceded by a
    Gaussian whose FWHM makes up the spacing difference (anti-aliasing). A grid over ``cfg.max_voxels`` is an
    ``InputError`` naming ``source`` before anything is allocated.
    """
    spacing_out = np.asarray(cfg.spacing, dtype=float)
    d_in = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    d_out = np.asarray(direction if direction is not None else image.GetDirection(), dtype=float).reshape(3, 3)
    spacing_in = np.asarray(image.GetSpacing(), dtype=float)
    size_in = np.asarray(image.GetSize(), dtype=float)
    origin_in = np.asarray(image.GetOrigin(), dtype=float)
    corners = np.array([[i, j, k] for i in (-0.5, size_in[0] - 0.5) for j in (-0.5, size_in[1] - 0.5)
                        for k in (-0.5, size_in[2] - 0.5)])
    phys = origin_in + (corners * spacing_in) @ d_in.T
    q = phys @ d_out  # coordinates along the output axes
    lo, hi = q.min(axis=0), q.max(axis=0)
    size_f = np.maximum(np.ceil((hi - lo) / spacing_out - 1e-6), 1)
    n_out = float(np.prod(size_f))
    if not np.isfinite(n_out) or n_out > cfg.max_voxels:
        raise InputError(
            f"{source}: resampling {'x'.join(str(int(s)) for s in size_in)} voxels at "
            f"{'x'.join(f'{s:g}' for s in spacing_in)} mm to {'x'.join(f'{s:g}' for s in spacing_out)} mm needs a "
            f"{'x'.join(f'{s:.0f}' for s in size_f)} grid ({n_out:.3g} voxels), over resample.max_voxels "
            f"{cfg.max_voxels}")
    size_out = size_f.astype(int)
    origin_out = d_out @ (lo + spacing_out / 2)

    src = sitk.Cast(image, sitk.sitkFloat32)
    if cfg.antialias:
        fwhm = np.sqrt(np.maximum(spacing_out.mean() ** 2 - spacing_in**2, 0.0))
        sigma = fwhm / 2.3548
        if np.any(sigma > 0.2 * spacing_in):
            src = sitk.SmoothingRecursiveGaussian(src, np.maximum(sigma, 1e-3).tolist())
    background = float(sitk.GetArrayViewFromImage(src).min())
    out = sitk.Resample(src, [int(s) for s in size_out], sitk.Transform(), _INTERPOLATORS[cfg.interpolator],
                        origin_out.tolist(), spacing_out.tolist(), d_out.ravel().tolist(), background,
                        sitk.sitkFloat32)
    return out, ResampleReport(spacing=spacing_out.tolist(), size=[int(s) for s in size_out])


@dataclass
class CropReport:
    foreground_box: list[int]  # size (x, y, z) of the foreground bounding box, voxels
    start: list[int]  # index of the crop's first voxel in the resampled grid (may be negative: padding)
    clipped: bool  # foreground larger than the crop: part of it was cut


def crop_or_pad(image: sitk.Image, cfg: CropConfig, mask: sitk.Image | None = None) -> tuple[sitk.Image, CropReport]:
    """Cut (or pad with the image minimum) a ``cfg.size`` block centred on the foreground bounding box.

    Implemented as a nearest-neighbour resample onto a sub-grid of the same lattice, so voxel values are copied
    exactly and the physical position of every voxel is kept.
    """
    mask = mask if mask is not None else foreground_mask(image)
    size = np.asarray(image.GetSize())
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    if stats.HasLabel(1):
        box = np.asarray(stats.GetBoundingBox(1))
        b_start, b_size = box[:3], box[3:]
    else:
        b_start, b_size = np.zeros(3, dtype=int), size
    out_size = np.asarray(cfg.size)
    centre = b_start + b_size / 2.0
    start = np.floor(centre - out_size / 2.0 + 0.5).astype(int)
    origin = image.TransformContinuousIndexToPhysicalPoint([float(s) for s in start])
    background = float(sitk.GetArrayViewFromImage(image).min())
    out = sitk.Resample(image, [int(s) for s in out_size], sitk.Transform(), sitk.sitkNearestNeighbor, origin,
                        image.GetSpacing(), image.GetDirection(), background, image.GetPixelID())
    report = CropReport(foreground_box=[int(s) for s in b_size], start=start.tolist(),
                        clipped=bool(np.any(b_size > out_size)))
    return out, report


def ct_window(image: sitk.Image, cfg: IntensityConfig) -> sitk.Image:
    """Clip to the HU window and scale it to [0, 1]."""
    lo, hi = cfg.ct_window
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    out = sitk.GetImageFromArray((np.clip(arr, lo, hi) - lo) / (hi - lo))
    out.CopyInformation(image)
    return out


def mri_zscore(image: sitk.Image, mask: sitk.Image, cfg: IntensityConfig) -> sitk.Image:
    """Z-score with the mean and std of the foreground mask, clipped to +-``cfg.zscore_clip``."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    m = sitk.GetArrayViewFromImage(mask) > 0
    vals = arr[m] if m.any() else arr.ravel()
    mean, std = float(vals.mean()), float(vals.std())
    out_arr = np.clip((arr - mean) / max(std, 1e-6), -cfg.zscore_clip, cfg.zscore_clip).astype(np.float32)
    out = sitk.GetImageFromArray(out_arr)
    out.CopyInformation(image)
    return out


# ---------------------------------------------------------------- composition


@dataclass
class PreprocessResult:
    image: sitk.Image  # float32, cfg.crop.size, canonical orientation, network-ready intensities
    bias_field: sitk.Image | None  # multiplicative field on the oriented input grid (MRI with N4), else None
    qa: dict

    def array(self) -> np.ndarray:
        """Network input (1, D, H, W) float32 (z, y, x order)."""
        return to_array(self.image)


def to_array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float32)[None]


def preprocess_image(image: sitk.Image, cfg: PreprocessConfig, info: StudyInfo | None = None) -> PreprocessResult:
    """Run every step of ``cfg`` on a validated 3D image; ``qa`` is a flat JSON-able record."""
    t0 = time.perf_counter()
    qa: dict = {
        "original_size": list(image.GetSize()),
        "original_spacing": [round(s, 4) for s in image.GetSpacing()],
        "modality": cfg.modality,
    }
    if info is not None:
        qa.update({"format": info.format, "series_uid": info.series_uid, "series_choice": info.series_choice,
                   "series_available": info.series_available})
    img, orient = reorient(image, cfg.orient)
    qa.update({"orientation": orient.original, "oblique_deg": orient.oblique_deg})
    bias = None
    if cfg.modality == "mri" and cfg.n4.enabled:
        img, bias, n4 = n4_correct(img, cfg.n4)
        qa.update({"n4_seconds": n4.seconds, "bias_min": n4.bias_min, "bias_max": n4.bias_max,
                   "cv_before": n4.cv_before, "cv_after": n4.cv_after})
    else:
        mask = foreground_mask(img)
        cv = round(foreground_cv(sitk.Cast(img, sitk.sitkFloat32), mask), 5)
        qa.update({"n4_seconds": None, "bias_min": None, "bias_max": None, "cv_before": cv, "cv_after": cv})
    direction = canonical_direction(cfg.orient.code) if cfg.orient.enabled else None
    img, _ = resample(img, cfg.resample, direction, source=shown(info.source) if info is not None else "image")
    mask = foreground_mask(img)
    img, crop = crop_or_pad(img, cfg.crop, mask)
    if cfg.modality == "ct":
        img = ct_window(img, cfg.intensity)
    else:
        mask = foreground_mask(img)
        img = mri_zscore(img, mask, cfg.intensity)
    qa.update({
        "output_size": list(img.GetSize()),
        "output_spacing": list(cfg.resample.spacing),
        "foreground_box": crop.foreground_box,
        "foreground_clipped": crop.clipped,
        "preprocess_seconds": round(time.perf_counter() - t0, 3),
    })
    return PreprocessResult(image=img, bias_field=bias, qa=qa)


def preprocess_study(path: str | Path, cfg: PreprocessConfig, series_uid: str | None = None) -> PreprocessResult:
    """Read, validate and preprocess one study; raises ``InputError`` naming the path when it is unusable."""
    t0 = time.perf_counter()
    image, info = read_study(path, cfg.read, series_uid)
    result = preprocess_image(image, cfg, info)
    result.qa = {"source": str(path), **result.qa, "total_seconds": round(time.perf_counter() - t0, 3)}
    return result


def report_dict(report: object) -> dict:
    """A step report as a plain dict (for JSON)."""
    return asdict(report)  # type: ignore[call-overload]

