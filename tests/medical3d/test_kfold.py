"""The k-fold threshold: stratified seeded folds, and `vsuite med train --set verdict.threshold_from=kfold` on the
tiny set: every train+val study scored by a model that never saw it, the threshold chosen on those scores, and
the output saying the evidence cannot support the target."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from common.config import CONFIG_DIR
from medical3d.cli import app
from medical3d.kfold import stratified_folds
from medical3d.pipeline import StudyScorer
from medical3d.verdict import DecisionRule, choose_threshold


def test_stratified_folds_share_out_each_class_and_follow_the_seed():
    targets = np.array([0] * 7 + [1] * 5 + [2] * 4)
    folds = stratified_folds(targets, 3, seed=4)
    assert np.bincount(folds, minlength=3).tolist() in ([6, 5, 5], [5, 6, 5], [5, 5, 6])
    for c in (0, 1, 2):
        per_fold = np.bincount(folds[targets == c], minlength=3)
        assert per_fold.max() - per_fold.min() <= 1, c
    assert (folds == stratified_folds(targets, 3, seed=4)).all()
    assert not (folds == stratified_folds(targets, 3, seed=5)).all()


def test_kfold_threshold_comes_from_out_of_fold_evidence(med_tiny_data, med_tiny_cfg, med_tiny_run, tmp_path):
    run_dir = tmp_path / "kfold"
    res = CliRunner().invoke(app, [
        "train", str(med_tiny_data), "--config", str(CONFIG_DIR / "medical3d" / "tiny.yaml"), "--out", str(run_dir),
        "--set", f"data.cache_dir={med_tiny_cfg.data.cache_dir}", "--set", "verdict.threshold_from=kfold",
        "--set", "verdict.folds=2"])
    assert res.exit_code == 0, res.output
    m = json.loads((run_dir / "metrics.json").read_text())
    kf, op = m["kfold"], m["operating_point"]
    assert op["source"] == "kfold" and kf["folds"] == 2
    n = m["splits"]["train"] + m["splits"]["val"]
    assert len(kf["oof"]) == kf["n"] == n == op["n_pos"] + op["n_neg"]
    assert len({r["source"] for r in kf["oof"]}) == n and {r["fold"] for r in kf["oof"]} == {0, 1}
    for model in kf["models"]:  # trained on the other fold (split into train and val), scored its own
        held = sum(r["fold"] == model["fold"] for r in kf["oof"])
        assert model["held_out"] == held and model["train"] + model["val"] == n - held and model["val"] >= 1
    rule = StudyScorer(run_dir / "model.onnx").rule
    y = np.array([r["label"] == "lesion" for r in kf["oof"]])
    p = np.array([r["p_positive"] for r in kf["oof"]])
    assert rule.threshold == op["threshold"] == choose_threshold(y, p, 0.95)
    # the stored scores are the stored out-of-fold logits under the calibration fitted on them
    pooled = DecisionRule(labels=rule.labels, positive_label="lesion", threshold=0.5, review_band=0.0,
                          temperature=kf["temperature"], bias=kf["bias"])
    np.testing.assert_allclose(pooled.probabilities(np.array([r["logits"] for r in kf["oof"]]))[:, 0], p, rtol=1e-9)
    # the final model is the one threshold_from=val trains (same seed), calibrated on val: only the rule's
    # threshold and band come from the folds
    val_rule = StudyScorer(med_tiny_run[0] / "model.onnx").rule
    assert rule.temperature == pytest.approx(val_rule.temperature, rel=1e-4)
    assert m["val"]["temperature"] == rule.temperature
    out = " ".join(res.output.split())
    assert f"cannot support target sensitivity 0.95: {op['n_pos']} out-of-fold lesion studies" in out
    assert op["message"].endswith("(use more data)") and op["message"] in out
    assert "out-of-fold trade-off" in out and not list(run_dir.glob(".kfold-*"))  # fold checkpoints removed
