"""Tiny end to end after training (one epoch per stage): eval, inspect (folders, video, bad sources), score, and
the line pipeline's verdicts on the trained run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from common.errors import InputError
from common.inference import OnnxModel
from common.rundir import model_hashes, read_run_json, update_run_json
from industrial_qc.cli import app
from industrial_qc.data import load_dataset, read_image
from industrial_qc.evaluate import match_defects
from industrial_qc.pipeline import Detections, Pipeline, draw_annotations

runner = CliRunner()


def _thresholds(run_dir: Path, run: dict) -> dict:
    """The verdict thresholds in the ONNX metadata of the run's line classifier (named in run.json)."""
    return OnnxModel(run_dir / run["artifacts"]["line_classifier"]).metadata["thresholds"]


def test_eval_writes_metrics(tiny_run, tiny_data):
    result = runner.invoke(app, ["eval", str(tiny_run), str(tiny_data), "--split", "test"])
    assert result.exit_code == 0, result.output
    assert "escape_rate" in result.output and "false_reject_rate" in result.output
    assert "detector mAP on test" in result.output and "inspect test" in result.output  # progress of each step
    m = json.loads((tiny_run / "metrics.json").read_text())["eval"]["test"]
    assert set(m["detector"]) >= {"mAP50", "mAP50_95", "per_class"}
    assert 0.0 <= m["detector"]["mAP50"] <= 1.0
    assert m["classifier"]["n_gt_crops"] > 0
    cm = np.array(m["classifier"]["with_background"]["confusion_matrix"])
    assert cm.shape == (5, 5) and cm.sum() > m["classifier"]["n_gt_crops"]
    line = read_run_json(tiny_run)["artifacts"]["line_classifier"]
    assert m["classifier"]["model"] == line  # stage 2 is scored as the line runs it
    if line != "classifier.onnx":  # and next to it the fp32 model it was quantized from, on the same crops
        assert m["classifier_fp32"]["model"] == "classifier.onnx"
        assert m["classifier_fp32"]["n_gt_crops"] == m["classifier"]["n_gt_crops"]
        assert "(fp32)" in result.output
    parts = m["pipeline"]["parts"]
    assert parts["parts"] == m["images"] == parts["defective_parts"] + parts["good_parts"]
    assert sum(parts["verdicts"].values()) == parts["parts"]
    assert set(m["pipeline"]["defects"]["per_class"]) == {"scratch", "pit", "stain", "crack"}
    assert read_run_json(tiny_run)["metrics"]["eval_test"]["escape_rate"] == parts["escape_rate"]


