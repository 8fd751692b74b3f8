"""Writing volumes and DICOM series with SimpleITK (synthetic data, preprocessed outputs, tests); reading is
``medical3d.io``."""

from __future__ import annotations

import hashlib
import locale
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_volume(image: sitk.Image, path: str | Path) -> Path:
    """Write a volume file; the suffix picks the format (.nii.gz, .nii, .nrrd, .mha, .mhd)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=path.suffix.lower() in (".gz", ".mha", ".nrrd"))
    return path


def write_dicom_series(image: sitk.Image, folder: str | Path, *, modality: str = "MR", series_uid: str | None = None,
                       study_uid: str | None = None, description: str = "vision-suite", rescale: float = 1.0
                       ) -> list[Path]:
    """Write a 3D image as a single-frame DICOM series (one file per slice along axis 2), int16.

    ``rescale`` multiplies intensities before rounding to int16 and is stored as RescaleSlope 1/rescale, so
    readers get the original scale back. The direction must be right-handed: DICOM derives the slice axis as
    row x column cosines, so a left-handed image would come back with its slices reversed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if np.linalg.det(direction) < 0:
        raise ValueError("write_dicom_series: direction is left-handed; flip the slice axis first")
    uid_root = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root for generated UIDs
    digest = int(hashlib.sha256(sitk.GetArrayViewFromImage(image).tobytes()[:1 << 20]).hexdigest()[:20], 16)
    series_uid = series_uid or f"{uid_root}{digest}.1"
    study_uid = study_uid or f"{uid_root}{digest}.2"
    arr = sitk.GetArrayFromImage(image).astype(np.float64) * rescale
    arr16 = np.clip(np.rint(arr), -32768, 32767).astype(np.int16)
    vol = sitk.GetImageFromArray(arr16)
    vol.CopyInformation(image)
    iop = "\\".join(f"{v:.10g}" for v in (*direction[:, 0], *direction[:, 1]))
    shared = [
        ("0008|0060", modality),
        ("0008|0008", "DERIVED\\SECONDARY"),
        ("0008|103e", description),
        ("0020|000d", study_uid),
        ("0020|000e", series_uid),
        ("0020|0037", iop),
        ("0018|0050", f"{image.GetSpacing()[2]:.10g}"),
        ("0028|1053", f"{1.0 / rescale:.10g}"),
        ("0028|1052", "0"),
    ]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    out = []
    # GDCM's writer switches the process locale to "C" and leaves it there: every later open() without an
    # explicit encoding (and subprocess text pipes) would then be ASCII. Put the caller's LC_CTYPE back.
    ctype = locale.setlocale(locale.LC_CTYPE)
    try:
        for k in range(vol.GetSize()[2]):
            sl = vol[:, :, k]
            for tag, value in shared:
                sl.SetMetaData(tag, value)
            origin = image.TransformIndexToPhysicalPoint((0, 0, k))
            sl.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in origin))
            sl.SetMetaData("0020|0013", str(k + 1))
            sl.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
            path = folder / f"slice_{k:04d}.dcm"
            writer.SetFileName(str(path))
            writer.Execute(sl)
            out.append(path)
    finally:
        locale.setlocale(locale.LC_CTYPE, ctype)
    return out
