"""The ONNX line pipeline: letterbox, decode and NMS, naming a defect by both stages, and runs that cannot judge
refusing to load (bad thresholds or metadata, a changed model file); a NaN score is never PASSed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import InputError
from common.export import write_metadata
from common.inference import OnnxModel
from common.rundir import model_hashes, read_run_json, update_run_json
from industrial_qc.pipeline import (
    Detections,
    Pipeline,
    class_index,
    decode,
    defect_class_probs,
    letterbox,
    line_classifier_path,
    nms,
)


def _score_cli(run: Path, inputs: list[Path], out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "common.cli", "score", str(run), *map(str, inputs), "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _a_part(tiny_data) -> Path:
    from industrial_qc.data import load_dataset

    return load_dataset(tiny_data).split("test")[0].image


def _thresholds(model: Path) -> dict:
    """The verdict thresholds a run's line classifier carries in its ONNX metadata (their one home)."""
    return OnnxModel(model).metadata["thresholds"]


def test_letterbox_and_decode_map_back():
    img = np.zeros((60, 120, 3), np.uint8)
    out, r, (left, top) = letterbox(img, (96, 96))
    assert out.shape == (96, 96, 3)
    assert r == pytest.approx(0.8) and left == 0 and top == 24
    # one anchor at (48, 48) 10x10 with class-1 score 0.9, one weak anchor below conf
    raw = np.zeros((1, 4 + 3, 2), np.float32)
    raw[0, :4, 0] = [48, 48, 10, 10]
    raw[0, 5, 0] = 0.9
    raw[0, :4, 1] = [20, 20, 4, 4]
    raw[0, 4, 1] = 0.01
    det = decode(raw, conf=0.05, iou=0.5, max_det=10)
    assert len(det) == 1 and det.classes[0] == 1
    np.testing.assert_allclose(det.boxes[0], [43, 43, 53, 53])


def test_decode_keeps_the_best_candidates_below_conf_down_to_the_floor():
    raw = np.zeros((1, 4 + 2, 4), np.float32)
    raw[0, :4] = np.array([[20, 20, 8, 8], [21, 21, 8, 8], [60, 60, 6, 6], [80, 30, 6, 6]], np.float32).T
    raw[0, 4] = [0.003, 0.0025, 0.002, 0.0005]  # all below conf; the second overlaps the first; the last under floor
    kw = dict(conf=0.005, iou=0.3, max_det=12)
    assert len(decode(raw, **kw)) == 0 and len(decode(raw, **kw, min_keep=1)) == 0  # no floor: nothing
    one = decode(raw, **kw, min_keep=1, floor=0.001)
    assert one.scores.tolist() == pytest.approx([0.003])
    two = decode(raw, **kw, min_keep=3, floor=0.001)  # NMS first: the overlapping one and the one under floor go
    assert two.scores.tolist() == pytest.approx([0.003, 0.002])
    raw[0, 4, 2] = 0.5  # one candidate above conf: the rule changes nothing
    assert decode(raw, **kw, min_keep=1, floor=0.001).scores.tolist() == pytest.approx([0.5])
    assert decode(raw, **kw, min_keep=2, floor=0.001).scores.tolist() == pytest.approx([0.5, 0.003])


def test_decode_keeps_each_candidates_class_scores_with_it():
    raw = np.zeros((1, 4 + 3, 3), np.float32)
    raw[0, :4] = np.array([[20, 20, 8, 8], [60, 60, 6, 6], [21, 21, 8, 8]], np.float32).T
    raw[0, 4:] = np.array([[0.2, 0.6, 0.1], [0.7, 0.0, 0.3], [0.5, 0.1, 0.0]], np.float32).T
    det = decode(raw, conf=0.4, iou=0.3, max_det=12)  # the third overlaps the first and goes in NMS
    assert det.scores.tolist() == pytest.approx([0.7, 0.6])
    np.testing.assert_allclose(det.class_scores, [[0.7, 0.0, 0.3], [0.2, 0.6, 0.1]])
    low = decode(raw, conf=0.9, iou=0.3, max_det=12, min_keep=1, floor=0.001)  # the floor path keeps them too
    np.testing.assert_allclose(low.class_scores, [[0.7, 0.0, 0.3]])
    np.testing.assert_allclose(low.subset(np.array([True])).class_scores, [[0.7, 0.0, 0.3]])


