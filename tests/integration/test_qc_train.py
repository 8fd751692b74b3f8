"""Tiny training run (one epoch per stage) -> the run directory: its files, the thresholds in the classifiers'
ONNX metadata, the int8 line classifier, ONNX parity of both stages with their torch checkpoints, the detector's
input transform, the train-split thresholds sample and the shared time budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from common.inference import OnnxModel
from common.rundir import read_run_json
from common.runtime import cpu_bf16_native
from industrial_qc.cli import app
from industrial_qc.data import load_dataset, read_image
from industrial_qc.flatfield import fit_to, flatfield
from industrial_qc.pipeline import OnnxClassifier, OnnxDetector, Pipeline, letterbox

runner = CliRunner()


def _thresholds(run_dir: Path, run: dict) -> dict:
    """The verdict thresholds in the ONNX metadata of the run's line classifier (named in run.json)."""
    return OnnxModel(run_dir / run["artifacts"]["line_classifier"]).metadata["thresholds"]


def test_run_directory(tiny_run, tiny_data):
    for name in ("run.json", "detector.onnx", "classifier.onnx", "metrics.json", "plots/confusion_matrix.png",
                 "plots/pr_curve.png", "checkpoints/detector_best.pt", "checkpoints/classifier/best.pt"):
        assert (tiny_run / name).is_file(), name
    run = read_run_json(tiny_run)
    assert run["vertical"] == "industrial_qc"
    assert run["labels"] == ["background", "scratch", "pit", "stain", "crack"]
    assert "thresholds" not in run  # their one home: the classifiers' ONNX metadata
    th = _thresholds(tiny_run, run)
    assert 0 < th["review"] <= th["fail"] <= 1
    # the thresholds' sample: every val part (good ones whole, defective ones away from their defects), and with
    # reference train+val the train split's too, unless the val parts disagreed with it (then the note says so)
    ds = load_dataset(tiny_data)
    val, train = ds.split("val"), ds.split("train")
    used = val + train if th["reference"] == "train+val" else val
    configured = run["config"]["verdict"]["reference"]
    assert th["reference"] == configured or (configured == "train+val" and "not used" in th["reference_note"])
    assert th["fail_reference_parts"] == len(used) and 0 <= th["fail_reference_false_alarm"] <= 1
    assert th["review_reference_parts"] == sum(s.defective for s in used) and th["val_parts"] == len(val)
    assert run["config"]["detector"]["model"] == "yolov5nu.yaml"
    # the ONNX files explain themselves
    det, clf = OnnxDetector(tiny_run / "detector.onnx"), OnnxClassifier(tiny_run / "classifier.onnx")
    assert det.labels == run["labels"][1:] and det.imgsz == (96, 96)
    assert clf.labels == run["labels"] and clf.crop_size == 32
    assert clf.model.metadata["thresholds"]["fail"] == th["fail"]
    assert clf.temperature > 0
    metrics = json.loads((tiny_run / "metrics.json").read_text())["train"]
    assert {"detector", "classifier", "thresholds", "val_pipeline"} <= set(metrics)
    # both stages computed with the configured threads (tiny.yaml: 2), not Ultralytics' cores - 1
    assert metrics["detector"]["torch_threads"] == 2 and metrics["classifier"]["torch_threads"] == 2
    assert metrics["detector"]["precision_mode"] == ("bf16" if cpu_bf16_native() else "fp32")


