"""The part classifier's training (industrial_qc.part_train): staged unfreezing from pretrained weights, seeded
augmentation, the thresholds on 1 - P(good), the time budget, and the run directory of a tiny run (ONNX outputs
``logits`` and ``cam``, metadata, thresholds, run.json)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from common.config import CONFIG_DIR, config_section
from common.inference import OnnxModel
from common.rundir import file_sha256, read_run_json
from industrial_qc.classifier import build_classifier
from industrial_qc.config import DEFAULT_CONFIG, PartConfig, VerdictConfig, load_qc_config
from industrial_qc.part_export import PART_INT8, PART_ONNX
from industrial_qc.part_train import (
    PartImages,
    part_augmentation,
    part_thresholds,
    part_train_config,
    train_part_run,
)
from industrial_qc.parts import load_parts
from industrial_qc.synth import SynthConfig
from industrial_qc.synth_parts import synthesize_parts

TINY = CONFIG_DIR / "industrial_qc" / "tiny.yaml"
QUIET = Console(quiet=True)


def part_config(**changes) -> PartConfig:
    return config_section(PartConfig, DEFAULT_CONFIG, "part", **changes)


@pytest.fixture(scope="module")
def tiny_part_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, run directory): 60 generated 64-px parts in split folders, one epoch of tiny.yaml."""
    root = tmp_path_factory.mktemp("part_train")
    data = synthesize_parts(root / "data", SynthConfig(images=60, size=64, seed=3, image_format="png"), "folders").data
    train_part_run(data, load_qc_config(TINY), root / "run", console=QUIET)
    return data, root / "run"


def test_staged_unfreezing_is_built_only_for_pretrained_weights():
    scratch = part_config(train={"epochs": 12, "lr": 0.01})
    assert part_train_config(scratch).stages is None
    tuned = part_train_config(part_config(weights="imagenet", head_epochs=3, unfreeze_lr_scale=0.1,
                                          train={"epochs": 12, "lr": 0.01}))
    assert [(s.epochs, s.trainable) for s in tuned.stages] == [(3, ["fc"]), (9, ["*"])]
    assert tuned.stages[0].lr == 0.01 and tuned.stages[1].lr == pytest.approx(0.001)
    given = [{"epochs": 1, "lr": 0.1, "trainable": ["layer4", "fc"]}]
    assert [s.trainable for s in part_train_config(part_config(weights="w.pt", train={"stages": given})).stages] == [
        ["layer4", "fc"]]


def test_augmentation_is_seeded_and_keeps_the_size():
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    cfg = part_config().augment
    a, b = (part_augmentation(cfg, 7)(image=img)["image"] for _ in range(2))
    assert a.shape == img.shape and np.array_equal(a, b)
    ds = PartImages(np.stack([img, img]), np.array([0, 1]), "imagenet", part_augmentation(cfg, 7))
    x, y = ds[1]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y == 1


def test_thresholds_read_the_defect_score_one_minus_p_good():
    v = config_section(VerdictConfig, DEFAULT_CONFIG, "verdict", target_recall=0.9, recall_confidence=0.0,
                       max_false_reject=0.0)
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.6, 0.4]])
    th = part_thresholds(v, probs, np.array([0, 0, 1, 1, 1]))
    assert th.review == pytest.approx(0.4) and th.fail >= th.review and th.val_recall == 1.0
    assert th.val_parts == 5 and th.review_reference_parts == 3


