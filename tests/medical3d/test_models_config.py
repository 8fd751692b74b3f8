"""Network registry, local weights, and the shipped configs."""

from __future__ import annotations

import pytest
import torch

from common.config import CONFIG_DIR, ConfigError
from common.errors import InputError
from medical3d.config import ModelConfig
from medical3d.models import GRADCAM_LAYERS, NETWORKS, build_model, load_weights
from medical3d.pipeline import load_medical_config


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_network_maps_a_volume_to_logits_and_has_a_gradcam_layer(name):
    model = build_model(ModelConfig(network=name, width=4), num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 32, 32, 32))
    assert out.shape == (2, 3)
    assert GRADCAM_LAYERS[name] in dict(model.named_modules())


def test_local_weights_load_matching_tensors_and_skip_the_rest(tmp_path):
    src = build_model(ModelConfig(network="cnn3d", width=4), num_classes=2)
    torch.save({"model": src.state_dict()}, tmp_path / "w.pt")
    dst = build_model(ModelConfig(network="cnn3d", width=4), num_classes=3)  # other head size
    info = load_weights(dst, tmp_path / "w.pt")
    assert info["skipped"] == ["classifier.weight", "classifier.bias"]
    assert torch.equal(dst.state_dict()["features.stem.0.weight"], src.state_dict()["features.stem.0.weight"])
    with pytest.raises(InputError, match="no tensor matches"):
        load_weights(build_model(ModelConfig(network="resnet18"), 2), tmp_path / "w.pt")
    with pytest.raises(InputError, match="file not found"):
        load_weights(dst, tmp_path / "absent.pt")


@pytest.mark.parametrize("name", ["default", "tiny", "demo"])
def test_shipped_configs_validate(name):
    cfg = load_medical_config(CONFIG_DIR / "medical3d" / f"{name}.yaml")
    assert cfg.preprocess.crop.size[0] in (32, 64, 96)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.network"):
        load_medical_config(None, ["model.network=vgg"])
    with pytest.raises(ConfigError, match="control_points"):
        load_medical_config(None, ["preprocess.n4.control_points=3"])


def _hessian_numpy(a, sigma):
    """Eigenvalues (ascending) of sigma^2 * Hessian with scipy's Gaussian derivatives: the reference."""
    import numpy as np
    from scipy import ndimage

    h = np.empty((*a.shape, 3, 3))
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            h[..., i, j] = h[..., j, i] = ndimage.gaussian_filter(a, sigma, order=order, mode="nearest") * sigma**2
    return np.linalg.eigvalsh(h)


def test_blob_filter_answers_a_focal_spot_not_a_sheet_and_matches_scipy():
    import numpy as np

    from medical3d.models import BlobFilter

    z, y, x = np.mgrid[:32, :32, :32].astype(np.float64)
    spot = np.exp(-((z - 10) ** 2 + (y - 20) ** 2 + (x - 12) ** 2) / (2 * 1.5**2))
    sheet = np.exp(-((x - 24) ** 2) / (2 * 1.5**2))  # a bright layer, as skin or fat: an edge, not a lesion
    hole = -np.exp(-((z - 22) ** 2 + (y - 8) ** 2 + (x - 8) ** 2) / (2 * 1.5**2))
    vol = (spot + sheet + hole).astype(np.float32)
    out = BlobFilter([1.5])(torch.from_numpy(vol)[None, None])[0].numpy()
    assert out.shape == (3, 32, 32, 32) and np.array_equal(out[0], vol)
    bright, dark = out[1], out[2]
    assert np.unravel_index(bright.argmax(), bright.shape) == (10, 20, 12)
    assert np.unravel_index(dark.argmax(), dark.shape) == (22, 8, 8)
    assert bright[:, 4:28, 22:27].max() < 0.05 * bright.max()  # the sheet answers ~nothing
    ev = _hessian_numpy(vol.astype(np.float64), 1.5)  # tolerance: kernel radius 3 sigma here, 4 sigma in scipy
    np.testing.assert_allclose(bright, np.clip(-ev[..., 2], 0, None), atol=1e-2 * bright.max())
    np.testing.assert_allclose(dark, np.clip(ev[..., 0], 0, None), atol=1e-2 * dark.max())


def test_cnn3d_blob_front_end_is_configurable():
    with_blob = build_model(ModelConfig(network="cnn3d", width=4), 2)
    plain = build_model(ModelConfig(network="cnn3d", width=4, blob_scales=[]), 2)
    assert with_blob.features.stem[0].in_channels == 1 + 2 * 3
    assert plain.features.stem[0].in_channels == 1
    with pytest.raises(ConfigError, match="blob_scales"):
        load_medical_config(None, ["model.blob_scales=[0]"])


def test_threshold_keeps_the_validation_margin():
    import numpy as np

    from medical3d.pipeline import choose_threshold

    y = np.array([True] * 4 + [False] * 4)
    p = np.array([0.99, 0.97, 0.95, 0.9, 0.2, 0.1, 0.05, 0.01])
    t = choose_threshold(y, p, 0.95)  # every positive must be caught: below 0.9, above 0.2
    assert 0.2 < t < 0.9
    assert abs(np.log(t / (1 - t)) - (np.log(9) + np.log(0.25)) / 2) < 1e-6  # halfway in log-odds
    assert choose_threshold(y, np.array([0.99] * 4 + [0.995] * 4), 0.95) == pytest.approx(0.99)  # no margin


def test_review_band_narrows_to_the_validation_evidence():
    """All normals at one score within review_band of the threshold must not all go to REVIEW; a study between
    the validation groups, where there is no evidence, must."""
    import numpy as np

    from medical3d.pipeline import choose_threshold, review_edges
    from medical3d.verdict import DecisionRule

    y = np.array([False] * 9 + [True] * 9)
    p = np.array([0.19] * 8 + [0.20, 0.37, 0.5, 0.8, 0.9, 0.9, 0.95, 0.97, 0.98, 0.99])
    t = choose_threshold(y, p, 0.95)
    low, high = review_edges(y, p, t, 0.1)
    assert 0.20 < low <= t <= high <= 0.37
    rule = DecisionRule(labels=["lesion", "normal"], positive_label="lesion", threshold=t, review_band=0.1,
                        temperature=1.0, review_low=low, review_high=high)
    probs = lambda v: np.array([[v, 1 - v]])  # noqa: E731
    assert rule.verdicts(probs(0.20)) == ["negative"] and rule.verdicts(probs(0.19)) == ["negative"]
    assert rule.verdicts(probs(0.30)) == ["REVIEW"] and rule.verdicts(probs(0.37)) == ["positive"]
    back = DecisionRule.from_metadata(rule.to_dict())
    assert back.band == (low, high)
    # without validation edges (older runs) the band is threshold -/+ review_band
    old = DecisionRule(labels=["lesion", "normal"], positive_label="lesion", threshold=0.5, review_band=0.1,
                       temperature=1.0)
    assert old.band == (0.4, 0.6) and old.verdicts(probs(0.45)) == ["REVIEW"]
    # overlapping validation groups: the band never gets wider than review_band, nor crosses the threshold
    lo2, hi2 = review_edges(np.array([False, True, False, True]), np.array([0.6, 0.4, 0.2, 0.9]), 0.5, 0.1)
    assert 0.4 <= lo2 <= 0.5 <= hi2 <= 0.6
