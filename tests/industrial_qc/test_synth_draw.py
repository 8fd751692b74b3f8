"""Drawing synthetic parts: scratch orientation and every defect raised to what an inspector could see."""

from __future__ import annotations

import numpy as np
import pytest

from industrial_qc.synth import SynthConfig
from industrial_qc.synth_draw import DEFECT_CLASSES


def _axis_aligned_share(cfg: SynthConfig, n: int = 300) -> float:
    """Share of ``n`` drawn scratches whose long axis (from the mask's second moments) is within 2 deg of an
    image axis."""
    from industrial_qc.synth_draw import _draw_scratch

    near = 0
    for i in range(n):
        mask = np.zeros((160, 160), np.float32)
        _draw_scratch(np.random.default_rng([5, i]), 160, mask, cfg.axis_scratches)
        ys, xs = np.nonzero(mask > 0.3)
        cov = np.cov(np.stack([xs, ys]).astype(np.float64), aweights=mask[ys, xs])
        ang = np.degrees(0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1])) % 90
        near += min(ang, 90 - ang) <= 2.0
    return near / n


def test_a_share_of_scratches_runs_along_an_image_axis():
    """Machining marks run along a fixtured part's axes: the default set draws a share of its scratches there
    (a detector learns that orientation only from examples of it); uniform angles put few of them there."""
    assert SynthConfig().axis_scratches == 0.3
    assert 0.22 <= _axis_aligned_share(SynthConfig()) <= 0.45  # 0.3 + 0.7 * 4 / 180 of the uniform rest
    assert _axis_aligned_share(SynthConfig(axis_scratches=1.0)) >= 0.95
    assert _axis_aligned_share(SynthConfig(axis_scratches=0.0)) <= 0.1  # uniform: ~ 4 / 180


@pytest.mark.parametrize("cls", DEFECT_CLASSES)
@pytest.mark.parametrize("surface", ["brushed_metal", "woven_fabric"])
def test_faint_defects_are_raised_to_the_visibility_floor(cls, surface):
    """Asked for almost no contrast, a defect is still drawn as strong as the floor needs on its surface, and
    the visibility measured independently on the result agrees."""
    from industrial_qc.synth_draw import _SURFACE_FNS, _apply_defect, _draw_defect, defect_visibility

    cfg = SynthConfig(contrast=(0.001, 0.001))
    noise_sd = 0.02
    for i in range(3):
        rng = np.random.default_rng([7, i])
        clean = _SURFACE_FNS[surface](rng, 128).astype(np.float32)
        d = _draw_defect(128, cls, rng, cfg)
        assert d is not None
        img = clean.copy()
        snr, core = _apply_defect(img, d, cfg, noise_sd)
        assert snr >= 0.99 * cfg.min_snr and core >= 0.99 * cfg.min_core_cnr, (cls, surface, i, snr, core)
        cx, cy, w, h = (v * 128 for v in d.box)
        box = (int(cx - w / 2), int(cy - h / 2), int(np.ceil(cx + w / 2)), int(np.ceil(cy + h / 2)))
        again = defect_visibility(clean.mean(axis=2), img.mean(axis=2), box, noise_sd)
        assert again[0] >= 0.95 * cfg.min_snr and again[1] >= 0.95 * cfg.min_core_cnr
        assert float(np.abs(img - clean).max()) < 0.6  # raised to visible, not to glaring


def test_visibility_sees_texture_that_hides_a_defect():
    """The same faint blob is less visible on woven fabric than on a flat surface, and sensor noise hides it too."""
    from industrial_qc.synth_draw import _woven_fabric, defect_visibility

    rng = np.random.default_rng(3)
    fabric = _woven_fabric(rng, 128).mean(axis=2).astype(np.float32)
    flat = np.full_like(fabric, float(fabric.mean()))
    yy, xx = np.mgrid[0:128, 0:128]
    blob = (0.03 * np.exp(-((xx - 64) ** 2 + (yy - 64) ** 2) / (2 * 6.0**2))).astype(np.float32)
    box = (52, 52, 77, 77)
    on_flat = defect_visibility(flat, flat - blob, box, 0.005)
    on_fabric = defect_visibility(fabric, fabric - blob, box, 0.005)
    noisy = defect_visibility(flat, flat - blob, box, 0.05)
    assert on_fabric[0] < on_flat[0] / 2 and on_fabric[1] < on_flat[1] / 2
    assert noisy[0] < on_flat[0] / 2 and noisy[1] < on_flat[1] / 2

