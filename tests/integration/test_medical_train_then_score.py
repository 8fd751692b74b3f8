"""A tiny trained run scored from its model.onnx: ONNX matches torch, one row per study with bad studies kept,
and the scoring path imports no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from common.rundir import read_run_json
from medical3d.data import PreprocessCache, load_cases
from medical3d.evaluate import load_run_model
from medical3d.pipeline import StudyScorer
from medical3d.score import score


def test_onnx_matches_torch_on_a_preprocessed_study(med_tiny_run, med_tiny_data, med_tiny_cfg):
    run_dir, _ = med_tiny_run
    model, cfg, rule, _ = load_run_model(run_dir)
    cached = PreprocessCache(cfg.data.cache_dir).get(load_cases(med_tiny_data)[0].path, cfg.preprocess)
    x = cached.array()[None]
    with torch.no_grad():
        ref = rule.probabilities(model(torch.from_numpy(x)).numpy())
    got = StudyScorer(run_dir / "model.onnx").predict_array(x)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_score_rows_per_study_with_bad_studies_kept(med_tiny_run, med_tiny_data, tmp_path, med_quiet_console):
    run_dir, _ = med_tiny_run
    studies = med_tiny_data.parent / "studies"
    nan = sitk.GetImageFromArray(np.full((16, 16, 16), np.nan, np.float32))
    sitk.WriteImage(nan, str(tmp_path / "nan.nrrd"))
    (tmp_path / "broken.nii.gz").write_bytes(b"garbage")
    out = tmp_path / "scores.parquet"
    records = score(run_dir, [str(studies), str(tmp_path / "nan.nrrd"), str(tmp_path / "broken.nii.gz")], out,
                    console=med_quiet_console, run=read_run_json(run_dir))
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


def test_score_path_imports_no_torch(med_tiny_run, med_tiny_data, tmp_path):
    run_dir, _ = med_tiny_run
    studies = med_tiny_data.parent / "studies"
    code = (
        "import sys; from pathlib import Path; from rich.console import Console\n"
        "from common.rundir import read_run_json; from medical3d.score import score\n"
        f"r = score(Path({str(run_dir)!r}), [{str(studies)!r}], Path({str(tmp_path / 's.csv')!r}),"
        f" console=Console(quiet=True), run=read_run_json({str(run_dir)!r}))\n"
        "assert all(x['status'] == 'ok' for x in r), r\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "False"