def test_line_runs_the_int8_classifier_when_it_agrees_with_fp32(tiny_run):
    run = read_run_json(tiny_run)
    check = json.loads((tiny_run / "metrics.json").read_text())["train"]["classifier"]["int8_check"]
    assert check["crops"] > 0 and 0 <= check["mean_abs_diff"] <= check["max_abs_diff"] <= 1
    line = run["artifacts"]["line_classifier"]
    assert line == ("classifier.int8.onnx" if check["used"] else "classifier.onnx")
    assert (tiny_run / "classifier.int8.onnx").is_file() == check["used"]
    pipe = Pipeline.from_run(tiny_run)
    assert pipe.classifier.model.path == tiny_run / line
    th = _thresholds(tiny_run, run)
    assert pipe.fail_threshold == th["fail"] and pipe.review_threshold == th["review"]
    if check["used"]:
        md = pipe.classifier.model.metadata
        assert md["precision"] == "int8" and md["calibration_crops"] > 0
        assert md["val_agreement"]["mean_abs_diff"] == pytest.approx(check["mean_abs_diff"])
        ops = {n.op_type for n in onnx.load(str(tiny_run / line)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_fp32_line_classifier_and_train_split_thresholds_on_request(tiny_data, tmp_path):
    from rich.console import Console

    from industrial_qc.config import load_qc_config
    from industrial_qc.train import train_run
    from tests.conftest import TINY_CONFIG

    run_dir = tmp_path / "fp32"
    run_dir.mkdir()
    (run_dir / "classifier.int8.onnx").write_bytes(b"stale copy of an earlier run")
    cfg = load_qc_config(TINY_CONFIG, ["classifier.line_precision=fp32", "detector.epochs=1",
                                       "verdict.reference=train+val"])
    train_run(tiny_data, cfg, run_dir, console=Console(quiet=True))
    run = read_run_json(run_dir)
    assert run["artifacts"]["line_classifier"] == "classifier.onnx"
    # thresholds read from the train split too, or val alone with the reason
    th, ds = _thresholds(run_dir, run), load_dataset(tiny_data)
    val, train = ds.split("val"), ds.split("train")
    if th["reference"] == "train+val":
        assert th["reference_note"] is None and th["fail_reference_parts"] == len(val) + len(train)
        assert th["review_reference_parts"] == sum(s.defective for s in val + train)
    else:
        assert "train split not used" in th["reference_note"] and th["fail_reference_parts"] == len(val)
    assert not (run_dir / "classifier.int8.onnx").exists()
    assert Pipeline.from_run(run_dir).classifier.model.path == run_dir / "classifier.onnx"
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["classifier"]["int8_check"] is None


def test_classifier_onnx_matches_torch(tiny_run, tiny_data):
    import torch

    from industrial_qc.classifier import load_classifier_checkpoint
    from industrial_qc.config import ClassifierConfig
    from industrial_qc.crops import to_tensor_batch

    run = read_run_json(tiny_run)
    cfg = ClassifierConfig.model_validate(run["config"]["classifier"])
    model, labels = load_classifier_checkpoint(tiny_run / "checkpoints" / "classifier" / "best.pt", cfg)
    onnx_clf = OnnxClassifier(tiny_run / "classifier.onnx")
    sample = next(s for s in load_dataset(tiny_data).split("val") if s.defective)
    img = read_image(sample.image)
    boxes = np.vstack([sample.boxes_xyxy(img.shape[1], img.shape[0]), [[5, 5, 20, 30]]])
    crops = onnx_clf.crops(img, boxes)
    with torch.no_grad():
        ref = model(torch.from_numpy(to_tensor_batch(crops, normalize=onnx_clf.normalize))).numpy()
    got = onnx_clf.logits(crops)
    assert got.shape == (len(boxes), len(labels))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))


def test_detector_onnx_matches_torch(tiny_run, tiny_data):
    import torch

    from common.runtime import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    net = YOLO(str(tiny_run / "checkpoints" / "detector_best.pt")).model.float().eval()
    det = OnnxDetector(tiny_run / "detector.onnx")
    img = read_image(load_dataset(tiny_data).split("val")[0].image)
    padded, _, _ = letterbox(img, det.imgsz, det.flatfield)
    x = np.ascontiguousarray(padded[..., ::-1].transpose(2, 0, 1)[None], np.float32) / 255.0
    with torch.no_grad():
        ref = net(torch.from_numpy(x))
    ref = (ref[0] if isinstance(ref, tuple | list) else ref).numpy()
    got = det.model.run(x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=2e-3 * max(1.0, np.abs(ref).max()))


def test_train_reference_is_a_seeded_sample_that_stops_at_the_deadline(tiny_run, tiny_data):
    from common.config import CONFIG_DIR
    from industrial_qc.config import load_qc_config
    from industrial_qc.thresholds import train_reference

    vcfg = load_qc_config(CONFIG_DIR / "industrial_qc" / "tiny.yaml").verdict
    pipe = Pipeline.from_run(tiny_run)
    assert pipe.score == vcfg.score
    train = load_dataset(tiny_data).split("train")
    dets = [pipe.detector(read_image(s.image)) for s in train]
    whole = train_reference(vcfg, pipe.classifier, train, dets, seed=0, deadline=None)
    assert len(whole.scores) == len(train) and whole.defective.sum() == sum(s.defective for s in train)
    # the same parts whatever the order they were scored in
    clf = pipe.classifier
    each = [pipe.defect_scores(d, clf.probs(clf.crops(read_image(s.image), d.boxes)))
            for s, d in zip(train, dets, strict=True)]
    expected = sorted(float(v.max()) if len(v) else 0.0 for v in each)
    assert sorted(whole.scores.tolist()) == pytest.approx(expected)
    capped = train_reference(vcfg, pipe.classifier, train, dets, seed=0, deadline=None, max_parts=7)
    again = train_reference(vcfg, pipe.classifier, train, dets, seed=0, deadline=None, max_parts=7)
    assert len(capped.scores) == 7 and capped.scores.tolist() == again.scores.tolist()
    late = train_reference(vcfg, pipe.classifier, train, dets, seed=0, deadline=0.0, min_parts=5)
    assert late.scores.tolist() == capped.scores[:5].tolist()  # past the deadline: the first min_parts only


def test_the_line_feeds_the_detector_what_it_was_trained_on(tiny_run, tiny_data):
    det = OnnxDetector(tiny_run / "detector.onnx")
    assert det.flatfield == {"sigma": 0.125, "gain": 40.0, "grid": 32}
    img = read_image(load_dataset(tiny_data).split("val")[0].image)
    padded, _, (left, top) = letterbox(img, det.imgsz, det.flatfield)
    resized, _ = fit_to(img, det.imgsz)
    h, w = resized.shape[:2]
    content = padded[top : top + h, left : left + w]
    assert np.array_equal(content, flatfield(resized, **det.flatfield))


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
