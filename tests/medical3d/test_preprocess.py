"""Preprocessing in physical space: orientation invariance, N4, crop/pad, intensity normalisation."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from common.config import config_section
from medical3d.config import DEFAULT_CONFIG, CropConfig, IntensityConfig, N4Config, PreprocessConfig, ResampleConfig
from medical3d.io import read_study
from medical3d.preprocess import crop_or_pad, ct_window, foreground_cv, n4_correct, preprocess_image, resample
from medical3d.synth import Grid, bias_phantom, rotation, soft_ellipsoid
from medical3d.writers import write_dicom_series, write_volume

MARKER_MM = np.array([14.0, -9.0, 11.0])


def section(model, dotted: str, **changes):
    """A preprocessing (sub-)config: configs/medical3d/default.yaml at ``dotted`` with ``changes``."""
    return config_section(model, DEFAULT_CONFIG, dotted, **changes)


def _study_with_marker(direction: np.ndarray, spacing=(2.0, 2.5, 3.0)) -> sitk.Image:
    """A body (ellipsoid, 300) in air (0) with a 6 mm bright cube (2000) centred at MARKER_MM, sampled on a grid
    with the given direction, centred on the physical origin."""
    size = np.array([48, 40, 36])
    origin = -direction @ (np.asarray(spacing) * (size - 1) / 2)
    grid = Grid(size=tuple(int(v) for v in size), spacing=spacing, direction=direction, origin=origin)
    pts = grid.points()
    body = soft_ellipsoid(pts, np.zeros(3), np.array([40.0, 35.0, 38.0]), 1.0)
    cube = np.all(np.abs(pts - MARKER_MM[:, None, None, None]) <= 3.0, axis=0)
    arr = (300.0 * body + 1700.0 * cube + 20.0).astype(np.float32)
    return grid.image(arr)


def _marker_position(image: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayFromImage(image)
    _z, _y, _x = np.unravel_index(int(np.argmax(arr)), arr.shape)
    # Centre of mass of the brightest voxels: robust to which of two equal voxels argmax picks.
    hot = arr >= arr.max() * 0.8
    zz, yy, xx = np.nonzero(hot)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint((xx.mean(), yy.mean(), zz.mean())))


def _cfg() -> PreprocessConfig:
    return section(PreprocessConfig, "preprocess", modality="mri", n4={"enabled": False},
                   resample={"spacing": (2.0, 2.0, 2.0)}, crop={"size": (48, 48, 48)})


def test_marker_lands_at_same_physical_point_for_ras_lps_and_oblique_copies(tmp_path):
    lps = _study_with_marker(np.eye(3))
    ras = _study_with_marker(np.diag([-1.0, -1.0, 1.0]))
    oblique = _study_with_marker(rotation(np.random.default_rng(5), 20.0) @ np.diag([-1.0, 1.0, 1.0]))
    outputs, stored = {}, {}
    for name, img in (("lps", lps), ("ras", ras), ("oblique", oblique)):
        path = write_volume(img, tmp_path / f"{name}.nii.gz")
        image, info = read_study(path)
        stored[name] = _marker_position(image)
        outputs[name] = preprocess_image(image, _cfg(), info)
    for name, res in outputs.items():
        np.testing.assert_allclose(res.image.GetDirection(), np.eye(3).ravel(), atol=1e-9)
        found = _marker_position(res.image)
        # Where the stored study has its marker, the preprocessed one has it too (to a fraction of a voxel) ...
        assert np.linalg.norm(found - stored[name]) <= 1.0, (name, found, stored[name])
        # ... and that is the known physical point, up to the sampling of a 6 mm cube on a 2-3 mm lattice.
        assert np.linalg.norm(found - MARKER_MM) <= 2.0, (name, found)
    assert outputs["lps"].qa["orientation"] == "LPS" and outputs["ras"].qa["orientation"] == "RAS"
    # RAS and LPS copies cover the same physical box: same grid, same voxels.
    np.testing.assert_allclose(outputs["lps"].image.GetOrigin(), outputs["ras"].image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(outputs["lps"].image),
                               sitk.GetArrayFromImage(outputs["ras"].image), atol=1e-4)


def test_dicom_and_nifti_copies_preprocess_alike(tmp_path):
    rot = rotation(np.random.default_rng(11), 15.0)
    img = _study_with_marker(rot)
    write_dicom_series(sitk.Cast(img, sitk.sitkInt16), tmp_path / "dicom")
    write_volume(sitk.Cast(img, sitk.sitkInt16), tmp_path / "study.nrrd")
    a = preprocess_image(*read_study(tmp_path / "dicom")[:1], _cfg())
    b = preprocess_image(*read_study(tmp_path / "study.nrrd")[:1], _cfg())
    np.testing.assert_allclose(sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(b.image), atol=1e-4)


def test_n4_lowers_foreground_cv_of_a_biased_phantom():
    ph = bias_phantom((40, 48, 48), 4.0, seed=1, strength=0.6)
    wm = ph["wm_mask"]
    before = foreground_cv(ph["image"], wm)
    corrected, bias, report = n4_correct(ph["image"], section(N4Config, "preprocess.n4", shrink_factor=1,
                                                                   iterations=[30, 30, 30]))
    after = foreground_cv(corrected, wm)
    assert after < 0.7 * before, (before, after)
    assert report.cv_after < report.cv_before
    # The estimated field follows the true one (correlation of the logs inside the head).
    head = sitk.GetArrayFromImage(ph["truth"]) > 50
    est, true = np.log(sitk.GetArrayFromImage(bias)[head]), np.log(sitk.GetArrayFromImage(ph["bias"])[head])
    assert np.corrcoef(est, true)[0, 1] > 0.9
    assert bias.GetSize() == ph["image"].GetSize()


def test_resample_covers_extent_and_crop_pads_with_background():
    img = sitk.GetImageFromArray(np.full((10, 20, 30), 5.0, np.float32))
    img.SetSpacing((1.0, 1.0, 3.0))
    out, report = resample(img, section(ResampleConfig, "preprocess.resample", spacing=(2.0, 2.0, 2.0)))
    assert report.size == [15, 10, 15]
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(out), 5.0, atol=1e-4)
    mask = sitk.Cast(out > 0, sitk.sitkUInt8)
    cropped, crop = crop_or_pad(out, section(CropConfig, "preprocess.crop", size=(20, 8, 20)), mask)
    assert cropped.GetSize() == (20, 8, 20) and crop.clipped
    # Cropping copies voxels: the first voxel of the crop sits on the resampled lattice.
    idx = out.TransformPhysicalPointToContinuousIndex(cropped.GetOrigin())
    np.testing.assert_allclose(idx, np.round(idx), atol=1e-6)


def test_ct_window_scales_hu_to_unit_range():
    img = sitk.GetImageFromArray(np.array([[[-1000.0, -150.0, 50.0, 250.0, 3000.0]] * 2] * 2, np.float32))
    cfg = section(IntensityConfig, "preprocess.intensity", ct_window=(-150.0, 250.0))
    arr = sitk.GetArrayFromImage(ct_window(img, cfg))
    np.testing.assert_allclose(arr[0, 0], [0.0, 0.0, 0.5, 1.0, 1.0])


def test_preprocess_ct_study_end_to_end(tmp_path):
    from medical3d.preprocess import preprocess_study
    from medical3d.synth import render_case

    img, _spec = render_case(0, 5, "lesion", "ct", size=40)
    path = write_volume(img, tmp_path / "ct.nii.gz")
    cfg = section(PreprocessConfig, "preprocess", modality="ct", resample={"spacing": (5.0, 5.0, 5.0)},
                  crop={"size": (40, 40, 40)})
    res = preprocess_study(path, cfg)
    arr = res.array()
    assert arr.shape == (1, 40, 40, 40) and arr.min() >= 0.0 and arr.max() <= 1.0
    assert res.bias_field is None and res.qa["n4_seconds"] is None and res.qa["source"] == str(path)
