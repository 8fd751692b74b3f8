"""The medical3d config: the shipped configs validate, and errors name the key."""

from __future__ import annotations

import pytest

from common.config import CONFIG_DIR, ConfigError
from medical3d.config import load_medical_config


@pytest.mark.parametrize("name", ["default", "tiny", "demo"])
def test_shipped_configs_validate(name):
    cfg = load_medical_config(CONFIG_DIR / "medical3d" / f"{name}.yaml")
    assert cfg.preprocess.crop.size[0] in (32, 64, 96)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.network"):
        load_medical_config(None, ["model.network=vgg"])
    with pytest.raises(ConfigError, match="control_points"):
        load_medical_config(None, ["preprocess.n4.control_points=3"])
