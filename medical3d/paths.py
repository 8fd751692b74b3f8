"""Study paths whatever their bytes: lossless ``source`` strings, readable messages, and names SimpleITK can take.

On POSIX a file name is bytes; Python hands names that are not valid UTF-8 over as ``str`` with lone surrogates
(``os.fsdecode``, surrogateescape). SimpleITK converts a ``str`` argument to ``std::string`` through UTF-8 and
aborts the whole process (SIGABRT) on such a string, so it never gets one: ``sitk_file`` and ``sitk_folder`` hand
it a temporary symlink with a plain name instead, and the study is still read. Records keep the original path
(lossless; the result writers escape it), messages show it readably (``b_\\xff.nii.gz``).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.results import abs_path as source_path  # the absolute path a record carries (lossless)

# Detached-header formats: the header names its voxel data file, relative to the header's folder.
DETACHED_SUFFIXES = (".mhd", ".nhdr")
_MHD_DATA = re.compile(rb"^\s*ElementDataFile\s*=\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)
_NRRD_DATA = re.compile(rb"^\s*data ?file\s*:\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)


def sitk_safe(text: str) -> bool:
    """Whether SimpleITK can take ``text``: it must encode to UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextmanager
def _link_dir() -> Iterator[Path]:
    """A fresh temporary folder for symlinks; the links (never their targets) and the folder go on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="vsuite-sitk-"))
    try:
        yield tmp
    finally:
        for entry in os.scandir(tmp):
            os.unlink(entry.path)
        os.rmdir(tmp)


def _plain_suffix(name: str) -> str:
    """The suffix ITK picks the reader by (``.nii.gz`` counts as one), when it is plain text, else ''."""
    lower = name.lower()
    suffix = ".nii.gz" if lower.endswith(".nii.gz") else os.path.splitext(name)[1]
    return suffix if sitk_safe(suffix) else ""


def _detached_data_names(header: Path) -> list[str] | None:
    """The data file names a .mhd/.nhdr header refers to relative to its folder, as first path components.

    None when the header lists several files (LIST, a numbered pattern): then every sibling is linked.
    """
    with open(header, "rb") as f:
        text = f.read(1 << 16)
    m = (_MHD_DATA if header.name.lower().endswith(".mhd") else _NRRD_DATA).search(text)
    if m is None:
        return []
    value = m.group(1)
    if value.upper() == b"LOCAL":
        return []
    if value.upper().startswith(b"LIST") or b"%" in value or b" " in value:
        return None
    if os.path.isabs(value):
        return []  # ITK opens it itself, as bytes
    first = value.replace(b"\\", b"/").split(b"/")[0]
    return [os.fsdecode(first)] if first not in (b"", b".", b"..") else None


@contextmanager
def sitk_file(path: Path) -> Iterator[str]:
    """A name SimpleITK can read ``path`` by: the path itself, or a temporary symlink while the block runs.

    A .mhd/.nhdr header names its data file relative to itself, so the symlink of a header gets links to its
    data file(s) beside it (under their own names: ITK reads those from the header as bytes).
    """
    text = str(path)
    if sitk_safe(text):
        yield text
        return
    target = Path(source_path(path))
    with _link_dir() as tmp:
        link = tmp / f"study{_plain_suffix(target.name)}"
        os.symlink(target, link)
        if target.name.lower().endswith(DETACHED_SUFFIXES):
            names = _detached_data_names(target)
            if names is None:
                names = [n for n in os.listdir(target.parent) if n != target.name]
            for name in names:
                if name != link.name and (target.parent / name).exists():
                    os.symlink(target.parent / name, tmp / name)
        yield str(link)


@contextmanager
def sitk_folder(folder: Path, *, files: bool) -> Iterator[tuple[str, dict[str, str]]]:
    """A DICOM folder name SimpleITK can take, and a map from the file names it will report back to the originals.

    ``files=False``: only the folder name must be safe (listing series ids); ``files=True``: the names of the files
    in it too (GDCM hands them back as ``str`` and they go to the series reader), so each file gets its own link.
    """
    text = str(folder)
    names = sorted(os.listdir(folder)) if files else []
    if sitk_safe(text) and all(sitk_safe(n) for n in names):
        yield text, {}
        return
    target = Path(source_path(folder))
    with _link_dir() as tmp:
        if not files:
            os.symlink(target, tmp / "series")
            yield str(tmp / "series"), {}
            return
        mapping = {}
        for i, name in enumerate(n for n in names if (target / n).is_file()):
            link = tmp / f"f{i:06d}"
            os.symlink(target / name, link)
            mapping[str(link)] = str(target / name)
        yield str(tmp), mapping
