"""The typed QC config: defaults from default.yaml, overrides, unknown keys and bad values named by file and key."""

from __future__ import annotations

import pytest
import torch
import yaml

from common.config import ConfigError
from common.runtime import pick_device
from industrial_qc.config import DEFAULT_CONFIG, load_qc_config
from industrial_qc.detector import ultralytics_device


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


# ---------------------------------------------------------------- devices: detector.device (Ultralytics), device: auto


@pytest.mark.parametrize(("value", "parsed"), [
    ("null", None), ("cpu", "cpu"), ("0", "0"), ("'0,1'", "0,1"), ("[0, 1]", "0,1"), ("'1, 3'", "1,3"), ("[2]", "2"),
])
def test_a_device_list_becomes_the_string_ultralytics_parses(value, parsed):
    cfg = load_qc_config(None, [f"detector.device={value}"])
    assert cfg.detector.device == parsed
    if parsed is not None:  # what stage 1 hands to Ultralytics, whatever the run's own device
        assert ultralytics_device(cfg.detector, torch.device("cpu")) == parsed


@pytest.mark.parametrize("value", ["gpu", "[0, 0]", "[]", "1.5", "true", "'0;1'", "-1"])
def test_a_bad_device_list_is_named_by_key(value):
    with pytest.raises(ConfigError, match="detector.device"):
        load_qc_config(None, [f"detector.device={value}"])


def test_without_a_list_stage_1_trains_on_the_runs_device():
    cfg = load_qc_config()
    assert cfg.detector.device is None and cfg.device == "cpu"  # default.yaml: CPU unless asked
    assert ultralytics_device(cfg.detector, torch.device("cpu")) == "cpu"
    assert ultralytics_device(cfg.detector, torch.device("cuda", 1)) == "1"  # a torchrun rank's own GPU
    assert ultralytics_device(cfg.detector, torch.device("cuda")) == "0"


def test_device_auto_takes_cuda_where_there_is_one():
    cfg = load_qc_config(None, ["device=auto"])
    assert pick_device(cfg.device).type == ("cuda" if torch.cuda.is_available() else "cpu")
