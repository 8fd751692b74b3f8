"""Network registry, the blob filter in front of cnn3d, and local pretrained weights."""

from __future__ import annotations

import pytest
import torch

from common.config import ConfigError, config_section
from common.errors import InputError
from medical3d.config import DEFAULT_CONFIG, ModelConfig, load_medical_config
from medical3d.models import GRADCAM_LAYERS, NETWORKS, build_model, load_weights


def model_config(**changes) -> ModelConfig:
    return config_section(ModelConfig, DEFAULT_CONFIG, "model", **changes)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_network_maps_a_volume_to_logits_and_has_a_gradcam_layer(name):
    model = build_model(model_config(network=name, width=4), num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 32, 32, 32))
    assert out.shape == (2, 3)
    assert GRADCAM_LAYERS[name] in dict(model.named_modules())


def test_local_weights_load_matching_tensors_and_skip_the_rest(tmp_path):
    src = build_model(model_config(network="cnn3d", width=4), num_classes=2)
    torch.save({"model": src.state_dict()}, tmp_path / "w.pt")
    dst = build_model(model_config(network="cnn3d", width=4), num_classes=3)  # other head size
    info = load_weights(dst, tmp_path / "w.pt")
    assert info["skipped"] == ["classifier.weight", "classifier.bias"]
    assert torch.equal(dst.state_dict()["features.stem.0.weight"], src.state_dict()["features.stem.0.weight"])
    with pytest.raises(InputError, match="no tensor matches"):
        load_weights(build_model(model_config(network="resnet18"), 2), tmp_path / "w.pt")
    with pytest.raises(InputError, match="file not found"):
        load_weights(dst, tmp_path / "absent.pt")


def test_medicalnet_weights_come_from_the_local_cache_into_the_training_network(tmp_path, monkeypatch):
    from rich.console import Console

    from common.export import export_onnx
    from medical3d.train import build_network
    from tests.common.weights_files import write_medicalnet_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = load_medical_config(None, ["model.network=resnet10", "model.weights=medicalnet"])
    quiet = Console(quiet=True)
    with pytest.raises(InputError, match="vsuite weights pull medicalnet_resnet10"):
        build_network(cfg, ["lesion", "normal"], None, quiet)
    cache = tmp_path / "torch" / "hub" / "checkpoints" / "medicalnet" / "resnet_10_23dataset.pth"
    state = write_medicalnet_file(cache, 10, seed=7)
    model = build_network(cfg, ["lesion", "normal"], None, quiet)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())  # every backbone tensor, as in the file
    assert {k for k in own if k not in state} == {"fc.weight", "fc.bias"}  # only the head starts fresh
    report = export_onnx(model.eval(), torch.zeros(1, 1, 32, 32, 32), tmp_path / "m.onnx", {}, rtol=1e-3)
    assert report.max_abs_diff < 1e-3  # MedicalNet's parameter-free shortcuts export too
    dense = load_medical_config(None, ["model.network=densenet121", "model.weights=medicalnet"])
    with pytest.raises(InputError, match="MedicalNet has 3D ResNets only"):
        build_network(dense, ["lesion", "normal"], None, quiet)


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
    with_blob = build_model(model_config(network="cnn3d", width=4), 2)
    plain = build_model(model_config(network="cnn3d", width=4, blob_scales=[]), 2)
    assert with_blob.features.stem[0].in_channels == 1 + 2 * 3
    assert plain.features.stem[0].in_channels == 1
    with pytest.raises(ConfigError, match="blob_scales"):
        load_medical_config(None, ["model.blob_scales=[0]"])
