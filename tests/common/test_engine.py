import itertools
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from common.checkpoints import load_checkpoint
from common.config import StageConfig
from common.engine import fit
from common.epoch import evaluate
from tests.common.toys import TinyNet, blobs, train_config


def test_fit_reaches_high_accuracy_on_separable_toy(tmp_path, toy_loaders):
    train, val = toy_loaders
    torch.manual_seed(0)
    model = TinyNet()
    cfg = train_config(epochs=6, lr=3e-3, t0=6, monitor="accuracy", patience=6)
    res = fit(model, train, val, cfg, tmp_path, ["a", "b"], config_snapshot={"seed": 0})
    out = evaluate(model, val, labels=["a", "b"])
    assert out.metrics["accuracy"] >= 0.95
    assert res.best_metric == pytest.approx(max(h["val_accuracy"] for h in res.history))
    ckpt = load_checkpoint(res.best_path)
    assert ckpt["labels"] == ["a", "b"] and ckpt["config"] == {"seed": 0}
    assert res.val_logits.shape == (256, 2)


def test_cpu_bf16_trains_in_bf16_where_the_cpu_has_it(tmp_path, toy_loaders):
    """``cpu_bf16``: the training forward runs in bf16 on a CPU with native bf16 (fp32 on others); evaluation,
    weights and the result stay fp32, and it still learns."""
    from common.runtime import cpu_bf16_native

    train, val = toy_loaders
    torch.manual_seed(0)
    model = TinyNet()
    seen: list[tuple[bool, torch.dtype]] = []
    model.head.register_forward_hook(lambda mod, inp, out: seen.append((mod.training, out.dtype)))
    cfg = train_config(epochs=4, lr=3e-3, t0=4, monitor="accuracy", patience=4, cpu_bf16=True)
    fit(model, train, val, cfg, tmp_path, ["a", "b"])
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16 if cpu_bf16_native() else torch.float32}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert evaluate(model, val).metrics["accuracy"] >= 0.95


def test_resume_continues_from_last_checkpoint(tmp_path, toy_loaders):
    train, val = toy_loaders
    torch.manual_seed(0)
    model = TinyNet()
    fit(model, train, val, train_config(epochs=2, lr=3e-3, patience=10), tmp_path, ["a", "b"])
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 1 and len(last["history"]) == 2

    # A fresh model resumed from last.pt starts from those weights and trains only the remaining epochs.
    torch.manual_seed(123)
    resumed = TinyNet()
    res = fit(resumed, train, val, train_config(epochs=4, lr=3e-3, patience=10), tmp_path, ["a", "b"], resume=True)
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]
    assert res.history[:2] == last["history"]
    final = load_checkpoint(tmp_path / "last.pt")
    assert final["epoch"] == 3
    assert evaluate(resumed, val).metrics["accuracy"] >= 0.95


def test_deadline_stops_training_cleanly(tmp_path, toy_loaders):
    train, val = toy_loaders
    res = fit(TinyNet(), train, val, train_config(epochs=50, patience=50), tmp_path, ["a", "b"],
              deadline=time.monotonic())
    assert res.stopped_reason == "time budget reached"
    assert len(res.history) == 1 and res.history[0]["partial"]
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()


class _SlowBatches(TensorDataset):
    """A toy dataset whose items take a fixed time to load, so an epoch has a known, stable duration."""

    def __getitem__(self, i):
        time.sleep(0.004)
        return super().__getitem__(i)


def test_deadline_fits_the_cosine_cycle_so_the_rate_has_annealed(tmp_path):
    # A configured cycle of 200 epochs would stop at a high learning rate when the time runs out after a few; the
    # cycle is re-fitted after every epoch so the last epochs run near the minimum rate.
    x, y = blobs(64, 0)
    train = DataLoader(_SlowBatches(x, y), batch_size=16)  # ~0.25 s per epoch
    val = DataLoader(TensorDataset(*blobs(32, 1)), batch_size=32)
    cfg = train_config(epochs=200, t0=200, lr=1e-2, min_lr=0.0, patience=200)
    res = fit(TinyNet(), train, val, cfg, tmp_path, ["a", "b"], deadline=time.monotonic() + 2.5)
    assert res.stopped_reason == "time budget reached"
    lrs = [h["lr"] for h in res.history]
    assert 3 <= len(lrs) < 200
    assert lrs[-1] < 0.5 * cfg.lr, lrs  # unfitted: > 0.99 * lr; the cut-short last epoch of a >= 3-epoch cycle < 0.25
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(lrs)), lrs  # no restart on the way
    state = load_checkpoint(tmp_path / "last.pt")["scheduler"]
    assert state["configured_T_0"] == 200 and state["T_0"] < 200

    # Without a deadline the configured cycle stands.
    res = fit(TinyNet(), train, val, train_config(epochs=2, t0=200, lr=1e-2, patience=9), tmp_path / "b", ["a", "b"])
    assert res.history[-1]["lr"] > 0.99 * 1e-2


