"""Reading and validating studies: NIfTI, NRRD, MetaImage (MHA/MHD) files and DICOM series folders.

Everything goes through SimpleITK, so an image keeps its origin, spacing and direction (physical space).
Errors are ``InputError`` messages that name the file or folder and say what is wrong with it. Writing lives in
``medical3d.writers`` (``write_volume``, ``write_dicom_series``).
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from common.config import config_section
from common.errors import InputError
from common.results import abs_path as source_path
from common.results import display_text as shown
from medical3d.config import DEFAULT_CONFIG, ReadConfig
from medical3d.integrity import check_volume_data
from medical3d.paths import sitk_file, sitk_folder

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
    try:
        with sitk_folder(folder, files=False) as (name, _):
            return _series_ids(name)
    except OSError:
        return []


def _series_ids(name: str) -> list[str]:
    # GDCM warns on stderr for every folder without DICOM files; for a search that is the normal case.
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(name))
    except RuntimeError:
        return []
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)


def is_dicom_folder(folder: Path) -> bool:
    return folder.is_dir() and bool(dicom_series_ids(folder))


@dataclass
class StudyInput:
    """One study found in the inputs, or (``error`` set) an input that yields none: it becomes an error row."""

    path: Path  # absolute, symlinks kept; the glob pattern itself for a glob that matches nothing
    error: str | None = None


def collect_studies(inputs: Iterable[str | Path]) -> list[StudyInput]:
    """Expand user inputs into studies, so that every input ends as at least one result row.

    A file is a study. A folder that directly holds a DICOM series is one study; any other folder is searched
    recursively (symlinked folders followed once each, so links cannot loop) for volume files and DICOM series
    folders. A path that does not exist but has glob characters is expanded (``studies/*.nii.gz``, ``**``); its
    matches are searched like inputs, files without a volume suffix left out. An input that yields no study
    (missing, empty folder, glob matching nothing) and a subfolder that cannot be listed are ``error`` items
    naming it. A study reached twice (same real path) is kept once.
    """
    items: list[StudyInput] = []
    seen: set[str] = set()

    def take(path: Path) -> bool:
        """Add the studies at an existing file or folder; whether it held any."""
        found, errors = ([path], []) if path.is_file() else _search_folder(path)
        for study in found:
            key = os.path.realpath(study)
            if key not in seen:
                seen.add(key)
                items.append(StudyInput(study))
        items.extend(errors)
        return bool(found or errors)

    for raw in inputs:
        text = os.fsdecode(os.path.expanduser(os.fspath(raw)))
        path = Path(source_path(text))
        if path.is_file() or path.is_dir():
            if not take(path):
                items.append(StudyInput(path, f"{shown(path)}: folder holds no studies (volume files "
                                              f"{', '.join(VOLUME_SUFFIXES)} or DICOM series folders)"))
        elif path.exists():
            items.append(StudyInput(path, f"{shown(path)}: not a file or folder"))
        elif glob.has_magic(text):
            matches = [Path(source_path(m)) for m in sorted(glob.glob(text, recursive=True))]
            hits = [take(m) for m in matches if m.is_dir() or (m.is_file() and volume_suffix(m))]
            if not any(hits):
                items.append(StudyInput(path, f"{shown(path)}: pattern matches no study"
                                              f"{f' ({len(matches)} other file(s) or folder(s))' if matches else ''}"))
        else:
            items.append(StudyInput(path, f"{shown(path)}: no such file or folder"))
    return items


def _search_folder(folder: Path) -> tuple[list[Path], list[StudyInput]]:
    """Studies in ``folder`` (itself when it holds a DICOM series) and error items for unlistable subfolders."""
    if is_dicom_folder(folder):
        return [folder], []
    studies: list[Path] = []
    errors: list[StudyInput] = []
    visited = {_dir_key(folder)}

    def unlistable(exc: OSError) -> None:
        where = exc.filename or folder
        errors.append(StudyInput(Path(source_path(where)), f"{shown(where)}: cannot list folder ({exc.strerror})"))

    for root, dirs, files in os.walk(folder, followlinks=True, onerror=unlistable):
        root_path = Path(root)
        if root_path != folder and is_dicom_folder(root_path):
            studies.append(root_path)
            dirs.clear()
            continue
        keep = []
        for d in sorted(dirs):
            key = _dir_key(root_path / d)
            if key is not None and key not in visited:  # a link back up (or twice to one folder) is walked once
                visited.add(key)
                keep.append(d)
        dirs[:] = keep
        studies.extend(root_path / f for f in sorted(files) if volume_suffix(root_path / f))
    return studies, errors


def _dir_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def find_studies(inputs: Iterable[str | Path]) -> list[Path]:
    """Study paths under ``inputs`` (``collect_studies``); a path that does not exist is kept, so the caller turns
    it into an error row instead of losing it. Inputs that exist but hold no study are left out."""
    return [s.path for s in collect_studies(inputs) if s.error is None or not s.path.exists()]


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
        h.update(os.fsencode(f.name))
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
    cfg = cfg or config_section(ReadConfig, DEFAULT_CONFIG, "preprocess.read")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{shown(path)}: no such file or folder")
    if path.is_dir():
        image, info = _read_dicom_folder(path, cfg, series_uid)
    else:
        check_volume_data(path)  # before ITK: it would read a cut NIfTI as zeros, and allocate what a header says
        image, info = _read_file(path)
    image = _drop_trailing_unit_axis(image)
    validate_image(image, shown(path), cfg)
    return image, info


def _read_file(path: Path) -> tuple[sitk.Image, StudyInfo]:
    suffix = volume_suffix(path)
    fmt = _FORMATS.get(suffix, "dicom" if path.suffix.lower() in (".dcm", ".ima") else "other")
    try:
        with sitk_file(path) as name:
            image = sitk.ReadImage(name)
    except RuntimeError as exc:
        raise InputError(f"{shown(path)}: cannot read as an image ({_first_line(exc)})") from None
    return image, StudyInfo(source=str(path), format=fmt, files=[str(path)])


def _read_dicom_folder(folder: Path, cfg: ReadConfig, series_uid: str | None) -> tuple[sitk.Image, StudyInfo]:
    with sitk_folder(folder, files=True) as (name, originals):
        return _read_dicom_series(folder, name, originals, cfg, series_uid)


def _read_dicom_series(folder: Path, name: str, originals: dict[str, str], cfg: ReadConfig, series_uid: str | None
                       ) -> tuple[sitk.Image, StudyInfo]:
    """``name``: ``folder`` as SimpleITK may see it; ``originals``: its file names -> the real ones (if linked)."""
    shown_folder = shown(folder)
    ids = _series_ids(name)
    if not ids:
        raise InputError(f"{shown_folder}: folder holds no DICOM series (give a volume file or a DICOM series "
                         "folder)")
    series = {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(name, uid)) for uid in ids}
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"{shown_folder}: no series with SeriesInstanceUID {series_uid} "
                             f"(found: {', '.join(sorted(series))})")
        chosen, choice = series_uid, "requested"
    elif len(series) == 1:
        chosen, choice = ids[0], "only"
    else:
        # Most slices wins; ties broken by UID so the choice is reproducible.
        chosen = max(sorted(series), key=lambda uid: len(series[uid]))
        choice = "most_slices"
    files = series[chosen]
    modality = check_dicom_slices(folder, files, cfg, originals)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{shown_folder}: cannot read DICOM series {chosen} ({_first_line(exc)})") from None
    info = StudyInfo(source=str(folder), format="dicom", series_uid=chosen, series_choice=choice,
                     series_available=len(series), files=[originals.get(f, f) for f in files], modality_tag=modality)
    return image, info


def check_dicom_slices(folder: Path, files: list[str], cfg: ReadConfig, originals: dict[str, str] | None = None
                       ) -> str | None:
    """Refuse a series whose slice positions are not evenly spaced (a missing or duplicated slice).

    Positions (0020,0032) are projected on the slice normal (row x column cosines of 0020,0037); GDCM has
    already sorted ``files`` along it. ``originals`` maps linked names back to the real ones for messages.
    Returns the Modality tag of the first slice, if any.
    """
    originals = originals or {}
    if len(files) < cfg.min_slices:
        raise InputError(f"{shown(folder)}: DICOM series has {len(files)} slices, fewer than the {cfg.min_slices} "
                         "required")
    reader = sitk.ImageFileReader()
    positions, normal, modality = [], None, None
    for f in files:
        reader.SetFileName(f)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(f"{shown(originals.get(f, f))}: unreadable DICOM slice ({_first_line(exc)})") from None
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
        raise InputError(f"{shown(folder)}: DICOM series has several slices at the same position")
    bad = np.nonzero(np.abs(gaps - expected) > cfg.gap_tolerance * expected)[0]
    if len(bad):
        i = int(bad[0])
        a, b = (shown(Path(originals.get(files[j], files[j])).name) for j in (order[i], order[i + 1]))
        kind = "missing slice" if gaps[i] > expected else "duplicate or extra slice"
        raise InputError(f"{shown(folder)}: inconsistent DICOM slice gap: {gaps[i]:.3g} mm between {a} and {b}, "
                         f"expected {expected:.3g} mm ({kind}?; {len(bad)} irregular gap(s) in {len(files)} slices)")
    return modality


def _drop_trailing_unit_axis(image: sitk.Image) -> sitk.Image:
    """A 4D image with one time point (common in NIfTI) is a 3D volume."""
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        return image[:, :, :, 0]
    return image


def validate_image(image: sitk.Image, source: str, cfg: ReadConfig) -> None:
    """Refuse what the pipeline cannot use, naming ``source``: not 3D, not scalar, too few slices, bad spacing,
    degenerate direction, non-finite voxels, one value everywhere (a blank volume)."""
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
    arr = sitk.GetArrayViewFromImage(image)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        finite = np.isfinite(arr)
        if not finite.all():
            n_bad = int(arr.size - np.count_nonzero(finite))
            raise InputError(f"{source}: {n_bad} of {arr.size} voxels are NaN or infinite")
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        raise InputError(f"{source}: blank volume: every voxel is {lo.item():g}; nothing to classify")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with a file/line banner; the last line says what went wrong.
    return lines[-1] if lines else type(exc).__name__
