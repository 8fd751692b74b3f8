"""Stage 1 training plumbing that is not covered by the tiny end-to-end run."""

from __future__ import annotations

import pytest
import torch

from common.runtime import import_ultralytics
from industrial_qc.config import DetectorConfig
from industrial_qc.detector import cpu_bf16_training, train_args, use_cpu_bf16


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

    assert use_cpu_bf16(DetectorConfig(), "cpu") == cpu_bf16_native()
    assert not use_cpu_bf16(DetectorConfig(cpu_bf16=False), "cpu")
    assert not use_cpu_bf16(DetectorConfig(), "0")  # CUDA keeps Ultralytics' own AMP choice
    args = train_args(DetectorConfig(), tmp_path / "data.yaml", tmp_path, device="cpu", seed=0, minutes=1.0, bf16=True)
    assert args["amp"] == "bf16" and args["time"] == pytest.approx(1 / 60)
    fp32 = train_args(DetectorConfig(), tmp_path / "d.yaml", tmp_path, device="cpu", seed=0, minutes=None)
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
