"""CLI surface (help with examples, synth command) and the typed config (unknown keys rejected)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from common.config import ConfigError
from industrial_qc.cli import app
from industrial_qc.config import DEFAULT_CONFIG, load_qc_config

runner = CliRunner()


@pytest.mark.parametrize("command", ["synth", "train", "eval", "inspect"])
def test_help_has_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert f"vsuite qc {command}" in result.output


def test_synth_command(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "d"), "--images", "6", "--size", "64", "--seed", "2"])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((tmp_path / "d" / "data.yaml").read_text())
    assert data["names"] == ["scratch", "pit", "stain", "crack"]
    assert len(list((tmp_path / "d" / "images").rglob("*.jpg"))) == 6


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


def test_detector_weights_fine_tune_from_local_file(tiny_run):
    import torch

    from industrial_qc.config import DetectorConfig
    from industrial_qc.detector import build_model

    pt = tiny_run / "checkpoints" / "detector_best.pt"
    model = build_model(DetectorConfig(), weights=pt)
    from ultralytics.nn.tasks import torch_safe_load

    ckpt, _ = torch_safe_load(pt, safe_only=True)
    ref = (ckpt.get("ema") or ckpt["model"]).float().state_dict()
    got = model.model.state_dict()
    key = next(k for k in ref if k.endswith("conv.weight"))
    assert torch.equal(got[key].float(), ref[key])
    from common.errors import InputError

    with pytest.raises(InputError, match="never downloaded"):
        build_model(DetectorConfig(), weights=tiny_run / "nope.pt")


def test_train_command_respects_the_time_budget(tiny_data, tmp_path):
    """`--max-minutes` is shared by both stages: with 200 classifier epochs asked for, the budget ends stage 2."""
    import json

    from common.rundir import read_run_json
    from industrial_qc.config import DEFAULT_CONFIG

    tiny = DEFAULT_CONFIG.parent / "tiny.yaml"
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(tiny_data), "--config", str(tiny), "--out", str(out),
                                 "--max-minutes", "0.4", "--set", "classifier.train.epochs=200",
                                 "--set", "classifier.train.patience=200", "--set", "detector.epochs=100"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())["train"]
    assert metrics["classifier"]["stopped"] == "time budget reached"
    assert metrics["classifier"]["epochs"] < 200 and metrics["detector"]["epochs"] < 100
    assert read_run_json(out)["config"]["max_minutes"] == 0.4
    assert "training summary" in result.output
