"""Training writes a complete run directory: run.json, model.onnx with the rule and preprocessing in its
metadata, checkpoints, metrics and plots (the session's tiny run, tests/conftest.py)."""

from __future__ import annotations

import json

from common.rundir import read_run_json
from medical3d.pipeline import StudyScorer


def test_train_writes_a_complete_run(med_tiny_run):
    run_dir, _result = med_tiny_run
    run = read_run_json(run_dir)
    assert run["vertical"] == "medical3d" and run["labels"] == ["lesion", "normal"]
    for name in ("model.onnx", "metrics.json", "checkpoints/best.pt", "checkpoints/last.pt", "plots/roc.png",
                 "plots/confusion.png", "plots/calibration.png"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["splits"]["train"] > 0 and metrics["splits"]["val"] > 0
    assert "decision" not in run and run["positive_label"] == "lesion"  # the rule's one home is model.onnx
    rule = StudyScorer(run_dir / "model.onnx").rule.to_dict()
    assert 0.0 <= rule["threshold"] <= 1.0 and rule["temperature"] > 0 and rule["positive_label"] == "lesion"
    meta = StudyScorer(run_dir / "model.onnx").model.metadata
    assert meta["labels"] == ["lesion", "normal"] and meta["preprocessing"]["crop"]["size"] == [32, 32, 32]
    assert meta["threshold"] == rule["threshold"] and meta["temperature"] == rule["temperature"]
    assert meta["bias"] == rule["bias"] and len(rule["bias"]) == 2 and rule["bias"][0] == 0.0
