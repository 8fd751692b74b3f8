"""Study views, without streamlit: read a volume with SimpleITK, orient it for display, cut axial / coronal /
sagittal slices with the right aspect, window/level, and blend a Grad-CAM map or a bias field on top.

Display convention: volumes are reoriented to LPS (``sitk.DICOMOrient``: axes permuted/flipped, no
interpolation), so the array is (z, y, x) = (I->S, A->P, R->L). Axial slices show anterior at the top and the
patient's right on the left of the screen (radiological convention); coronal and sagittal show superior at
the top. Overlays are resampled onto the displayed grid in physical space, so a map computed on the
preprocessed grid lands on the original study (and vice versa).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import SimpleITK as sitk

from common.errors import InputError

DISPLAY_ORIENTATION = "LPS"
PLANES = ("axial", "coronal", "sagittal")
# (window width, level) in HU
CT_PRESETS = {"CT soft tissue (W400 L40)": (400.0, 40.0), "CT lung (W1500 L-600)": (1500.0, -600.0),
              "CT bone (W1800 L400)": (1800.0, 400.0)}
AUTO = "Auto (1-99 percentile)"
MRI_AUTO = "MRI auto (1-99 percentile)"


@dataclass
class Volume:
    """A displayable volume: the LPS-oriented image and its (z, y, x) float32 array."""

    image: sitk.Image
    array: np.ndarray  # (z, y, x) float32

    @property
    def spacing(self) -> tuple[float, float, float]:  # x, y, z in mm
        return tuple(float(s) for s in self.image.GetSpacing())  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.array.shape  # type: ignore[return-value]


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    interesting = [ln for ln in lines if "error" in ln.lower() or "unable" in ln.lower() or "could not" in ln.lower()]
    return (interesting or lines or [type(exc).__name__])[-1][:300]


def read_volume(path: Path) -> sitk.Image:
    """A 3D scalar study from a volume file (NIfTI, NRRD, MHA/MHD) or a DICOM series folder (the series with the
    most slices), as float32; InputError naming the path when it is missing, unreadable or not 3D scalar."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: study not found")
    try:
        if path.is_dir():
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if not ids:
                raise InputError(f"{path}: folder holds no DICOM series")
            files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), i) for i in ids), key=len)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            img = reader.Execute()
        else:
            img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read study ({_first_line(exc)})") from exc
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3D volume, got {img.GetDimension()}D {list(img.GetSize())}")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a scalar volume, got {img.GetNumberOfComponentsPerPixel()} components")
    return sitk.Cast(img, sitk.sitkFloat32)


def for_display(image: sitk.Image) -> Volume:
    """LPS-oriented copy of ``image`` and its array; non-finite voxels become 0 so windowing stays sane."""
    img = sitk.DICOMOrient(image, DISPLAY_ORIENTATION)
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    return Volume(img, arr)


def load_volume(path: Path) -> Volume:
    return for_display(read_volume(path))


def resample_onto(overlay: sitk.Image, reference: sitk.Image, default: float = 0.0) -> np.ndarray:
    """``overlay`` sampled on ``reference``'s grid in physical space (linear; ``default`` outside it), (z, y, x)."""
    out = sitk.Resample(sitk.Cast(overlay, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear,
                        float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).astype(np.float32)


def n4_corrected(base: Volume, bias: sitk.Image) -> tuple[Volume, np.ndarray]:
    """Original divided by the multiplicative bias field (resampled onto it); returns (corrected, bias array)."""
    b = resample_onto(bias, base.image, default=1.0)
    b = np.where(np.isfinite(b) & (b > 1e-6), b, 1.0).astype(np.float32)
    arr = base.array / b
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(base.image)
    return Volume(img, arr), b


def hottest_point(arr: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) index of the maximum of a map."""
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(arr)), arr.shape))  # type: ignore[return-value]


def plane_slice(arr: np.ndarray, plane: str, index: int) -> np.ndarray:
    """A 2D slice for display (rows top->bottom) of a (z, y, x) LPS array."""
    z, y, x = arr.shape
    if plane == "axial":
        return arr[int(np.clip(index, 0, z - 1))]
    if plane == "coronal":
        return arr[:, int(np.clip(index, 0, y - 1)), :][::-1]
    if plane == "sagittal":
        return arr[:, :, int(np.clip(index, 0, x - 1))][::-1]
    raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")


def plane_size(arr: np.ndarray, plane: str) -> int:
    """Number of slices along a plane's normal."""
    return arr.shape[{"axial": 0, "coronal": 1, "sagittal": 2}[plane]]


def plane_spacing(spacing_xyz: tuple[float, float, float], plane: str) -> tuple[float, float]:
    """(row, column) pixel spacing in mm of a plane's slices."""
    sx, sy, sz = spacing_xyz
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[plane]


def auto_window(arr: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0) -> tuple[float, float]:
    """(low, high) from percentiles of the voxels above the volume's minimum (the background is ignored)."""
    flat = arr[np.isfinite(arr)]
    if flat.size == 0:
        return 0.0, 1.0
    fg = flat[flat > flat.min()]
    vals = fg if fg.size > 0.01 * flat.size else flat
    lo, hi = (float(v) for v in np.percentile(vals, [lo_pct, hi_pct]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def window_range(preset: str, arr: np.ndarray) -> tuple[float, float]:
    if preset in CT_PRESETS:
        w, level = CT_PRESETS[preset]
        return level - w / 2, level + w / 2
    return auto_window(arr)


def presets_for(modality: str | None) -> list[str]:
    """Window/level choices, the modality's default first."""
    if modality == "ct":
        return [*CT_PRESETS, AUTO]
    if modality == "mri":
        return [MRI_AUTO, *CT_PRESETS]
    return [AUTO, *CT_PRESETS]


def render(slice2d: np.ndarray, spacing_rc: tuple[float, float], lo: float, hi: float, *,
           overlay: np.ndarray | None = None, alpha: float = 0.4, colormap: int | None = None,
           side: int = 320) -> np.ndarray:
    """RGB uint8 image of a slice: windowed to [lo, hi], physical aspect kept, longer side ``side`` px.

    ``overlay`` (same shape, any range) is normalised to [0, 1], coloured (jet) and blended with opacity
    up to ``alpha``: transparent below 15 % of its maximum, fully blended above 50 %; ``colormap`` colours the
    slice itself (e.g. a bias field).
    """
    g = np.clip((slice2d.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    gray = (g * 255).astype(np.uint8)
    rgb = cv2.applyColorMap(gray, colormap)[..., ::-1] if colormap is not None else np.repeat(gray[..., None], 3, 2)
    rows, cols = slice2d.shape
    h_mm, w_mm = rows * spacing_rc[0], cols * spacing_rc[1]
    scale = side / max(h_mm, w_mm)
    size = (max(1, round(w_mm * scale)), max(1, round(h_mm * scale)))
    rgb = cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_LINEAR)
    if overlay is not None and alpha > 0:
        o = overlay.astype(np.float32)
        top = float(np.nanmax(o)) if o.size else 0.0
        if top > 0:
            o = np.clip(np.nan_to_num(o) / top, 0, 1)
            o = cv2.resize(o, size, interpolation=cv2.INTER_LINEAR)
            heat = cv2.applyColorMap((o * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1].astype(np.float32)
            # weak activations stay transparent, so the anatomy under them is readable
            a = (alpha * np.clip((o - 0.15) / 0.35, 0, 1))[..., None]
            rgb = (rgb.astype(np.float32) * (1 - a) + heat * a).astype(np.uint8)
    return rgb