def test_patience_waits_for_the_deadline_fitted_cycle_to_anneal(tmp_path):
    # A rate of 1e-30 leaves every weight as it is, so no epoch after the first improves the validation metric.
    x, y = blobs(64, 0)
    train = DataLoader(_SlowBatches(x, y), batch_size=16)  # ~0.25 s per epoch
    val = DataLoader(TensorDataset(*blobs(32, 1)), batch_size=32)
    cfg = train_config(epochs=200, t0=200, lr=1e-30, min_lr=0.0, patience=1)
    # Without a deadline, patience 1 stops the run after its second epoch.
    res = fit(TinyNet(), train, val, train_config(epochs=6, t0=6, lr=1e-30, min_lr=0.0, patience=1),
              tmp_path / "a", ["a", "b"])
    assert res.stopped_reason.startswith("early stop") and len(res.history) == 2
    # With a deadline the cycle is fitted to it and its high-rate epochs do not count against patience.
    res = fit(TinyNet(), train, val, cfg, tmp_path / "b", ["a", "b"], deadline=time.monotonic() + 1.5)
    assert res.stopped_reason == "time budget reached", res.stopped_reason
    assert len(res.history) >= 3 and res.best_epoch == 1


def test_staged_unfreezing_trains_head_first(tmp_path, toy_loaders):
    train, val = toy_loaders
    torch.manual_seed(0)
    model = TinyNet()
    trunk0 = [p.detach().clone() for p in model.features.parameters()]
    head0 = [p.detach().clone() for p in model.head.parameters()]
    cfg = train_config(stages=[StageConfig(epochs=1, lr=1e-2, trainable=["head"])], patience=5)
    fit(model, train, val, cfg, tmp_path / "s1", ["a", "b"])
    assert all(torch.equal(a, b) for a, b in zip(trunk0, model.features.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(head0, model.head.parameters(), strict=True))

    cfg2 = train_config(stages=[StageConfig(epochs=1, lr=1e-2, trainable=["head"]),
                                StageConfig(epochs=1, lr=1e-3, trainable=["*"])], patience=5, monitor="loss")
    model2 = TinyNet()
    trunk_before = [p.detach().clone() for p in model2.features.parameters()]
    res = fit(model2, train, val, cfg2, tmp_path / "s2", ["a", "b"])
    assert [h["stage"] for h in res.history] == [0, 1]
    assert [h["lr"] for h in res.history][1] <= 1e-3
    # the best checkpoint is whichever epoch had the lowest val loss; the trunk moved in stage 2
    ckpt = load_checkpoint(tmp_path / "s2" / "last.pt")
    moved = [not torch.equal(a, ckpt["model"][f"features.{k}"]) for k, a in zip(
        ["0.weight", "0.bias", "2.weight", "2.bias"], trunk_before, strict=True)]
    assert any(moved)


def test_focal_and_class_weighted_training_on_imbalanced_toy(tmp_path):
    torch.manual_seed(0)
    x, y = blobs(600, 3)
    keep = (y == 0) | (torch.rand(len(y)) < 0.15)  # ~1:7 imbalance
    train = DataLoader(TensorDataset(x[keep], y[keep]), batch_size=32, shuffle=True)
    xv, yv = blobs(200, 4)
    val = DataLoader(TensorDataset(xv, yv), batch_size=100)
    cfg = train_config(epochs=5, lr=3e-3, loss="focal", class_weighting="balanced", focal_gamma=2.0, patience=5)
    counts = np.bincount(y[keep].numpy(), minlength=2).tolist()
    model = TinyNet()
    fit(model, train, val, cfg, tmp_path, ["maj", "min"], class_counts=counts)
    out = evaluate(model, val, labels=["maj", "min"])
    assert out.metrics["per_class"]["min"]["recall"] >= 0.9
    assert out.metrics["balanced_accuracy"] >= 0.9
