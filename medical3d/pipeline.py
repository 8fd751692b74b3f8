"""Training glue of the medical3d vertical: config, datasets, augmentation, fit, calibration, export.

``train`` turns a manifest into a run directory::

    runs/<name>/run.json  model.onnx  checkpoints/{best,last}.pt  metrics.json  plots/{roc,confusion,calibration}.png

The loop itself is ``common.engine.fit``; this module only feeds it and packages what comes out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from rich.console import Console
from torch.utils.data import DataLoader, Dataset

from common.calibration import fit_temperature_bias
from common.config import StrictModel, config_snapshot, load_config
from common.engine import TrainConfig, fit
from common.errors import InputError
from common.metrics import binary_rates, classification_metrics, threshold_for_recall
from common.progress import add_task, make_progress, update_rate
from common.runtime import pick_device, seed_everything, set_torch_threads
from medical3d.config import (
    DEFAULT_CONFIG,
    AugmentConfig,
    DataConfig,
    ModelConfig,
    PreprocessConfig,
    RuntimeConfig,
    VerdictConfig,
)
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
from medical3d.verdict import DecisionRule


class MedicalConfig(StrictModel):
    """The whole medical3d config (configs/medical3d/default.yaml)."""

    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(
        epochs=60, batch_size=4, t0=20, min_lr=1e-5, monitor="auroc", patience=20))
    verdict: VerdictConfig = Field(default_factory=VerdictConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)


def load_medical_config(path: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> MedicalConfig:
    return load_config(MedicalConfig, path, overrides, default_path=DEFAULT_CONFIG)


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


def build_augment(cfg: AugmentConfig, seed: int) -> Callable | None:
    """MONAI array transforms for (1, D, H, W) volumes: flips, small affine, bias field, intensity, noise."""
    if not cfg.enabled:
        return None
    from monai.transforms import (
        Compose,
        RandAffine,
        RandBiasField,
        RandFlip,
        RandGaussianNoise,
        RandScaleIntensity,
        RandShiftIntensity,
    )

    rad = float(np.radians(cfg.rotate_deg))
    transforms = [RandFlip(prob=cfg.flip_prob, spatial_axis=axis) for axis in (0, 1, 2)]
    transforms += [
        RandAffine(prob=cfg.affine_prob, rotate_range=(rad, rad, rad), scale_range=(cfg.scale,) * 3,
                   translate_range=(cfg.translate_vox,) * 3, padding_mode="border", mode="bilinear"),
        RandBiasField(prob=cfg.bias_field_prob, coeff_range=(0.0, cfg.bias_field_coeff)),
        RandScaleIntensity(factors=cfg.intensity_scale, prob=cfg.intensity_prob),
        RandShiftIntensity(offsets=cfg.intensity_shift, prob=cfg.intensity_prob),
        RandGaussianNoise(prob=cfg.noise_prob, std=cfg.noise_std),
    ]
    compose = Compose(transforms)
    compose.set_random_state(seed=seed)
    return compose


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
    from medical3d.preprocess import set_threads

    seed_everything(cfg.seed)
    set_torch_threads(cfg.threads)
    set_threads(cfg.threads)
    return pick_device(cfg.device)


# ---------------------------------------------------------------- training


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    decision: DecisionRule
    stopped_reason: str
    best_epoch: int
    failures: list[dict]


def choose_threshold(y_pos: np.ndarray, p_pos: np.ndarray, target_sensitivity: float) -> float:
    """Threshold on calibrated p(positive) that reaches the target sensitivity on validation, placed halfway (in
    log-odds) between the weakest positive it must catch and the next lower validation score.

    The highest threshold that reaches the target sits exactly on a validation positive, so a new study like it
    falls below it about half the time; the midpoint keeps the margin the validation data allows.
    """
    if not y_pos.any():
        return 0.5
    p = np.clip(np.asarray(p_pos, dtype=np.float64), 1e-6, 1 - 1e-6)
    t = float(np.clip(threshold_for_recall(y_pos, p, target_sensitivity), 1e-6, 1 - 1e-6))
    below = p[p < t]
    if len(below):
        logit = lambda v: np.log(v / (1 - v))  # noqa: E731
        t = float(1 / (1 + np.exp(-(logit(t) + logit(below.max())) / 2)))
    return float(min(max(t, 0.0), 1.0))


def review_edges(y_pos: np.ndarray, p_pos: np.ndarray, threshold: float, band: float) -> tuple[float, float]:
    """REVIEW band ``threshold -/+ band`` narrowed to what validation shows: the lower edge is raised to the highest
    validation negative below the threshold, the upper edge lowered to the lowest validation positive at or above
    it. A study scoring like the validation normals is not uncertain just because the model gives all normals one
    score that happens to lie within ``band`` of the threshold (seen: every normal at p = 0.19 with the threshold
    at 0.27 went to REVIEW). Studies between the two groups, where validation has no evidence, stay REVIEW."""
    y = np.asarray(y_pos, bool)
    p = np.asarray(p_pos, np.float64)
    low, high = threshold - band, threshold + band
    neg_below = p[~y & (p < threshold)]
    pos_above = p[y & (p >= threshold)]
    if len(neg_below):
        low = max(low, float(np.nextafter(neg_below.max(), np.inf)))  # that negative itself stays negative
    if len(pos_above):
        high = min(high, float(pos_above.min()))
    return float(min(low, threshold)), float(max(high, threshold))


def decision_metrics(y: np.ndarray, probs: np.ndarray, rule: DecisionRule) -> dict:
    """AUROC, ECE, per-class metrics (argmax) plus accuracy, sensitivity, specificity and the confusion matrix
    at the run's threshold, and how many studies fall in the REVIEW band."""
    labels = rule.labels
    m = classification_metrics(y, probs, labels)
    predicted = rule.predicted_labels(probs)
    pred_idx = np.array([labels.index(p) for p in predicted], dtype=np.int64)
    verdicts = rule.verdicts(probs)
    out = {
        "n": len(y),
        "auroc": m["auroc"],
        "ece": m["ece"],
        "accuracy": float((pred_idx == y).mean()) if len(y) else None,
        "balanced_accuracy_argmax": m["balanced_accuracy"],
        "per_class": m["per_class"],
        "threshold": rule.threshold,
        "temperature": rule.temperature,
        "review": int(sum(v == "REVIEW" for v in verdicts)),
    }
    cm = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(y, pred_idx, strict=True):
        cm[int(t), int(p)] += 1
    out["confusion_matrix"] = cm.tolist()
    if len(labels) == 2:
        rates = binary_rates(y == rule.positive_index, pred_idx == rule.positive_index)
        out.update({"sensitivity": rates["sensitivity"], "specificity": rates["specificity"],
                    "tp": rates["tp"], "fp": rates["fp"], "tn": rates["tn"], "fn": rates["fn"]})
    return out


