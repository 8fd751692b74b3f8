"""Out-of-fold evidence for the threshold (``verdict.threshold_from: kfold``).

A validation split of a few dozen studies holds a handful of lesions: too few to choose a threshold for 95 %
sensitivity, let alone to show it holds (``medical3d.operating``). Here every train+val study gets a score from a
model that never saw it: train+val is split into k stratified, seeded folds; for each fold a model with the run's
config is trained on the other folds and predicts the held-out one. Each fold model is trained as the final model
is: on a training part, with early stopping and best-epoch choice on a validation part carved (stratified) from
the other folds in the proportion val / (train + val) of the run's splits, so the held-out fold influences
nothing about its own predictions. One temperature and bias are fitted on the pooled out-of-fold logits; the
threshold is then chosen on the pooled calibrated probabilities. The final model (trained on train, calibrated
on val) uses that threshold: both are calibrated probabilities.

With a time budget each fold model gets ``budget / k`` seconds from its start (``verdict.kfold_budget_share`` of
the run's budget in all); without one, the configured epochs. Fold checkpoints live in a temporary folder inside
the run directory and are removed when the folds are done.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from common.calibration import fit_temperature_bias
from common.engine import fit
from common.errors import InputError
from common.runtime import seed_everything
from medical3d.config import MedicalConfig
from medical3d.data import Prepared
from medical3d.evaluate import predict_logits
from medical3d.operating import Evidence
from medical3d.train import build_network, make_loaders
from medical3d.verdict import DecisionRule


def stratified_folds(targets: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N,) fold index in [0, k) per study: each class shuffled (seeded) and dealt round robin, each class starting
    where the previous one stopped, so every fold holds its share of each class and sizes differ by at most one."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(targets), dtype=np.int64)
    start = 0
    for c in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == c))
        folds[members] = (start + np.arange(len(members))) % k
        start = (start + len(members)) % k
    return folds


@dataclass
class OutOfFold:
    """Out-of-fold logits of the train+val studies and the calibration fitted on them."""

    indices: list[int]  # into prepared.cases, train then val
    targets: np.ndarray  # (N,) class indices
    folds: np.ndarray  # (N,) fold of each study
    logits: np.ndarray  # (N, C) from the model that did not see the study
    rule: DecisionRule  # temperature and bias fitted on the pooled logits
    models: list[dict] = field(default_factory=list)  # per fold: sizes, best epoch, why it stopped, seconds
    seconds: float = 0.0

    @property
    def probs(self) -> np.ndarray:
        """(N, C) calibrated out-of-fold probabilities."""
        return self.rule.probabilities(self.logits)

    def evidence(self) -> Evidence:
        i = self.rule.positive_index
        return Evidence(self.targets == i, self.probs[:, i], "kfold")

    def report(self, prepared: Prepared) -> dict:
        """For metrics.json: folds, calibration, the fold models and every study's out-of-fold score."""
        i, labels = self.rule.positive_index, self.rule.labels
        return {"folds": int(self.folds.max()) + 1, "n": len(self.indices), "temperature": self.rule.temperature,
                "bias": self.rule.bias, "seconds": round(self.seconds, 1), "models": self.models,
                "oof": [{"source": str(prepared.cases[j].path), "label": labels[int(t)], "fold": int(f),
                         "logits": [float(v) for v in z], "p_positive": float(p[i])}
                        for j, t, f, z, p in zip(self.indices, self.targets, self.folds, self.logits, self.probs,
                                                 strict=True)]}


def out_of_fold(prepared: Prepared, by_split: dict[str, list[int]], labels: list[str], positive: str,
                cfg: MedicalConfig, work_dir: Path, *, weights: Path | None = None, budget_s: float | None = None,
                device: torch.device | None = None, console: Console | None = None) -> OutOfFold:
    """Train ``cfg.verdict.folds`` fold models over train+val and score each study with the one that left it out."""
    console = console or Console()
    t0 = time.monotonic()
    pool = list(by_split["train"]) + list(by_split["val"])
    targets = np.array([labels.index(prepared.cases[i].label) for i in pool], dtype=np.int64)
    k = cfg.verdict.folds
    if k > len(pool):
        raise InputError(f"verdict.folds {k} is more than the {len(pool)} train+val studies; lower verdict.folds")
    folds = stratified_folds(targets, k, cfg.data.seed)
    inner_k = int(np.clip(round(len(pool) / len(by_split["val"])), 2, len(pool)))
    logits = np.zeros((len(pool), len(labels)), dtype=np.float32)
    models = []
    with tempfile.TemporaryDirectory(prefix=".kfold-", dir=work_dir) as tmp:
        for f in range(k):
            t_fold = time.monotonic()
            held, rest = np.flatnonzero(folds == f), np.flatnonzero(folds != f)
            inner = stratified_folds(targets[rest], min(inner_k, len(rest)), cfg.data.seed + 1 + f)
            split = {"train": [pool[i] for i in rest[inner != 0]], "val": [pool[i] for i in rest[inner == 0]],
                     "test": []}
            seed_everything(cfg.runtime.seed + 1 + f)
            loaders = make_loaders(prepared, split, labels, cfg)
            model = build_network(cfg, labels, weights, Console(quiet=True))
            deadline = time.monotonic() + budget_s / k if budget_s else None
            result = fit(model, loaders.train, loaders.val, cfg.train, Path(tmp) / f"fold{f}", labels,
                         deadline=deadline, device=device, class_counts=loaders.class_counts, console=console,
                         description=f"fold {f + 1}/{k}")
            logits[held] = predict_logits(model.eval().cpu(), [prepared.arrays[pool[i]] for i in held],
                                          cfg.train.batch_size, cfg.model.tta)
            models.append({"fold": f, "train": len(split["train"]), "val": len(split["val"]), "held_out": len(held),
                           "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                           "stopped_reason": result.stopped_reason, "seconds": round(time.monotonic() - t_fold, 1)})
    temperature, bias = fit_temperature_bias(logits, targets)
    rule = DecisionRule(labels=labels, positive_label=positive, threshold=0.5, review_band=0.0,
                        temperature=temperature, bias=bias)
    return OutOfFold(pool, targets, folds, logits, rule, models, time.monotonic() - t0)
