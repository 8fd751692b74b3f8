"""Training of the medical3d vertical: datasets, augmentation, fit, calibration, threshold, ONNX export.

``train`` turns a manifest into a run directory::

    runs/<name>/run.json  model.onnx  checkpoints/{best,last}.pt  metrics.json  plots/{roc,confusion,calibration}.png

The loop itself is ``common.engine.fit``; this module only feeds it and packages what comes out.

Under torchrun (``common.distributed``) rank 0 fills the preprocessing cache before the other ranks read it, every
rank trains (DDP; with ``threshold_from: kfold`` the fold models too), then the other ranks return None and rank 0
calibrates, exports and writes the run directory; only rank 0 prints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from rich.console import Console
from torch.utils.data import DataLoader, Dataset

from common import distributed
from common.calibration import fit_temperature_bias
from common.config import config_snapshot
from common.engine import fit
from common.errors import InputError
from common.export import export_onnx
from common.progress import add_task, make_progress, update_rate
from common.rundir import write_run_json
from common.runtime import pick_device, seed_everything, set_torch_threads
from medical3d import plots
from medical3d.augment import build_augment
from medical3d.config import MedicalConfig, PreprocessConfig, RuntimeConfig
from medical3d.data import (
    Case,
    Prepared,
    PreprocessCache,
    assign_splits,
    data_fingerprint,
    label_order,
    load_cases,
    prepare_cases,
)
from medical3d.models import build_model, load_medicalnet, load_weights
from medical3d.operating import Evidence, OperatingPoint, choose_operating_point
from medical3d.preprocess import set_threads
from medical3d.verdict import DecisionRule, decision_metrics

if TYPE_CHECKING:
    from common.engine import FitResult
    from common.export import ExportReport
    from medical3d.kfold import OutOfFold

# ---------------------------------------------------------------- datasets


class VolumeDataset(Dataset):
    """In-memory preprocessed volumes. Item: (x (1, D, H, W) float32 tensor, y int64 class index)."""

    def __init__(self, arrays: list[np.ndarray], targets: list[int], transform: Callable | None = None) -> None:
        self.arrays = arrays
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.arrays[i]
        if self.transform is not None:
            x = self.transform(x)
        x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(np.asarray(x))
        return x.float().contiguous(), torch.tensor(self.targets[i], dtype=torch.int64)


def load_split_cases(manifest: Path, cfg: MedicalConfig) -> tuple[list[Case], list[str]]:
    """Cases with splits assigned (stratified by seed when the manifest has none) and the class order."""
    cases = assign_splits(load_cases(manifest), cfg.data.split_fractions, cfg.data.seed)
    labels = label_order(cases, cfg.data)
    if cfg.data.positive_label not in labels and len(labels) == 2:
        raise InputError(f"data.positive_label {cfg.data.positive_label!r} is not one of the labels {labels}; "
                         f"set --set data.positive_label=<label>")
    return cases, labels


def prepare_with_progress(cases: list[Case], cfg: PreprocessConfig, cache: PreprocessCache, console: Console,
                          description: str = "preprocess") -> Prepared:
    """``prepare_cases`` with a progress bar (N4 runs on cache misses only)."""
    progress = make_progress(console)
    with progress:
        task = add_task(progress, description, total=len(cases))

        def on_study(case: Case, error: str | None) -> None:
            info = f"[red]failed[/] {case.path.name}" if error else case.path.name
            progress.update(task, advance=1, info=info)
            update_rate(progress, task, "study")

        prepared = prepare_cases(cases, cfg, cache, on_study)
    for f in prepared.failures:
        console.print(f"[yellow]skipped[/] {f['reason']}")
    return prepared


def resolve_cache(cfg: MedicalConfig) -> PreprocessCache:
    return PreprocessCache(cfg.data.cache_dir)


def configure_runtime(cfg: RuntimeConfig) -> torch.device:
    """Seeds, torch and SimpleITK threads, and the device training and eval run on."""
    seed_everything(cfg.seed)
    set_torch_threads(cfg.threads)
    set_threads(cfg.threads)
    return pick_device(cfg.device)


def split_indices(prepared: Prepared, manifest: Path) -> dict[str, list[int]]:
    """Indices of the prepared cases per split; InputError unless train and val both hold studies."""
    by_split: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, c in enumerate(prepared.cases):
        by_split[c.split or "train"].append(i)
    if not by_split["train"] or not by_split["val"]:
        raise InputError(f"{manifest}: need studies in both train and val splits after preprocessing "
                         f"(train {len(by_split['train'])}, val {len(by_split['val'])}, "
                         f"{len(prepared.failures)} failed)")
    return by_split


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    class_counts: list[int]  # training studies per class, for the loss weights


def make_loaders(prepared: Prepared, by_split: dict[str, list[int]], labels: list[str], cfg: MedicalConfig
                 ) -> Loaders:
    """Augmented, seeded-shuffle training loader and a plain validation loader over the prepared volumes."""
    targets = [labels.index(c.label) for c in prepared.cases]

    def subset(split: str) -> tuple[list[np.ndarray], list[int]]:
        return [prepared.arrays[i] for i in by_split[split]], [targets[i] for i in by_split[split]]

    train_x, train_y = subset("train")
    val_x, val_y = subset("val")
    # Each torchrun rank augments its own share with its own stream (rank 0: the single-process one).
    train_ds = VolumeDataset(train_x, train_y, build_augment(cfg.augment, cfg.runtime.seed + distributed.rank(),
                                                               cfg.preprocess.resample.spacing))
    val_ds = VolumeDataset(val_x, val_y)
    gen = torch.Generator().manual_seed(cfg.runtime.seed)
    return Loaders(train=DataLoader(train_ds, batch_size=cfg.train.batch_size, shuffle=True, generator=gen),
                   val=DataLoader(val_ds, batch_size=cfg.train.batch_size, shuffle=False),
                   class_counts=np.bincount(np.asarray(train_y), minlength=len(labels)).tolist())


def build_network(cfg: MedicalConfig, labels: list[str], weights: Path | None, console: Console) -> torch.nn.Module:
    """The configured network, with local pretrained ``weights`` loaded where names and shapes match."""
    model = build_model(cfg.model, len(labels))
    if cfg.model.weights == "medicalnet":
        info = load_medicalnet(model, cfg.model)
        console.print(f"weights: MedicalNet {cfg.model.network} backbone ({info['loaded']} tensors) "
                      f"from {info['path']}")
    weights_info = load_weights(model, weights) if weights is not None else None
    if weights_info:
        console.print(f"weights: {weights_info['loaded']} tensors loaded from {weights}, "
                      f"{len(weights_info['skipped'])} skipped")
    return model


# ---------------------------------------------------------------- decision and packaging


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    decision: DecisionRule
    stopped_reason: str
    best_epoch: int
    failures: list[dict]


@dataclass
class Calibrated:
    rule: DecisionRule
    val_targets: np.ndarray  # (N,) class indices
    val_probs: np.ndarray  # (N, C) calibrated
    val_metrics: dict
    operating: OperatingPoint | None = None  # binary: threshold evidence, support report, trade-off


def positive_label(cfg: MedicalConfig, labels: list[str]) -> str:
    return cfg.data.positive_label if cfg.data.positive_label in labels else labels[-1]


def calibrate(result: FitResult, labels: list[str], cfg: MedicalConfig, oof: OutOfFold | None = None
              ) -> Calibrated:
    """Temperature and bias fitted on validation, then (binary) the threshold for the target sensitivity and the
    REVIEW band, chosen on the evidence (``medical3d.operating``): the calibrated validation scores, or ``oof``'s
    calibrated out-of-fold scores over train+val (``medical3d.kfold``)."""
    val_logits, val_targets = result.val_logits, result.val_targets
    temperature, bias = fit_temperature_bias(val_logits, val_targets)
    v, binary = cfg.verdict, len(labels) == 2
    rule = DecisionRule(labels=labels, positive_label=positive_label(cfg, labels), threshold=0.5,
                        review_band=v.review_band, temperature=temperature, bias=bias,
                        review_error=v.review_error if binary else None)
    val_probs = rule.probabilities(val_logits)
    op = None
    if binary:
        i = rule.positive_index
        ev = oof.evidence() if oof is not None else Evidence(val_targets == i, val_probs[:, i], "val")
        op = choose_operating_point(ev, target=v.target_sensitivity, confidence=v.confidence,
                                    review_band=v.review_band, review_error=v.review_error,
                                    positive_label=rule.positive_label, negative_label=labels[1 - i])
        rule.threshold, rule.review_low, rule.review_high = op.threshold, op.review_low, op.review_high
    return Calibrated(rule, val_targets, val_probs, decision_metrics(val_targets, val_probs, rule), op)


def export_model(model: torch.nn.Module, cfg: MedicalConfig, rule: DecisionRule, out_dir: Path) -> ExportReport:
    """model.onnx with the decision rule and the preprocessing in its metadata (the scorer needs nothing else)."""
    model.eval().cpu()
    size_zyx = tuple(reversed(cfg.preprocess.crop.size))
    meta = {"vertical": "medical3d", "task": "study_classification", **rule.to_dict(),
            "preprocessing": config_snapshot(cfg.preprocess), "network": cfg.model.network, "tta": cfg.model.tta,
            "input_layout": "NCDHW, D/H/W = z/y/x of the preprocessed volume"}
    # rtol 1e-3: the blob filter's closed-form eigenvalues (acos) round differently in onnxruntime; 1e-4 of a
    # logit is far below anything a probability or a verdict can show
    return export_onnx(model, torch.zeros((1, 1, *size_zyx)), out_dir / "model.onnx", meta, rtol=1e-3)


def training_metrics(cal: Calibrated, result: FitResult, cfg: MedicalConfig, by_split: dict[str, list[int]],
                     prepared: Prepared, export: ExportReport, t_start: float, oof: OutOfFold | None = None
                     ) -> dict:
    """metrics.json: validation metrics at the chosen rule; the operating point (threshold evidence, whether it
    supports the target, REVIEW share and errors in REVIEW) and the trade-off on that evidence; with k-fold the
    fold models and every out-of-fold score; the fit's history, splits, failures, ONNX parity."""
    op = cal.operating
    return {
        "val": cal.val_metrics,
        "operating_point": op.report if op else None,
        "tradeoff": op.tradeoff if op else None,
        "kfold": oof.report(prepared) if oof is not None else None,
        "fit": {"best_epoch": result.best_epoch, "best_metric": result.best_metric,
                "monitor": cfg.train.monitor, "stopped_reason": result.stopped_reason,
                "epochs_run": len(result.history), "history": result.history},
        "splits": {k: len(v) for k, v in by_split.items()},
        "failures": prepared.failures,
        "onnx_parity_max_abs_diff": export.max_abs_diff,
        "seconds": round(time.monotonic() - t_start, 1),
    }