@pytest.fixture
def line_folder(tmp_path, tiny_data) -> Path:
    """Test images plus a corrupt, an empty and a truncated file."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    for s in load_dataset(tiny_data).split("test"):
        shutil.copy2(s.image, folder / s.image.name)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "empty.jpg").write_bytes(b"")
    good = next(folder.glob("part_*.png")).read_bytes()
    (folder / "truncated.png").write_bytes(good[:40])
    return folder


def test_inspect_records_errors_and_scores_the_rest(tiny_run, line_folder, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["inspect", str(tiny_run), str(line_folder), "--out", str(out), "--sort", "copy"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    files = sorted(p.name for p in line_folder.iterdir())
    assert sorted(Path(r["file"]).name for r in records) == files
    errors = {Path(r["file"]).name: r for r in records if r["status"] == "error"}
    assert set(errors) == {"corrupt.png", "empty.jpg", "truncated.png"}
    assert "empty file" in errors["empty.jpg"]["reason"]
    assert "cannot decode" in errors["corrupt.png"]["reason"]
    run_id = read_run_json(tiny_run)["run_id"]
    for r in records:
        assert r["run_id"] == run_id and r["timestamp"]
        if r["status"] == "ok":
            assert r["verdict"] in {"PASS", "FAIL", "REVIEW"}
            assert r["latency_ms"] > 0 and isinstance(r["defects"], list)
            for d in r["defects"]:
                assert {"box", "det_class", "det_conf", "cls_class", "cls_prob", "class", "class_prob"} <= set(d)
                assert d["class"] in {"scratch", "pit", "stain", "crack"} and 0 < d["class_prob"] <= 1
    assert len(list((out / "error").iterdir())) == 3
    # a second run over the same folder records nothing new: the ledger remembers every part
    again = runner.invoke(app, ["inspect", str(tiny_run), str(line_folder), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert len((out / "results.jsonl").read_text().splitlines()) == len(files)


def test_line_path_imports_no_torch(tiny_run, line_folder, tmp_path):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from rich.console import Console\n"
        "from industrial_qc.line import InspectOptions, run_line\n"
        "from industrial_qc.score import score\n"
        f"s = run_line(Path({str(tiny_run)!r}), {str(line_folder)!r}, Path({str(tmp_path / 'o')!r}), "
        "InspectOptions(), console=Console(quiet=True))\n"
        "assert s['parts'] > 0, s\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NO_TORCH")


def test_score_overlaps_decoding_and_records_errors(tiny_run, line_folder, tmp_path):
    from rich.console import Console

    from common.results import read_records
    from industrial_qc.score import score

    out = tmp_path / "scores.parquet"
    records = score(tiny_run, [str(line_folder), str(tmp_path / "missing_dir"), str(line_folder / "part_*.png")],
                    out, console=Console(quiet=True), run=read_run_json(tiny_run))
    n_files = len(list(line_folder.iterdir()))
    assert len(records) == n_files + 1  # the glob repeats files already listed; the missing input is a record
    table = read_records(out)
    assert len(table) == len(records)
    status = [r["status"] for r in table]
    assert status.count("error") == 4 and status.count("ok") == n_files - 3


def test_pipeline_inspect_on_array(tiny_run, tiny_data):
    pipe = Pipeline.from_run(tiny_run)
    img = read_image(load_dataset(tiny_data).split("test")[0].image)
    res = pipe.inspect(img)
    assert res["verdict"] in {"PASS", "FAIL", "REVIEW"}
    assert res["n_candidates"] <= 8  # max_det of the tiny config


def test_each_reported_defect_says_whether_it_fails_the_part(tiny_run, tiny_data):
    pipe = Pipeline.from_run(tiny_run)
    pipe.review_threshold, pipe.fail_threshold = 0.3, 0.8
    labels = pipe.classifier.labels
    assert labels[:3] == ["background", "scratch", "pit"]
    det = Detections(boxes=np.array([[0, 0, 10, 10], [40, 40, 60, 60], [20, 20, 30, 30]], np.float32),
                     scores=np.array([0.9, 0.5, 0.4], np.float32), classes=np.array([0, 1, 2]))
    probs = np.zeros((3, len(labels)), np.float32)
    probs[0, [0, 1]] = 0.1, 0.9  # scratch, defect p 0.9: FAIL level
    probs[1, [0, 2]] = 0.5, 0.5  # pit, defect p 0.5: REVIEW level
    probs[2, [0, 1]] = 0.9, 0.1  # background: not reported
    res = pipe.result(det, probs)
    assert res["verdict"] == "FAIL"
    assert [(d["cls_class"], d["level"]) for d in res["defects"]] == [("scratch", "fail"), ("pit", "review")]

    # each box in its own level's colour (BGR red / orange), whatever the part's verdict
    img = np.zeros((64, 64, 3), np.uint8)
    ann = draw_annotations(img, res)
    assert tuple(ann[5, 0]) == (0, 0, 255) and tuple(ann[50, 40]) == (0, 165, 255)

    # eval counts both: every reported defect, and the FAIL-level ones alone
    gt = np.array([[0, 5, 5, 10, 10], [1, 50, 50, 20, 20], [3, 57.6, 57.6, 6.4, 6.4]], np.float32)  # class, cx cy w h
    gt[:, 1:] /= 64
    sample = load_dataset(tiny_data).split("test")[0]
    sample = type(sample)(image=sample.image, label=None, boxes=gt)
    res.update(status="ok", height=64, width=64)
    m = match_defects([res], [sample], labels[1:], iou_thr=0.5)
    assert m["per_class"]["scratch"] == {"precision": 1.0, "recall": 1.0, "tp": 1, "predicted": 1, "ground_truth": 1}
    assert m["per_class"]["pit"]["recall"] == 1.0 and m["per_class_fail"]["pit"]["recall"] == 0.0
    assert m["per_class_fail"]["pit"]["precision"] is None  # nothing FAIL-level called pit
    assert m["per_class"]["crack"]["recall"] == 0.0 and m["localisation_recall"] == 2 / 3


def test_a_reported_defect_is_named_by_both_stages_and_keeps_each_stages_own_class(tiny_run, tiny_data):
    pipe = Pipeline.from_run(tiny_run)
    pipe.review_threshold, pipe.fail_threshold = 0.3, 0.8
    labels = pipe.classifier.labels
    assert pipe.detector.labels == labels[1:] and pipe.class_index is not None
    det = Detections(boxes=np.array([[0, 0, 10, 10], [40, 40, 60, 60]], np.float32),
                     scores=np.array([0.9, 0.8], np.float32), classes=np.array([3, 1]),
                     class_scores=np.array([[0.02, 0.01, 0.01, 0.9], [0.1, 0.8, 0.1, 0.1]], np.float32))
    probs = np.zeros((2, len(labels)), np.float32)
    probs[0, [0, 1, 4]] = 0.05, 0.55, 0.40  # the classifier leans scratch, the detector is sure of crack
    probs[1, [0, 2]] = 0.1, 0.9  # both say pit
    res = pipe.result(det, probs)
    named = [(d["class"], d["cls_class"], d["det_class"]) for d in res["defects"]]
    assert named == [("crack", "scratch", "crack"), ("pit", "pit", "pit")]
    assert res["defects"][0]["class_prob"] == pytest.approx(0.40 * 0.9 / (0.55 * 0.02 + 0.40 * 0.9 + 0.0), abs=1e-4)
    assert res["defects"][0]["cls_prob"] == pytest.approx(0.55)  # the classifier's own reading is kept as it was
    # eval's per-class figures count the name the line reports
    gt = np.array([[3, 5, 5, 10, 10]], np.float32)  # a crack
    gt[:, 1:] /= 64
    sample = load_dataset(tiny_data).split("test")[0]
    sample = type(sample)(image=sample.image, label=None, boxes=gt)
    res.update(status="ok", height=64, width=64)
    assert match_defects([res], [sample], labels[1:], iou_thr=0.5)["per_class"]["crack"]["tp"] == 1


def test_inspect_video_frames_once(tiny_run, tiny_data, tmp_path):
    import cv2

    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 96))
    for s in load_dataset(tiny_data).split("test")[:5]:
        writer.write(read_image(s.image))
    writer.release()
    out = tmp_path / "vout"
    for _ in range(2):  # the second pass finds every frame in the ledger
        result = runner.invoke(app, ["inspect", str(tiny_run), str(video), "--out", str(out)])
        assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["file"].rsplit("#", 1)[1] for r in records] == [f"frame={i}" for i in range(5)]
    assert all(r["status"] == "ok" for r in records)


def test_inspect_bad_source_and_bad_run_are_input_errors(tiny_run, tmp_path):
    result = runner.invoke(app, ["inspect", str(tiny_run), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, InputError)
    assert "not a folder, file, glob or camera index" in str(result.exception)
    result = runner.invoke(app, ["inspect", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, InputError) and "run.json" in str(result.exception)


def test_eval_after_inspect_in_one_process_validates_the_checkpoint(tiny_run, tiny_data, line_folder, tmp_path):
    """`qc inspect` puts the process on onnxruntime's shared pool, where Ultralytics' ONNX backend cannot make
    sessions; eval in the same process validates the checkpoint detector.onnx was exported from instead."""
    run = shutil.copytree(tiny_run, tmp_path / "run")  # eval writes metrics.json: keep the shared run as it is
    code = (
        "import json\n"
        "from pathlib import Path\n"
        "from rich.console import Console\n"
        "from common.inference import shared_pool_active\n"
        "from industrial_qc.evaluate import evaluate_run\n"
        "from industrial_qc.line import InspectOptions, run_line\n"
        f"run_line(Path({str(run)!r}), {str(line_folder)!r}, Path({str(tmp_path / 'o')!r}), InspectOptions(),"
        " console=Console(quiet=True))\n"
        "assert shared_pool_active()\n"
        f"m = evaluate_run(Path({str(run)!r}), Path({str(tiny_data)!r}), 'test', console=Console(quiet=True))\n"
        "print(json.dumps(m['detector']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "YOLO_OFFLINE": "True"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    det = json.loads(proc.stdout.strip().splitlines()[-1])
    assert det["model"] == "detector_best.pt" and 0.0 <= det["mAP50"] <= 1.0


def test_verdict_reads_both_stages_and_runs_without_a_recorded_score_read_the_classifier(tiny_run):
    run = read_run_json(tiny_run)
    assert _thresholds(tiny_run, run)["score"] == "both"  # the default config
    pipe = Pipeline.from_run(tiny_run)
    assert pipe.score == "both"
    pipe.review_threshold, pipe.fail_threshold = 0.3, 0.8
    labels = pipe.classifier.labels
    det = Detections(boxes=np.array([[0, 0, 10, 10], [40, 40, 60, 60]], np.float32),
                     scores=np.array([0.25, 0.04], np.float32), classes=np.array([0, 1]))
    probs = np.zeros((2, len(labels)), np.float32)
    probs[0, [0, 1]] = 0.05, 0.95  # the classifier is sure, the detector much less: sqrt(0.95 * 0.25) = 0.487
    probs[1, [0, 2]] = 0.3, 0.7  # sqrt(0.7 * 0.04) = 0.167: below review, not reported
    res = pipe.result(det, probs)
    assert res["verdict"] == "REVIEW" and res["max_defect_score"] == pytest.approx(0.4873, abs=1e-4)
    assert res["max_defect_prob"] == pytest.approx(0.95)
    assert [(d["cls_class"], d["level"]) for d in res["defects"]] == [("scratch", "review")]
    assert res["defects"][0]["defect_prob"] == pytest.approx(0.95)
    assert res["defects"][0]["defect_score"] == pytest.approx(0.4873, abs=1e-4)

    # a run made before the score was recorded set its thresholds on the classifier's probability alone
    old = Pipeline(pipe.detector, pipe.classifier, 0.8, 0.3, run["run_id"])
    res = old.result(det, probs)
    assert res["verdict"] == "FAIL" and [d["level"] for d in res["defects"]] == ["fail", "review"]
    assert [d["defect_score"] for d in res["defects"]] == [d["defect_prob"] for d in res["defects"]]
    with pytest.raises(InputError, match="unknown verdict score"):
        Pipeline(pipe.detector, pipe.classifier, 0.8, 0.3, score="max")


def test_a_run_with_an_unknown_verdict_score_is_an_input_error_naming_it(tiny_run, tmp_path):
    from common.export import write_metadata
    from industrial_qc.pipeline import line_classifier_path

    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    run = read_run_json(run_dir)
    line = line_classifier_path(run_dir, run)
    write_metadata(line, {"thresholds": {**_thresholds(run_dir, run), "score": "max"}})
    update_run_json(run_dir, model_sha256=model_hashes(run_dir))  # as if training had written it so
    with pytest.raises(InputError, match=rf"{run_dir}: unknown verdict score 'max' .*{line.name}"):
        Pipeline.from_run(run_dir)
