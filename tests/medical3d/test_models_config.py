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