def test_a_defect_is_named_by_both_stages():
    labels = ["background", "scratch", "pit", "crack"]
    assert class_index(["crack", "scratch", "pit"], labels).tolist() == [1, 2, 0]  # matched by name, not order
    assert class_index(["scratch", "pit"], labels) is None  # the detector does not know every class
    probs = np.array([[0.2, 0.45, 0.05, 0.30],  # the classifier leans scratch, the detector is sure of crack
                      [0.1, 0.50, 0.40, 0.00],  # the classifier rules crack out; the detector leans crack, then pit
                      [0.5, 0.10, 0.20, 0.20]])
    det = Detections(np.zeros((3, 4), np.float32), np.array([0.8, 0.5, 0.3], np.float32), np.array([0, 0, 1]),
                     np.array([[0.9, 0.05, 0.05], [0.6, 0.1, 0.5], [0.3, 0.3, 0.3]], np.float32))  # crack, scratch, pit
    idx = class_index(["crack", "scratch", "pit"], labels)
    named = defect_class_probs(probs, det, idx)
    np.testing.assert_allclose(named.sum(axis=1), 1.0)
    assert [labels[1 + k] for k in named.argmax(axis=1)] == ["crack", "pit", "pit"]
    # each factor normalised: (0.45 / 0.8) * (0.05 / 1.0) for scratch against (0.30 / 0.8) * (0.9 / 1.0) for crack
    assert named[0, 2] == pytest.approx(0.30 * 0.9 / (0.45 * 0.05 + 0.05 * 0.05 + 0.30 * 0.9))
    np.testing.assert_allclose(named[2], [1 / 5, 2 / 5, 2 / 5])  # a detector without a preference leaves the classifier
    # without the detector's class scores, or classes it does not know: the classifier's defect classes alone
    bare = Detections(det.boxes, det.scores, det.classes)
    for d, i in ((bare, idx), (det, None)):
        np.testing.assert_allclose(defect_class_probs(probs, d, i), probs[:, 1:] / probs[:, 1:].sum(1, keepdims=True))


def test_nms_is_class_agnostic_and_caps():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [70, 70, 80, 80]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.5, 10).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.5, 2).tolist() == [0, 2]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5, 1.5])
def test_a_run_whose_thresholds_cannot_judge_refuses_to_load(tiny_run, tiny_data, tmp_path, bad):
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    line = line_classifier_path(run_dir, read_run_json(run_dir))
    write_metadata(line, {"thresholds": {**_thresholds(line), "fail": bad}})
    update_run_json(run_dir, model_sha256=model_hashes(run_dir))  # as if training had written them so
    with pytest.raises(InputError, match=r"fail=.* is not a number in \[0, 1\]"):
        Pipeline.from_run(run_dir)
    out = tmp_path / "s.jsonl"
    proc = _score_cli(run_dir, [_a_part(tiny_data)], out)
    assert proc.returncode == 2 and "fail=" in proc.stderr and not out.exists(), proc.stdout + proc.stderr


def test_review_above_fail_and_nan_detector_metadata_refuse_to_load(tiny_run, tmp_path):
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    line = line_classifier_path(run_dir, read_run_json(run_dir))
    write_metadata(line, {"thresholds": {**_thresholds(line), "fail": 0.1, "review": 0.2}})
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


def test_a_run_without_thresholds_in_its_classifier_refuses_to_load(tiny_run, tmp_path):
    """The line classifier's metadata is the thresholds' one home: without them the run names the file and stops,
    whatever run.json says."""
    import onnx

    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    line = line_classifier_path(run_dir, read_run_json(run_dir))
    model = onnx.load(str(line))
    kept = [p for p in model.metadata_props if p.key != "thresholds"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(line))
    update_run_json(run_dir, model_sha256=model_hashes(run_dir), thresholds={"fail": 0.8, "review": 0.3})
    with pytest.raises(InputError, match=rf"no verdict thresholds in the metadata of {line.name}"):
        Pipeline.from_run(run_dir)


def test_a_non_finite_score_is_never_passed(tiny_run):
    pipe = Pipeline.from_run(tiny_run)
    det = Detections(np.array([[1, 1, 20, 20]], np.float32), np.array([0.9], np.float32), np.array([0]))
    probs = np.full((1, len(pipe.classifier.labels)), np.nan)  # what a model gives for a NaN input
    res = pipe.result(det, probs)
    assert res["verdict"] == "REVIEW" and "non-finite" in res["verdict_note"]
    from common.results import dumps

    json.loads(dumps(res), parse_constant=lambda t: pytest.fail(f"non-JSON token {t}"))
