"""The detector's input transform: flat-field + contrast normalisation, and the flat-fielded dataset copy."""

from __future__ import annotations

import cv2
import numpy as np

from industrial_qc.data import load_dataset, read_image
from industrial_qc.flatfield import fit_to, flatfield, write_flatfield_dataset
from industrial_qc.pipeline import letterbox


def _faint_spot_on_gradient(size: int = 128) -> tuple[np.ndarray, tuple[slice, slice]]:
    """A grey part lit from one side (brightness 60 -> 200) with a 6 px spot 4 grey levels darker."""
    ramp = np.linspace(60, 200, size, dtype=np.float32)[None, :].repeat(size, axis=0)
    rng = np.random.default_rng(0)
    img = ramp + rng.normal(0, 1.0, ramp.shape).astype(np.float32)
    spot = (slice(61, 67), slice(40, 46))
    img[spot] -= 4.0
    return np.clip(img, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2), spot


def test_flatfield_removes_lighting_and_amplifies_a_faint_defect():
    img, spot = _faint_spot_on_gradient()
    out = flatfield(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    # the lighting gradient is gone: left and right halves have the same mean (they differed by ~70 levels)
    assert abs(float(out[:, :48].mean()) - float(out[:, 80:].mean())) < 3.0
    assert abs(float(img[:, :48].mean()) - float(img[:, 80:].mean())) > 50.0
    # the 4-level spot now stands out by far more than 4 levels against its neighbourhood
    ring = out[55:73, 34:52].astype(np.float32)
    contrast = float(ring.mean()) - float(out[spot].astype(np.float32).mean())
    assert contrast > 20.0
    assert np.array_equal(flatfield(img), out)  # deterministic: training copies and the line agree


def test_flatfield_keeps_a_blank_frame_blank():
    out = flatfield(np.full((64, 64, 3), 90, np.uint8))
    assert int(out.min()) == int(out.max()) == 128


def test_fit_to_matches_the_letterbox_resize():
    img = np.zeros((100, 200, 3), np.uint8)
    small, r = fit_to(img, (64, 64))
    assert small.shape == (32, 64, 3) and r == 64 / 200
    assert letterbox(img, (64, 64))[0][16:48].shape == small.shape
    assert fit_to(img, (200, 200))[0] is img


def test_shrinking_a_large_frame_keeps_a_hairline_scratch():
    """A camera frame 4x the detector's size: the 1-px scratch must reach the detector at a quarter of its ink in
    every column, not as dots or not at all (linear sampling keeps only 1 row in 4)."""
    img = np.full((1280, 1280, 3), 128, np.uint8)
    cv2.line(img, (200, 601), (1000, 601), (60, 60, 60), 1)
    small, r = fit_to(img, (320, 320))
    ink = (128.0 - small[:, 60:240, 0]).sum(axis=0)
    assert r == 0.25
    np.testing.assert_allclose(ink, 68 / 4, rtol=0.05)


def test_flatfield_dataset_copy_keeps_labels_and_good_parts(tiny_data, tmp_path):
    ds = load_dataset(tiny_data)
    params = {"sigma": 0.125, "gain": 40.0, "grid": 32}
    yaml_path = write_flatfield_dataset(ds, ("val",), tmp_path / "view", 64, params)
    copy = load_dataset(yaml_path, ("val",), required=())
    assert copy.names == ds.names
    src, dst = ds.split("val"), copy.split("val")
    assert len(src) == len(dst)
    for a, b in zip(src, dst, strict=True):
        assert a.defective == b.defective
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-6)
        expected = flatfield(fit_to(read_image(a.image), (64, 64))[0], **params)
        assert np.array_equal(cv2.imread(str(b.image)), expected)  # PNG: lossless
