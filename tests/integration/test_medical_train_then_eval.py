"""A tiny trained run evaluated on the test split: metrics, predictions and Grad-CAM volumes aligned with the
preprocessed study."""

from __future__ import annotations

import json
from pathlib import Path

import SimpleITK as sitk

from common.rundir import read_run_json
from medical3d.evaluate import evaluate_run


def test_eval_reports_metrics_and_aligned_gradcam(med_tiny_run, med_tiny_data, med_quiet_console):
    run_dir, _ = med_tiny_run
    m = evaluate_run(run_dir, med_tiny_data, "test", console=med_quiet_console, gradcam_limit=1)
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
