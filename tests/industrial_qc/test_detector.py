"""Stage 1: training plumbing not covered by the tiny end-to-end run, local weights, the line confidence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import config_section
from common.runtime import import_ultralytics
from industrial_qc.config import DEFAULT_CONFIG, DetectorConfig
from industrial_qc.detector import cpu_bf16_training, train_args, use_cpu_bf16


def _detector_config(**changes) -> DetectorConfig:
    return config_section(DetectorConfig, DEFAULT_CONFIG, "detector", **changes)


def test_cpu_bf16_training_lets_ultralytics_autocast_on_the_cpu_only_inside():
    import_ultralytics()
    import ultralytics.engine.trainer as trainer_mod

    original = trainer_mod.autocast
    with pytest.raises(RuntimeError):  # why the context exists: Ultralytics refuses bf16 off CUDA
        original(torch.bfloat16, device="cpu")
    layer = torch.nn.Linear(4, 4)
    with cpu_bf16_training(True):
        with trainer_mod.autocast(torch.bfloat16, device="cpu"):
            assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
        with trainer_mod.autocast(False, device="cpu"):  # every other use goes to Ultralytics' own helper
            assert layer(torch.randn(2, 4)).dtype == torch.float32
    assert trainer_mod.autocast is original
    with cpu_bf16_training(False):
        assert trainer_mod.autocast is original


def test_bf16_only_where_asked_and_native(tmp_path):
    from common.runtime import cpu_bf16_native

    assert use_cpu_bf16(_detector_config(), "cpu") == cpu_bf16_native()
    assert not use_cpu_bf16(_detector_config(cpu_bf16=False), "cpu")
    assert not use_cpu_bf16(_detector_config(), "0")  # CUDA keeps Ultralytics' own AMP choice
    args = train_args(_detector_config(), tmp_path / "data.yaml", tmp_path, device="cpu", seed=0, minutes=1.0,
                      bf16=True)
    assert args["amp"] == "bf16" and args["time"] == pytest.approx(1 / 60)
    fp32 = train_args(_detector_config(), tmp_path / "d.yaml", tmp_path, device="cpu", seed=0, minutes=None)
    assert fp32["amp"] is False and "time" not in fp32


def test_sparse_validation_validates_on_schedule_and_never_keeps_an_unvalidated_best(tmp_path, tiny_data):
    """val_every=3, val_last=2 over 5 epochs: epochs 1 (a first reading), 3 (the schedule), 4 (val_last) and 5
    (val_last and Ultralytics' final epoch) are validated, 2 is not; best.pt is a validated epoch; the final pass
    on best.pt is the fifth."""
    import csv

    from industrial_qc.config import load_qc_config
    from industrial_qc.detector import train_detector
    from tests.conftest import TINY_CONFIG

    cfg = load_qc_config(TINY_CONFIG, ["detector.epochs=5", "detector.val_every=3", "detector.val_last=2",
                                       "detector.close_mosaic=0"]).detector
    res = train_detector(cfg, tiny_data, tmp_path, threads=2)
    assert res.epochs_run == 5
    assert res.metrics["val_passes"] == 5
    # epoch 1 sets the first best, so a fitness left over from it would have written best.pt at epoch 2
    assert res.metrics["best_epochs"][0] == 1 and 2 not in res.metrics["best_epochs"]
    assert res.metrics["best_epoch"] in (1, 3, 4, 5)
    rows = list(csv.DictReader((tmp_path / "ultralytics" / "train" / "results.csv").read_text().splitlines()))
    assert len(rows) == 5


def test_detector_weights_fine_tune_from_local_file(tiny_run):
    from industrial_qc.detector import build_model

    pt = tiny_run / "checkpoints" / "detector_best.pt"
    model = build_model(_detector_config(), weights=pt)
    from ultralytics.nn.tasks import torch_safe_load

    ckpt, _ = torch_safe_load(pt, safe_only=True)
    ref = (ckpt.get("ema") or ckpt["model"]).float().state_dict()
    got = model.model.state_dict()
    key = next(k for k in ref if k.endswith("conv.weight"))
    assert torch.equal(got[key].float(), ref[key])
    from common.errors import InputError

    with pytest.raises(InputError, match="never downloaded"):
        build_model(_detector_config(), weights=tiny_run / "nope.pt")


def test_line_confidence_keeps_the_target_share_of_findable_defects():
    from industrial_qc.detector import choose_conf
    from industrial_qc.pipeline import Detections

    gt = [np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32), np.array([[0, 0, 10, 10], [80, 80, 90, 90]],
                                                                              np.float32), np.zeros((0, 4))]
    dets = [Detections(np.array([[0, 0, 10, 10], [50, 50, 60, 61]], np.float32), np.array([0.5, 0.2], np.float32),
                       np.zeros(2, np.int64)),
            Detections(np.array([[1, 1, 10, 10], [30, 30, 40, 40]], np.float32), np.array([0.004, 0.9], np.float32),
                       np.zeros(2, np.int64)),  # the box at (80, 80) is never found
            Detections()]
    kw = dict(iou_thr=0.3, floor=0.001, ceiling=0.5)
    conf, recall = choose_conf(dets, gt, target_recall=0.98, **kw)
    assert conf == np.float32(0.004) and recall == 0.75  # all 3 findable boxes kept, not stuck at the floor
    conf, recall = choose_conf(dets, gt, target_recall=0.6, **kw)
    assert conf == np.float32(0.2) and recall == 0.5
    assert choose_conf([Detections()], [gt[0]], target_recall=0.98, **kw) == (0.001, 0.0)
