"""Training augmentation (medical3d.augment): a marker stays at its physical point under rotations with anisotropic
spacing, flips mirror it, intensity transforms and thick slices leave it where it was; every transform's
probability switches it on and off; the pipeline is deterministic per seed."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import config_section
from medical3d.augment import (
    PhysicalAffine,
    RandPhysicalAffine,
    RandThickSlices,
    axis_rotation,
    build_augment,
    thick_slice_matrix,
)
from medical3d.config import DEFAULT_CONFIG, AugmentConfig

N = 31  # odd: the volume centre (about which rotations turn) is voxel 15
CENTRE = np.full(3, (N - 1) / 2)
PROBS = ("flip_prob", "affine_prob", "intensity_prob", "noise_prob", "bias_field_prob", "contrast_prob", "blur_prob",
         "thick_slice_prob", "polarity_prob")
OFF = dict.fromkeys(PROBS, 0.0)
BACKGROUND, TISSUE, FINDING = -1.2, 0.5, 2.5  # z-scored MRI: background below the body, a bright finding


def augment(seed: int = 0, spacing_xyz=None, **changes):
    cfg = config_section(AugmentConfig, DEFAULT_CONFIG, "augment", **{**OFF, **changes})
    return build_augment(cfg, seed, spacing_xyz)


def arr(x) -> np.ndarray:
    return x.as_tensor().numpy() if hasattr(x, "as_tensor") else np.asarray(x)


def body_with_marker(at=(15, 15, 15)) -> np.ndarray:
    """(1, N, N, N): a ball of tissue with a gentle ramp on a flat background, a 3^3 bright finding at ``at``."""
    z, y, x = np.mgrid[:N, :N, :N].astype(np.float32)
    ball = (z - 15) ** 2 + (y - 15) ** 2 + (x - 15) ** 2 <= 12**2
    vol = np.where(ball, TISSUE + 0.02 * (x - 15), BACKGROUND).astype(np.float32)
    vol[tuple(slice(a - 1, a + 2) for a in at)] = FINDING
    return vol[None]


def marker_only(at) -> np.ndarray:
    vol = np.zeros((1, N, N, N), np.float32)
    vol[(0, *(slice(a - 1, a + 2) for a in at))] = 1.0
    return vol


def centroid(vol: np.ndarray, near=None, radius: int = 5, cut: float = 0.5) -> np.ndarray:
    """Centroid (z, y, x) of the deviation from the local median (bright or dark) above ``cut`` times the largest
    one, in a box of ``radius`` around ``near`` (default: the whole volume), which must lie inside the body."""
    v = vol[0].astype(np.float64)
    lo = np.zeros(3, int) if near is None else np.maximum(np.asarray(near) - radius, 0)
    hi = np.asarray(v.shape) if near is None else np.minimum(np.asarray(near) + radius + 1, v.shape)
    box = v[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    dev = np.abs(box - np.median(box))
    w = np.clip(dev - cut * dev.max(), 0, None)
    idx = np.indices(box.shape).reshape(3, -1)
    return lo + (idx * w.ravel()).sum(axis=1) / w.sum()


def physical_prediction(at, forward, spacing_xyz, translate=(0, 0, 0)) -> np.ndarray:
    """Voxel (z, y, x) where the physical map ``forward`` (mm, about the centre) sends voxel ``at``."""
    s = np.asarray(spacing_xyz, float)[::-1]
    return forward @ ((np.asarray(at) - CENTRE) * s) / s + CENTRE + np.asarray(translate)


def test_a_quarter_turn_about_z_puts_the_marker_where_the_rotation_sends_it():
    at = (15, 15, 25)
    out = arr(PhysicalAffine((1.0, 1.0, 1.0))(marker_only(at), axis_rotation(0, np.pi / 2)))
    want = physical_prediction(at, axis_rotation(0, np.pi / 2), (1, 1, 1))
    np.testing.assert_allclose(want, (15, 5, 15), atol=1e-9)
    np.testing.assert_allclose(centroid(out), want, atol=0.2)


@pytest.mark.parametrize("at", [(15, 25, 15), (19, 15, 15)])
def test_with_anisotropic_spacing_the_marker_stays_at_its_physical_point(at):
    """20 degrees about x with 3 mm slices: the marker lands where the physical rotation sends it; a rotation of
    voxel indices (what a voxel-space affine does) would put it more than 1.5 voxels off."""
    spacing_xyz, rot = (1.0, 1.0, 3.0), axis_rotation(2, np.radians(20))
    out = arr(PhysicalAffine(spacing_xyz[::-1])(marker_only(at), rot))
    want = physical_prediction(at, rot, spacing_xyz)
    voxel_space = rot @ (np.asarray(at) - CENTRE) + CENTRE
    assert np.abs(voxel_space - want).max() > 1.5
    np.testing.assert_allclose(centroid(out), want, atol=0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_random_affine_of_the_pipeline_keeps_the_physical_point(seed):
    at, spacing_xyz = (18, 12, 20), (1.0, 1.5, 3.0)
    pipe = augment(seed, spacing_xyz, affine_prob=1.0, rotate_deg=30.0, scale=0.1, translate_vox=2.0)
    out = arr(pipe(marker_only(at)))
    (aff,) = [t for t in pipe.transforms if isinstance(t, RandPhysicalAffine)]
    assert not np.allclose(aff.forward, np.eye(3))
    want = physical_prediction(at, aff.forward, spacing_xyz, aff.translate)
    np.testing.assert_allclose(centroid(out), want, atol=0.6)


def test_flips_mirror_the_marker_index():
    at = (8, 12, 21)
    out = arr(augment(flip_prob=1.0)(marker_only(at)))
    np.testing.assert_allclose(centroid(out), N - 1 - np.asarray(at), atol=1e-6)


@pytest.mark.parametrize("changes", [
    {"bias_field_prob": 1.0, "bias_field_coeff": 0.1},
    {"contrast_prob": 1.0, "contrast_gamma": 0.5},
    {"intensity_prob": 1.0, "intensity_scale": 0.3, "intensity_shift": 0.3},
    {"noise_prob": 1.0, "noise_std": 0.1},
    {"blur_prob": 1.0, "blur_sigma": [0.5, 1.5]},
    {"polarity_prob": 1.0},
], ids=lambda c: next(iter(c)))
def test_intensity_transforms_leave_the_marker_where_it_was(changes):
    at = (15, 15, 15)
    vol = body_with_marker(at)
    for seed in range(3):
        out = arr(augment(seed, **changes)(vol))
        assert not np.allclose(out, vol)
        np.testing.assert_allclose(centroid(out, at), at, atol=0.2)


@pytest.mark.parametrize("seed", range(6))
def test_thick_slices_move_the_marker_less_than_half_a_voxel(seed):
    """Default thickness (up to 3 voxels) on a 3-voxel finding; the centroid is the deviation's mass centroid."""
    at = (14, 16, 16)
    cfg = config_section(AugmentConfig, DEFAULT_CONFIG, "augment", **{**OFF, "thick_slice_prob": 1.0})
    pipe = build_augment(cfg, seed)
    out = arr(pipe(body_with_marker(at)))
    (thick,) = [t for t in pipe.transforms if isinstance(t, RandThickSlices)]
    assert 2 <= thick.factor <= cfg.thick_slice_max_factor and not np.allclose(out, body_with_marker(at))
    np.testing.assert_allclose(centroid(out, at, cut=0.0), at, atol=0.5)


