"""Reading and validating studies: NIfTI, NRRD, MetaImage (MHA/MHD) files and DICOM series folders.

Everything goes through SimpleITK, so an image keeps its origin, spacing and direction (physical space).
Errors are ``InputError`` messages that name the file or folder and say what is wrong with it.
"""

from __future__ import annotations

import hashlib
import locale
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from common.errors import InputError
from medical3d.config import ReadConfig

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage",
            ".mhd": "metaimage"}
# DICOM tags (group|element) read per slice.
TAG_SERIES_UID = "0020|000e"
TAG_POSITION = "0020|0032"
TAG_ORIENTATION = "0020|0037"
TAG_MODALITY = "0008|0060"


@dataclass
class StudyInfo:
    """Where an image came from: the QA record quotes it."""

    source: str
    format: str  # nifti | nrrd | metaimage | dicom
    series_uid: str | None = None
    series_choice: str | None = None  # only | requested | most_slices (DICOM folders)
    series_available: int | None = None
    files: list[str] = field(default_factory=list)  # every file the image was read from
    modality_tag: str | None = None  # DICOM Modality (0008,0060) when present

    def to_dict(self) -> dict:
        d = asdict(self)
        d["n_files"] = len(d.pop("files"))
        return d


def volume_suffix(path: Path) -> str | None:
    """The recognised volume suffix of ``path`` (``.nii.gz`` counts as one), else None."""
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def dicom_series_ids(folder: Path) -> list[str]:
    """SeriesInstanceUIDs of the DICOM series directly inside ``folder`` (not recursive)."""
    # GDCM warns on stderr for every folder without DICOM files; for a search that is the normal case.
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return []
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def is_dicom_folder(folder: Path) -> bool:
    return folder.is_dir() and bool(dicom_series_ids(folder))


def find_studies(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand user inputs into study paths.

    A file is a study. A folder that directly holds a DICOM series is one study. Any other folder is searched
    recursively for volume files and DICOM series folders. A path that does not exist is kept, so the caller
    turns it into an error row instead of losing it.
    """
    studies: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists() or path.is_file():
            studies.append(path)
            continue
        if is_dicom_folder(path):
            studies.append(path)
            continue
        for root, dirs, files in os.walk(path, followlinks=True):
            dirs.sort()
            root_path = Path(root)
            if root_path != path and is_dicom_folder(root_path):
                studies.append(root_path)
                dirs.clear()
                continue
            studies.extend(root_path / f for f in sorted(files) if volume_suffix(root_path / f))
    return studies


def study_id(path: Path) -> str:
    """A short name for a study: the file name without its volume suffix, or the DICOM folder name."""
    suffix = volume_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def study_files(path: Path) -> list[Path]:
    """The files whose content defines the study (for cache keys): a DICOM folder's files, an MHD's data file."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    files = [path]
    if path.name.lower().endswith((".mhd", ".nhdr")):
        files += sorted(p for p in path.parent.glob(path.name.rsplit(".", 1)[0] + ".*") if p != path)
    return files


def content_hash(path: Path) -> str:
    """sha256 over the study's files (names relative to the study and content)."""
    h = hashlib.sha256()
    for f in study_files(path):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- reading


def read_study(path: str | Path, cfg: ReadConfig | None = None, series_uid: str | None = None
               ) -> tuple[sitk.Image, StudyInfo]:
    """Read and validate one study (volume file or DICOM series folder).

    Returns the image in its stored geometry and a ``StudyInfo``. Raises ``InputError`` naming the path when
    it is missing, unreadable, or fails ``validate_image`` / the DICOM slice-gap check.
    """
    cfg = cfg or ReadConfig()
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        image, info = _read_dicom_folder(path, cfg, series_uid)
    else:
        image, info = _read_file(path)
        if info.format == "nifti":
            _check_nifti_finite(path)
    image = _drop_trailing_unit_axis(image)
    validate_image(image, str(path), cfg)
    return image, info


def _read_file(path: Path) -> tuple[sitk.Image, StudyInfo]:
    suffix = volume_suffix(path)
    fmt = _FORMATS.get(suffix, "dicom" if path.suffix.lower() in (".dcm", ".ima") else "other")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read as an image ({_first_line(exc)})") from None
    return image, StudyInfo(source=str(path), format=fmt, files=[str(path)])


def _read_dicom_folder(folder: Path, cfg: ReadConfig, series_uid: str | None) -> tuple[sitk.Image, StudyInfo]:
    ids = dicom_series_ids(folder)
    if not ids:
        raise InputError(f"{folder}: folder holds no DICOM series (give a volume file or a DICOM series folder)")
    series = {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in ids}
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"{folder}: no series with SeriesInstanceUID {series_uid} "
                             f"(found: {', '.join(sorted(series))})")
        chosen, choice = series_uid, "requested"
    elif len(series) == 1:
        chosen, choice = ids[0], "only"
    else:
        # Most slices wins; ties broken by UID so the choice is reproducible.
        chosen = max(sorted(series), key=lambda uid: len(series[uid]))
        choice = "most_slices"
    files = series[chosen]
    modality = check_dicom_slices(folder, files, cfg)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot read DICOM series {chosen} ({_first_line(exc)})") from None
    info = StudyInfo(source=str(folder), format="dicom", series_uid=chosen, series_choice=choice,
                     series_available=len(series), files=files, modality_tag=modality)
    return image, info


