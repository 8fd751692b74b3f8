"""Tiny train -> eval -> score end to end, ONNX parity, and the batch scorer's handling of bad studies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from common.rundir import read_run_json
from medical3d.data import PreprocessCache, load_cases
from medical3d.evaluate import evaluate_run, load_run_model
from medical3d.score import StudyScorer, score


def test_train_writes_a_complete_run(tiny_run):
    run_dir, _result = tiny_run
    run = read_run_json(run_dir)
    assert run["vertical"] == "medical3d" and run["labels"] == ["lesion", "normal"]
    for name in ("model.onnx", "metrics.json", "checkpoints/best.pt", "checkpoints/last.pt", "plots/roc.png",
                 "plots/confusion.png", "plots/calibration.png"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["splits"]["train"] > 0 and metrics["splits"]["val"] > 0
    rule = run["decision"]
    assert 0.0 <= rule["threshold"] <= 1.0 and rule["temperature"] > 0 and rule["positive_label"] == "lesion"
    meta = StudyScorer(run_dir / "model.onnx").model.metadata
    assert meta["labels"] == ["lesion", "normal"] and meta["preprocessing"]["crop"]["size"] == [32, 32, 32]
    assert meta["threshold"] == rule["threshold"] and meta["temperature"] == rule["temperature"]
    assert meta["bias"] == rule["bias"] and len(rule["bias"]) == 2 and rule["bias"][0] == 0.0


def test_onnx_matches_torch_on_a_preprocessed_study(tiny_run, tiny_data, tiny_cfg):
    run_dir, _ = tiny_run
    model, cfg, rule, _ = load_run_model(run_dir)
    cached = PreprocessCache(cfg.data.cache_dir).get(load_cases(tiny_data)[0].path, cfg.preprocess)
    x = cached.array()[None]
    with torch.no_grad():
        ref = rule.probabilities(model(torch.from_numpy(x)).numpy())
    got = StudyScorer(run_dir / "model.onnx").predict_array(x)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_eval_reports_metrics_and_aligned_gradcam(tiny_run, tiny_data, quiet_console):
    run_dir, _ = tiny_run
    m = evaluate_run(run_dir, tiny_data, "test", console=quiet_console, gradcam_limit=1)
    for key in ("auroc", "accuracy", "sensitivity", "specificity", "ece", "confusion_matrix"):
        assert key in m
    assert sum(map(sum, m["confusion_matrix"])) == m["n"] > 0
    out = Path(m["out_dir"])
    assert json.loads((out / "metrics.json").read_text())["n"] == m["n"]
    cams = sorted((out / "gradcam").glob("*_cam.nii.gz"))
    assert len(cams) == 1 and cams[0].with_suffix("").with_suffix(".png").is_file()
    cam = sitk.ReadImage(str(cams[0]))
    image = sitk.ReadImage(str(cams[0]).replace("_cam.nii.gz", "_image.nii.gz"))
    assert cam.GetSize() == image.GetSize() and cam.GetOrigin() == image.GetOrigin()
    assert cam.GetDirection() == image.GetDirection() and cam.GetSpacing() == image.GetSpacing()
    arr = sitk.GetArrayFromImage(cam)
    assert arr.min() >= 0.0 and arr.max() <= 1.0
    assert "test" in read_run_json(run_dir)["eval"]


def test_score_rows_per_study_with_bad_studies_kept(tiny_run, tiny_data, tmp_path, quiet_console):
    run_dir, _ = tiny_run
    studies = tiny_data.parent / "studies"
    nan = sitk.GetImageFromArray(np.full((16, 16, 16), np.nan, np.float32))
    sitk.WriteImage(nan, str(tmp_path / "nan.nrrd"))
    (tmp_path / "broken.nii.gz").write_bytes(b"garbage")
    out = tmp_path / "scores.parquet"
    records = score(run_dir, [str(studies), str(tmp_path / "nan.nrrd"), str(tmp_path / "broken.nii.gz")], out,
                    console=quiet_console, run=read_run_json(run_dir))
    assert len(records) == 14
    ok = [r for r in records if r["status"] == "ok"]
    bad = [r for r in records if r["status"] == "error"]
    assert len(ok) == 12 and len(bad) == 2
    assert any("NaN" in r["reason"] and "nan.nrrd" in r["reason"] for r in bad)
    assert any("broken.nii.gz" in r["reason"] for r in bad)
    dicom = [r for r in ok if r["format"] == "dicom"]
    assert dicom and all(r["series_uid"] for r in dicom)
    for r in ok:
        assert r["verdict"] in ("positive", "negative", "REVIEW")
        assert abs(sum(r["probabilities"].values()) - 1.0) < 1e-6
        assert r["cv_after"] is not None and r["orientation"]
    table = pd.read_parquet(out)
    assert len(table) == 14 and set(table["status"]) == {"ok", "error"}


def test_score_path_imports_no_torch(tiny_run, tiny_data, tmp_path):
    run_dir, _ = tiny_run
    code = (
        "import sys; from pathlib import Path; from rich.console import Console\n"
        "from common.rundir import read_run_json; from medical3d.score import score\n"
        f"r = score(Path({str(run_dir)!r}), [{str(tiny_data.parent / 'studies')!r}], Path({str(tmp_path / 's.csv')!r}),"
        f" console=Console(quiet=True), run=read_run_json({str(run_dir)!r}))\n"
        "assert all(x['status'] == 'ok' for x in r), r\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "False"