def train(manifest: Path, cfg: MedicalConfig, out_dir: Path, *, weights: Path | None = None,
          max_minutes: float | None = None, console: Console | None = None) -> TrainResult:
    """Preprocess (cached), train, calibrate, choose the threshold, export ONNX and write the run directory."""
    from common.export import export_onnx
    from common.rundir import write_run_json
    from medical3d import plots
    from medical3d.models import build_model, load_weights

    console = console or Console()
    t_start = time.monotonic()
    device = configure_runtime(cfg.runtime)
    cases, labels = load_split_cases(manifest, cfg)
    cache = resolve_cache(cfg)
    prepared = prepare_with_progress(cases, cfg.preprocess, cache, console)
    by_split: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, c in enumerate(prepared.cases):
        by_split[c.split or "train"].append(i)
    if not by_split["train"] or not by_split["val"]:
        raise InputError(f"{manifest}: need studies in both train and val splits after preprocessing "
                         f"(train {len(by_split['train'])}, val {len(by_split['val'])}, "
                         f"{len(prepared.failures)} failed)")
    targets = [labels.index(c.label) for c in prepared.cases]

    def subset(split: str) -> tuple[list[np.ndarray], list[int]]:
        return [prepared.arrays[i] for i in by_split[split]], [targets[i] for i in by_split[split]]

    train_x, train_y = subset("train")
    val_x, val_y = subset("val")
    train_ds = VolumeDataset(train_x, train_y, build_augment(cfg.augment, cfg.runtime.seed))
    val_ds = VolumeDataset(val_x, val_y)
    gen = torch.Generator().manual_seed(cfg.runtime.seed)
    train_loader = DataLoader(train_ds, batch_size=cfg.train.batch_size, shuffle=True, generator=gen)
    val_loader = DataLoader(val_ds, batch_size=cfg.train.batch_size, shuffle=False)

    model = build_model(cfg.model, len(labels))
    weights_info = load_weights(model, weights) if weights is not None else None
    if weights_info:
        console.print(f"weights: {weights_info['loaded']} tensors loaded from {weights}, "
                      f"{len(weights_info['skipped'])} skipped")
    out_dir.mkdir(parents=True, exist_ok=True)
    snapshot = config_snapshot(cfg)
    deadline = time.monotonic() + max_minutes * 60 if max_minutes else None
    class_counts = np.bincount(np.asarray(train_y), minlength=len(labels)).tolist()
    result = fit(model, train_loader, val_loader, cfg.train, out_dir / "checkpoints", labels,
                 config_snapshot=snapshot, deadline=deadline, device=device, class_counts=class_counts,
                 console=console, description="train medical3d")

    val_logits, val_targets = result.val_logits, result.val_targets
    temperature, bias = fit_temperature_bias(val_logits, val_targets)
    positive = cfg.data.positive_label if cfg.data.positive_label in labels else labels[-1]
    rule = DecisionRule(labels=labels, positive_label=positive, threshold=0.5,
                        review_band=cfg.verdict.review_band, temperature=temperature, bias=bias)
    val_probs = rule.probabilities(val_logits)
    if len(labels) == 2:
        rule.threshold = choose_threshold(val_targets == rule.positive_index, val_probs[:, rule.positive_index],
                                          cfg.verdict.target_sensitivity)
        rule.review_low, rule.review_high = review_edges(val_targets == rule.positive_index,
                                                         val_probs[:, rule.positive_index], rule.threshold,
                                                         rule.review_band)
    val_metrics = decision_metrics(val_targets, val_probs, rule)

    model.eval().cpu()
    size_zyx = tuple(reversed(cfg.preprocess.crop.size))
    meta = {"vertical": "medical3d", "task": "study_classification", **rule.to_dict(),
            "preprocessing": config_snapshot(cfg.preprocess), "network": cfg.model.network,
            "input_layout": "NCDHW, D/H/W = z/y/x of the preprocessed volume"}
    # rtol 1e-3: the blob filter's closed-form eigenvalues (acos) round differently in onnxruntime; 1e-4 of a
    # logit is far below anything a probability or a verdict can show
    export = export_onnx(model, torch.zeros((1, 1, *size_zyx)), out_dir / "model.onnx", meta, rtol=1e-3)

    plots_dir = out_dir / "plots"
    plots.write_all(plots_dir, val_targets, val_probs, rule, title="validation")
    metrics = {
        "val": val_metrics,
        "fit": {"best_epoch": result.best_epoch, "best_metric": result.best_metric,
                "monitor": cfg.train.monitor, "stopped_reason": result.stopped_reason,
                "epochs_run": len(result.history), "history": result.history},
        "splits": {k: len(v) for k, v in by_split.items()},
        "failures": prepared.failures,
        "onnx_parity_max_abs_diff": export.max_abs_diff,
        "seconds": round(time.monotonic() - t_start, 1),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
    write_run_json(out_dir, vertical="medical3d", labels=labels, config=snapshot,
                   data_fingerprint=data_fingerprint(prepared.cases, cache), metrics={"val": val_metrics},
                   decision=rule.to_dict(), model="model.onnx", checkpoints="checkpoints",
                   manifest=str(manifest), splits=metrics["splits"], failures=prepared.failures,
                   weights=str(weights) if weights else None, stopped_reason=result.stopped_reason,
                   best_epoch=result.best_epoch, cache_dir=str(cache.dir))
    return TrainResult(out_dir, metrics, rule, result.stopped_reason, result.best_epoch, prepared.failures)
