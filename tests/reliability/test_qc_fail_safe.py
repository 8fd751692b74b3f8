"""Issue 28: a run that cannot judge refuses to load, a NaN never PASSes, and no data file runs code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import InputError
from common.export import write_metadata
from common.rundir import model_hashes, read_run_json, update_run_json
from industrial_qc.pipeline import Detections, Pipeline, line_classifier_path
from industrial_qc.verdict import part_verdict


def _score_cli(run: Path, inputs: list[Path], out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "common.cli", "score", str(run), *map(str, inputs), "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _a_part(tiny_data) -> Path:
    from industrial_qc.data import load_dataset

    return load_dataset(tiny_data).split("test")[0].image


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5, 1.5])
def test_a_run_whose_thresholds_cannot_judge_refuses_to_load(tiny_run, tiny_data, tmp_path, bad):
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    run = read_run_json(run_dir)
    line = line_classifier_path(run_dir, run)
    write_metadata(line, {"thresholds": {**run["thresholds"], "fail": bad}})
    update_run_json(run_dir, model_sha256=model_hashes(run_dir))  # as if training had written them so
    with pytest.raises(InputError, match=r"fail=.* is not a number in \[0, 1\]"):
        Pipeline.from_run(run_dir)
    out = tmp_path / "s.jsonl"
    proc = _score_cli(run_dir, [_a_part(tiny_data)], out)
    assert proc.returncode == 2 and "fail=" in proc.stderr and not out.exists(), proc.stdout + proc.stderr


def test_review_above_fail_and_nan_detector_metadata_refuse_to_load(tiny_run, tmp_path):
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    run = read_run_json(run_dir)
    write_metadata(line_classifier_path(run_dir, run), {"thresholds": {**run["thresholds"], "fail": 0.1,
                                                                       "review": 0.2}})
    update_run_json(run_dir, model_sha256=model_hashes(run_dir))
    with pytest.raises(InputError, match="fail 0.1 is below review 0.2"):
        Pipeline.from_run(run_dir)
    shutil.rmtree(run_dir)
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    write_metadata(run_dir / "detector.onnx", {"conf": "NaN"})
    update_run_json(run_dir, model_sha256=model_hashes(run_dir))
    with pytest.raises(InputError, match=r"detector.onnx: metadata conf=nan: not a finite number"):
        Pipeline.from_run(run_dir)


def test_labels_that_do_not_match_the_model_outputs_refuse_to_load(tiny_run, tmp_path):
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    line = line_classifier_path(run_dir, read_run_json(run_dir))
    write_metadata(line, {"labels": ["background", "scratch"]})
    update_run_json(run_dir, model_sha256=model_hashes(run_dir))
    with pytest.raises(InputError, match=r"names 2 classes but the model outputs 5"):
        Pipeline.from_run(run_dir)


def test_a_model_file_changed_after_training_is_named_and_refused(tiny_run, tiny_data, tmp_path):
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    assert set(read_run_json(run_dir)["model_sha256"]) >= {"detector.onnx", "classifier.onnx"}
    Pipeline.from_run(run_dir)  # intact: loads
    shutil.copy2(run_dir / "classifier.onnx", line_classifier_path(run_dir, read_run_json(run_dir)))
    out = tmp_path / "s.csv"
    proc = _score_cli(run_dir, [_a_part(tiny_data)], out)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "classifier.int8.onnx: model file changed since training" in proc.stderr.replace("\n", "")
    assert not out.exists()


def test_a_non_finite_score_is_never_passed(tiny_run):
    assert part_verdict([float("nan")], 0.8, 0.3) == "REVIEW"
    assert part_verdict([0.1, float("nan")], 0.8, 0.3) == "REVIEW"
    assert part_verdict([0.9, float("nan")], 0.8, 0.3) == "FAIL"
    assert part_verdict([float("inf") * 0], 0.8, 0.3) == "REVIEW"
    assert part_verdict([0.1], float("nan"), float("nan")) == "REVIEW"
    assert part_verdict([0.1], 0.8, 0.3) == "PASS"
    pipe = Pipeline.from_run(tiny_run)
    det = Detections(np.array([[1, 1, 20, 20]], np.float32), np.array([0.9], np.float32), np.array([0]))
    probs = np.full((1, len(pipe.classifier.labels)), np.nan)  # what a model gives for a NaN input
    res = pipe.result(det, probs)
    assert res["verdict"] == "REVIEW" and "non-finite" in res["verdict_note"]
    from common.results import dumps

    json.loads(dumps(res), parse_constant=lambda t: pytest.fail(f"non-JSON token {t}"))


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crafted(path: Path, marker: Path, wrap: str | None = "model") -> Path:
    import torch

    payload = _RunsCode(marker) if wrap is None else {wrap: _RunsCode(marker), "labels": ["a", "b"]}
    torch.save(payload, path)
    return path


def test_no_checkpoint_or_weights_file_runs_code(tmp_path):
    from common.engine import load_checkpoint
    from industrial_qc.classifier import build_classifier
    from industrial_qc.config import DetectorConfig
    from industrial_qc.detector import build_model

    marker = tmp_path / "pwned"
    with pytest.raises(InputError, match="best.pt: not a readable checkpoint"):
        load_checkpoint(_crafted(tmp_path / "best.pt", marker))
    with pytest.raises(InputError, match="classifier.weights .*not a loadable state_dict"):
        build_classifier("resnet18", 3, weights=_crafted(tmp_path / "w.pt", marker))
    with pytest.raises(InputError, match="detector-weights .*refused"):
        build_model(DetectorConfig(), _crafted(tmp_path / "yolo.pt", marker, wrap="model"))
    assert not marker.exists(), "a crafted file ran code"


def test_med_eval_refuses_a_crafted_checkpoint_without_running_it(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    decision = {"labels": ["lesion", "normal"], "positive_label": "lesion", "threshold": 0.5, "review_band": 0.1,
                "temperature": 1.0}
    (run_dir / "run.json").write_text(json.dumps({"run_id": "x", "vertical": "medical3d", "labels": decision["labels"],
                                                  "config": {}, "decision": decision}))
    marker = tmp_path / "pwned"
    _crafted(run_dir / "checkpoints" / "best.pt", marker)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split\n")
    proc = subprocess.run([sys.executable, "-m", "common.cli", "med", "eval", str(run_dir), str(manifest)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "best.pt: not a readable checkpoint" in proc.stderr.replace("\n", "")
    assert not marker.exists(), "a crafted checkpoint ran code"
