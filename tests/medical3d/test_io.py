"""Reading studies: format round trips (incl. an oblique DICOM series), series choice, clear refusals."""

from __future__ import annotations

import locale

import numpy as np
import pytest
import SimpleITK as sitk

from common.config import config_section
from common.errors import InputError
from medical3d.config import DEFAULT_CONFIG, ReadConfig
from medical3d.io import find_studies, read_study
from medical3d.synth import rotation
from medical3d.writers import write_dicom_series, write_volume


def _volume(direction=None, dtype=np.int16, shape=(12, 14, 16), seed=0) -> sitk.Image:
    arr = np.random.default_rng(seed).integers(0, 1000, size=shape).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.9, 1.1, 2.5))
    img.SetOrigin((-12.5, 30.25, 7.0))
    if direction is not None:
        img.SetDirection(np.asarray(direction, dtype=float).ravel().tolist())
    return img


def _assert_same(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_volume_formats_round_trip(tmp_path, suffix):
    img = _volume(direction=rotation(np.random.default_rng(1), 30.0))
    path = write_volume(img, tmp_path / f"study{suffix}")
    back, info = read_study(path)
    _assert_same(img, back)
    assert info.format in ("nifti", "nrrd", "metaimage")
    assert find_studies([tmp_path]) == [path]


def test_oblique_dicom_series_round_trip(tmp_path):
    rot = rotation(np.random.default_rng(3), 25.0)
    assert np.linalg.det(rot) > 0
    img = _volume(direction=rot)
    encoding = locale.getpreferredencoding(False)
    write_dicom_series(img, tmp_path / "series", modality="MR")
    assert locale.getpreferredencoding(False) == encoding  # GDCM's "C" locale does not leak into the process
    back, info = read_study(tmp_path / "series")
    _assert_same(img, back)
    assert info.format == "dicom" and info.series_choice == "only" and info.modality_tag == "MR"
    # A folder holding DICOM files is one study, found as such inside a parent folder.
    assert find_studies([tmp_path]) == [tmp_path / "series"]


def test_dicom_folder_with_two_series_takes_most_slices_or_the_named_uid(tmp_path):
    folder = tmp_path / "mixed"
    write_dicom_series(_volume(shape=(10, 14, 16)), folder, series_uid="1.2.3.10")
    write_dicom_series(_volume(shape=(12, 14, 16), seed=1), folder / "tmp", series_uid="1.2.3.12")
    for f in (folder / "tmp").iterdir():
        f.rename(folder / f"b_{f.name}")
    (folder / "tmp").rmdir()
    img, info = read_study(folder)
    assert info.series_uid == "1.2.3.12" and info.series_choice == "most_slices" and img.GetSize()[2] == 12
    img, info = read_study(folder, series_uid="1.2.3.10")
    assert info.series_choice == "requested" and img.GetSize()[2] == 10
    with pytest.raises(InputError, match="no series with SeriesInstanceUID 9.9"):
        read_study(folder, series_uid="9.9")


def test_nan_volume_is_refused_naming_the_file(tmp_path):
    img = _volume(dtype=np.float32)
    arr = sitk.GetArrayFromImage(img)
    arr[3, 4, 5] = np.nan
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    path = write_volume(bad, tmp_path / "nan_study.nii.gz")
    with pytest.raises(InputError, match=r"nan_study\.nii\.gz: 1 of \d+ voxels are NaN or infinite"):
        read_study(path)


def test_2d_image_is_refused(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), str(path))
    with pytest.raises(InputError, match=r"slice\.nrrd: expected a 3D volume, got a 2D image"):
        read_study(path)


def test_dicom_series_with_missing_slice_is_refused(tmp_path):
    files = write_dicom_series(_volume(), tmp_path / "gap")
    files[5].unlink()
    with pytest.raises(InputError, match=r"gap: inconsistent DICOM slice gap: 5 mm between slice_0004\.dcm and "
                                         r"slice_0006\.dcm.*missing slice"):
        read_study(tmp_path / "gap")


def test_too_few_slices_and_missing_path(tmp_path):
    path = write_volume(_volume(shape=(4, 14, 16)), tmp_path / "thin.nii.gz")
    with pytest.raises(InputError, match="fewer than 8 slices"):
        read_study(path, config_section(ReadConfig, DEFAULT_CONFIG, "preprocess.read", min_slices=8))
    with pytest.raises(InputError, match="no such file"):
        read_study(tmp_path / "absent.nii.gz")


def test_unreadable_file_is_an_input_error(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="junk.nii.gz: cannot read"):
        read_study(path)