def test_training_writes_the_run_directory(tiny_part_run):
    _, run_dir = tiny_part_run
    for name in ("run.json", PART_ONNX, "metrics.json", "splits.csv", "plots/confusion_matrix.png",
                 "plots/roc_curve.png", "checkpoints/part/best.pt", "checkpoints/part/last.pt"):
        assert (run_dir / name).is_file(), name
    run = read_run_json(run_dir)
    assert run["vertical"] == "industrial_qc" and run["mode"] == "part" and run["good_label"] == "good"
    assert run["labels"] == ["good", "crack", "pit", "scratch", "stain"]
    line = run["models"]["line"]
    assert run["models"]["classifier"] == PART_ONNX and line in (PART_ONNX, PART_INT8)
    assert run["artifacts"]["line_classifier"] == line
    onnx_files = sorted(p.name for p in run_dir.glob("*.onnx"))
    assert sorted(run["model_sha256"]) == onnx_files and line in onnx_files
    assert all(run["model_sha256"][f] == file_sha256(run_dir / f) for f in onnx_files)
    assert run["splits"]["val"]["good"] == 3 and run["made_splits"] == []
    for name in onnx_files:
        model = OnnxModel(run_dir / name)
        md = model.metadata
        assert model.output_names == ["logits", "cam"] and model.input_name == "input"
        logits, cam = model.run_all(np.zeros((2, 3, 64, 64), np.float32))
        assert logits.shape == (2, 5) and cam.shape == (2, 5, 2, 2)
        assert md["mode"] == "part" and md["labels"] == run["labels"] and md["good_label"] == "good"
        assert md["input_size"] == 64 and md["normalize"] == "imagenet" and md["resize"] == "pad"
        assert len(md["mean"]) == len(md["std"]) == 3 and md["arch"] == "resnet18" and md["temperature"] > 0
        th = md["thresholds"]
        assert th["score"] == "part" and 0 < th["review"] <= th["fail"] <= 1
    metrics = json.loads((run_dir / "metrics.json").read_text())["train"]
    assert metrics["thresholds"]["fail"] == th["fail"] and metrics["classifier"]["n"] == 9
    assert metrics["classifier"]["line_model"] == line and 0 <= metrics["val_parts"]["escape_rate"] <= 1


def test_splits_csv_is_the_split_training_used(tiny_part_run):
    data, run_dir = tiny_part_run
    given = load_parts(data, ["good"], (0.7, 0.15, 0.15), 0)
    with open(run_dir / "splits.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(Path(r["path"]), r["split"]) for r in rows} == {
        (p.resolve(), s) for s in given.splits for p in given.paths(s)}
    again = load_parts(run_dir / "splits.csv", ["good"], (0.7, 0.15, 0.15), 0)
    assert again.labels == given.labels and len(again.split("test")) == len(given.split("test"))


def test_pretrained_weights_train_in_stages(tmp_path):
    """A local state_dict (what `weights: imagenet` resolves to) starts the network: the head trains alone first."""
    weights = tmp_path / "resnet18.pth"
    torch.save(build_classifier("resnet18", 1000).state_dict(), weights)
    data = synthesize_parts(tmp_path / "d", SynthConfig(images=40, size=48, seed=5, image_format="png"),
                            "folders", splits=False).data
    cfg = load_qc_config(TINY, [f"part.weights={weights}", "part.line_precision=fp32", "part.image_size=32"])
    out = train_part_run(data, cfg, tmp_path / "run", console=QUIET)
    history = torch.load(tmp_path / "run" / "checkpoints" / "part" / "last.pt", weights_only=False)["history"]
    assert [h["stage"] for h in history] == [0, 1]
    assert out.run["models"]["line"] == PART_ONNX and out.run["made_splits"] == ["train", "val", "test"]


def test_the_time_budget_ends_training(tiny_part_run):
    """max_minutes caps the whole run: training stops at its deadline (no sooner than 5 s), export etc. follow."""
    data, run_dir = tiny_part_run
    cfg = load_qc_config(TINY, ["max_minutes=0.05", "part.train.epochs=500", "part.train.patience=500",
                                "part.image_size=32", "part.line_precision=fp32"])
    out = train_part_run(data, cfg, run_dir.parent / "budget", console=QUIET)
    c = out.metrics["classifier"]
    assert c["stopped"] == "time budget reached" and 1 <= c["epochs"] < 500
    assert out.metrics["minutes_total"] < 0.5