def test_thick_slices_are_aligned_each_block_value_sits_at_its_block_centre():
    """Constants and ramps come back unchanged (past the end blocks the value is held), and over the block
    phases a point's mass centroid stays exactly where it was: a single draw puts it within its slice."""
    n, ramp = 24, np.arange(24, dtype=np.float64)
    for factor in range(2, 7):
        shifts = []
        for phase in range(factor):
            t = thick_slice_matrix(n, factor, phase)
            np.testing.assert_allclose(np.ones(n) @ t, np.ones(n), atol=1e-12)
            inner = slice(factor, n - factor)
            np.testing.assert_allclose((ramp @ t)[inner], ramp[inner], atol=1e-9)
            point = np.zeros(n)
            point[11] = 1.0
            out = point @ t
            shifts.append(out @ ramp / out.sum() - 11)
        assert max(abs(x) for x in shifts) <= (factor - 1) / 2 + 1e-9
        assert abs(np.mean(shifts)) < 1e-9


def test_polarity_turns_a_bright_finding_dark_and_keeps_background_and_body_level():
    at = (15, 15, 15)
    vol = body_with_marker(at)
    out = arr(augment(polarity_prob=1.0)(vol))
    outside = vol == BACKGROUND
    np.testing.assert_array_equal(out[outside], vol[outside])
    body = ~outside
    assert abs(np.median(out[body]) - np.median(vol[body])) < 1e-6
    finding = out[(0, *(slice(a - 1, a + 2) for a in at))]
    assert finding.max() < np.median(out[body]) - 1.0  # as far below the tissue as it was above it


def test_probability_zero_changes_nothing_and_one_changes_the_volume():
    vol = body_with_marker()
    np.testing.assert_array_equal(arr(augment()(vol)), vol)
    for key in PROBS:
        assert not np.allclose(arr(augment(**{key: 1.0})(vol)), vol), key


def test_same_seed_same_volumes_other_seed_other_volumes_shape_and_dtype_kept():
    vol = body_with_marker()
    on = dict.fromkeys(PROBS, 0.7)
    a, b, c = augment(3, (1.0, 1.0, 2.0), **on), augment(3, (1.0, 1.0, 2.0), **on), augment(4, (1.0, 1.0, 2.0), **on)
    outs_a, outs_b, outs_c = ([arr(p(vol)) for _ in range(3)] for p in (a, b, c))
    for x, y in zip(outs_a, outs_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(outs_a, outs_c, strict=True))
    out = arr(augment(0, (1.0, 1.0, 3.0), **dict.fromkeys(PROBS, 1.0))(vol))
    assert out.shape == vol.shape and out.dtype == np.float32 and np.isfinite(out).all()


def test_disabled_is_none_and_two_argument_call_still_works():
    cfg = config_section(AugmentConfig, DEFAULT_CONFIG, "augment", enabled=False)
    assert build_augment(cfg, 0) is None
    default = config_section(AugmentConfig, DEFAULT_CONFIG, "augment")
    assert arr(build_augment(default, 0)(body_with_marker())).shape == (1, N, N, N)


def test_blur_sigma_bounds_are_ordered():
    from common.errors import InputError

    with pytest.raises(InputError, match="blur_sigma"):
        config_section(AugmentConfig, DEFAULT_CONFIG, "augment", blur_sigma=[2.0, 1.0])
