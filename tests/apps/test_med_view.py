"""The radiology viewer's volume helpers: display orientation, physical aspect, overlays, windows and N4."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from apps import med_view


def _volume(arr: np.ndarray, spacing, direction, origin) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin(origin)
    return img


def test_display_is_the_same_for_lps_and_ras_stored_copies():
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(8, 10, 12)).astype(np.float32)  # (z, y, x)
    lps = _volume(arr, (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (0.0, 0.0, 0.0))
    # the same physical volume stored with x and y flipped (RAS-like): last voxel first, directions negated
    ras = _volume(arr[:, ::-1, ::-1], (1.0, 2.0, 3.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (11.0, 18.0, 0.0))
    a, b = med_view.for_display(lps), med_view.for_display(ras)
    np.testing.assert_array_equal(a.array, b.array)
    assert a.spacing == b.spacing == (1.0, 2.0, 3.0)
    # an overlay on one grid lands on the other: resampling in physical space
    np.testing.assert_allclose(med_view.resample_onto(ras, a.image), a.array, atol=1e-5)
    # coronal and sagittal show superior at the top; axial rows run anterior -> posterior
    assert np.array_equal(med_view.plane_slice(a.array, "coronal", 3)[0], a.array[-1, 3, :])
    assert np.array_equal(med_view.plane_slice(a.array, "sagittal", 4)[0], a.array[-1, :, 4])
    assert np.array_equal(med_view.plane_slice(a.array, "axial", 2), a.array[2])


def test_render_keeps_physical_aspect_and_blends_overlay():
    sl = np.tile(np.linspace(0, 100, 16, dtype=np.float32), (8, 1))  # 8 rows x 16 cols
    out = med_view.render(sl, (2.0, 1.0), 0.0, 100.0, side=160)  # rows 2 mm: 16 x 16 mm -> square
    assert out.shape == (160, 160, 3) and out[:, 0].max() < 10 and out[:, -1].min() > 245
    cam = np.zeros_like(sl)
    cam[4, 8] = 1.0
    hot = med_view.render(sl, (2.0, 1.0), 0.0, 100.0, overlay=cam, alpha=1.0, side=160)
    y, x = 4 * 20 + 10, 8 * 10 + 5
    assert hot[y, x, 0] > 100 and not np.array_equal(hot[y, x], out[y, x])  # jet red-ish at the hot voxel
    assert np.array_equal(hot[5, 5], out[5, 5])  # cold pixels untouched


def test_window_presets_and_n4_division():
    arr = np.concatenate([np.full(100, -1000.0), np.linspace(0, 200, 1000)]).astype(np.float32)
    lo, hi = med_view.window_range(med_view.MRI_AUTO, arr)
    assert 0 <= lo < 5 and 195 < hi <= 200  # background ignored
    assert med_view.window_range("CT lung (W1500 L-600)", arr) == (-1350.0, 150.0)
    assert med_view.presets_for("ct")[0].startswith("CT soft tissue") and med_view.presets_for("mri")[0] == \
        med_view.MRI_AUTO
    base = med_view.for_display(_volume(np.full((4, 4, 4), 10.0), (1, 1, 1), (1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 0, 0)))
    bias = _volume(np.full((4, 4, 4), 2.0), (1, 1, 1), (1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 0, 0))
    corrected, b = med_view.n4_corrected(base, bias)
    np.testing.assert_allclose(corrected.array, 5.0)
    np.testing.assert_allclose(b, 2.0)