def check_dicom_slices(folder: Path, files: list[str], cfg: ReadConfig) -> str | None:
    """Refuse a series whose slice positions are not evenly spaced (a missing or duplicated slice).

    Positions (0020,0032) are projected on the slice normal (row x column cosines of 0020,0037); GDCM has
    already sorted ``files`` along it. Returns the Modality tag of the first slice, if any.
    """
    if len(files) < cfg.min_slices:
        raise InputError(f"{folder}: DICOM series has {len(files)} slices, fewer than the {cfg.min_slices} required")
    reader = sitk.ImageFileReader()
    positions, normal, modality = [], None, None
    for f in files:
        reader.SetFileName(f)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(f"{f}: unreadable DICOM slice ({_first_line(exc)})") from None
        if not reader.HasMetaDataKey(TAG_POSITION):
            return modality  # no positions: nothing to check (single-frame secondary capture etc.)
        if normal is None and reader.HasMetaDataKey(TAG_ORIENTATION):
            cos = np.array([float(v) for v in reader.GetMetaData(TAG_ORIENTATION).split("\\")])
            normal = np.cross(cos[:3], cos[3:6])
        if modality is None and reader.HasMetaDataKey(TAG_MODALITY):
            modality = reader.GetMetaData(TAG_MODALITY).strip() or None
        positions.append([float(v) for v in reader.GetMetaData(TAG_POSITION).split("\\")])
    normal = normal if normal is not None else np.array([0.0, 0.0, 1.0])
    dist = np.asarray(positions) @ normal
    order = np.argsort(dist)
    gaps = np.diff(dist[order])
    if len(gaps) == 0:
        return modality
    expected = float(np.median(gaps))
    if expected <= 1e-6:
        raise InputError(f"{folder}: DICOM series has several slices at the same position")
    bad = np.nonzero(np.abs(gaps - expected) > cfg.gap_tolerance * expected)[0]
    if len(bad):
        i = int(bad[0])
        a, b = Path(files[order[i]]).name, Path(files[order[i + 1]]).name
        kind = "missing slice" if gaps[i] > expected else "duplicate or extra slice"
        raise InputError(f"{folder}: inconsistent DICOM slice gap: {gaps[i]:.3g} mm between {a} and {b}, "
                         f"expected {expected:.3g} mm ({kind}?; {len(bad)} irregular gap(s) in {len(files)} slices)")
    return modality


def _check_nifti_finite(path: Path) -> None:
    """Refuse NaN/inf voxels in a NIfTI-1 file by reading its raw data.

    ITK's NIfTI reader silently turns non-finite voxels into 0, so the check must look at the file itself.
    Only float data can hold them; other types (and NIfTI-2 headers) return without reading the data.
    """
    import gzip
    import struct

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        header = f.read(348)
        if len(header) < 348:
            return
        endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
        if struct.unpack(endian + "i", header[:4])[0] != 348:
            return  # NIfTI-2 or not NIfTI: nothing to check here
        dims = struct.unpack(endian + "8h", header[40:56])
        datatype = struct.unpack(endian + "h", header[70:72])[0]
        vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
        dtype = {16: "f4", 64: "f8"}.get(datatype)
        if dtype is None:
            return
        n = int(np.prod([max(d, 1) for d in dims[1:dims[0] + 1]]))
        f.read(max(vox_offset - 348, 0))
        data = np.frombuffer(f.read(n * np.dtype(dtype).itemsize), dtype=endian + dtype)
    n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise InputError(f"{path}: {n_bad} of {data.size} voxels are NaN or infinite")


def _drop_trailing_unit_axis(image: sitk.Image) -> sitk.Image:
    """A 4D image with one time point (common in NIfTI) is a 3D volume."""
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        return image[:, :, :, 0]
    return image


def validate_image(image: sitk.Image, source: str, cfg: ReadConfig) -> None:
    """Refuse what the pipeline cannot use, naming ``source``: not 3D, not scalar, too few slices, bad spacing,
    degenerate direction, non-finite voxels."""
    dim = image.GetDimension()
    size = image.GetSize()
    if dim != 3:
        raise InputError(f"{source}: expected a 3D volume, got a {dim}D image of size {'x'.join(map(str, size))}")
    comps = image.GetNumberOfComponentsPerPixel()
    if comps != 1:
        raise InputError(f"{source}: expected a scalar (grey-level) volume, got {comps} components per voxel")
    if min(size) < cfg.min_slices:
        raise InputError(f"{source}: size {'x'.join(map(str, size))} has fewer than {cfg.min_slices} slices "
                         "along an axis")
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{source}: spacing {tuple(spacing.tolist())} must be finite and > 0 mm")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise InputError(f"{source}: direction cosines {tuple(direction.ravel().round(4))} are not a rotation")
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        arr = sitk.GetArrayViewFromImage(image)
        finite = np.isfinite(arr)
        if not finite.all():
            n_bad = int(arr.size - np.count_nonzero(finite))
            raise InputError(f"{source}: {n_bad} of {arr.size} voxels are NaN or infinite")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with a file/line banner; the last line says what went wrong.
    return lines[-1] if lines else type(exc).__name__


# ---------------------------------------------------------------- writing


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