def train(manifest: Path, cfg: MedicalConfig, out_dir: Path, *, weights: Path | None = None,
          max_minutes: float | None = None, console: Console | None = None) -> TrainResult | None:
    """Preprocess (cached), train, calibrate, choose the threshold, export ONNX and write the run directory.
    None on a torchrun rank other than 0, after the fit (rank 0 writes the run and returns it)."""
    console = distributed.quiet_unless_main(console)
    t_start = time.monotonic()
    device = configure_runtime(cfg.runtime)
    distributed.init(device)
    cases, labels = load_split_cases(manifest, cfg)
    with distributed.main_first():  # rank 0 fills the cache, the other ranks then read it
        cache = resolve_cache(cfg)
        prepared = prepare_with_progress(cases, cfg.preprocess, cache, console)
    by_split = split_indices(prepared, manifest)
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + max_minutes * 60 if max_minutes else None
    oof = None
    if cfg.verdict.threshold_from == "kfold" and len(labels) == 2:
        import tempfile

        from medical3d.kfold import out_of_fold  # imports this module

        # The fold models' scratch folder: in the run directory on rank 0 only (the others write nothing there).
        work_dir = out_dir if distributed.is_main() else Path(tempfile.gettempdir())
        oof = out_of_fold(prepared, by_split, labels, positive_label(cfg, labels), cfg, work_dir, weights=weights,
                          budget_s=max_minutes * 60 * cfg.verdict.kfold_budget_share if max_minutes else None,
                          device=device, console=console)
        seed_everything(cfg.runtime.seed)  # the final model starts as it would with threshold_from=val
    elif cfg.verdict.threshold_from == "kfold":
        console.print(f"[yellow]verdict.threshold_from=kfold: {len(labels)} classes have no threshold; no folds[/]")
    loaders = make_loaders(prepared, by_split, labels, cfg)
    model = build_network(cfg, labels, weights, console)
    snapshot = config_snapshot(cfg)
    result = fit(model, loaders.train, loaders.val, cfg.train, out_dir / "checkpoints", labels,
                 config_snapshot=snapshot, deadline=deadline, device=device, class_counts=loaders.class_counts,
                 console=console, description="train medical3d")
    if not distributed.is_main():
        return None
    if cfg.model.tta != "none":  # calibrate the logits the scorer will produce: the mean over the TTA views
        from medical3d.evaluate import predict_logits  # imports this module

        result.val_logits = predict_logits(model.eval().cpu(), [prepared.arrays[i] for i in by_split["val"]],
                                           cfg.train.batch_size, cfg.model.tta)
    cal = calibrate(result, labels, cfg, oof)
    export = export_model(model, cfg, cal.rule, out_dir)
    plots.write_all(out_dir / "plots", cal.val_targets, cal.val_probs, cal.rule, title="validation")
    metrics = training_metrics(cal, result, cfg, by_split, prepared, export, t_start, oof)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
    write_run_json(out_dir, vertical="medical3d", labels=labels, config=snapshot,
                   data_fingerprint=data_fingerprint(prepared.cases, cache),
                   metrics={k: metrics[k] for k in ("val", "operating_point", "tradeoff")},
                   positive_label=cal.rule.positive_label, model="model.onnx", checkpoints="checkpoints",
                   manifest=str(manifest), splits=metrics["splits"], failures=prepared.failures,
                   weights=str(weights) if weights else None, stopped_reason=result.stopped_reason,
                   best_epoch=result.best_epoch, cache_dir=str(cache.dir))
    return TrainResult(out_dir, metrics, cal.rule, result.stopped_reason, result.best_epoch, prepared.failures)
