"""The typed QC config: defaults from default.yaml, overrides, unknown keys and bad values named by file and key."""

from __future__ import annotations

import pytest
import yaml

from common.config import ConfigError
from industrial_qc.config import DEFAULT_CONFIG, load_qc_config


def test_default_config_and_overrides():
    cfg = load_qc_config(None, ["classifier.arch=resnet50", "detector.model=yolov5su.yaml", "max_minutes=5"])
    assert cfg.classifier.arch == "resnet50" and cfg.detector.model == "yolov5su.yaml" and cfg.max_minutes == 5
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert load_qc_config().model_dump(mode="json")["classifier"]["train"]["loss"] == raw["classifier"]["train"]["loss"]


def test_config_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("detector:\n  model: yolov9.yaml\n  colour: red\n")
    with pytest.raises(ConfigError) as err:
        load_qc_config(bad)
    msg = str(err.value)
    assert str(bad) in msg and "detector.model" in msg and "detector.colour" in msg
    with pytest.raises(ConfigError, match="crop_size"):
        load_qc_config(None, ["classifier.crop_size=63"])
    with pytest.raises(ConfigError, match="min_candidates 13 is above max_det 12"):
        load_qc_config(None, ["detector.min_candidates=13"])
    with pytest.raises(ConfigError, match="min_conf 0.01 is above conf 0.005"):
        load_qc_config(None, ["detector.min_conf=0.01"])
