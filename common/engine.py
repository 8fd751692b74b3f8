"""One supervised classification training loop, used by the 2D crop classifier and the 3D study CNN.

``train_one_epoch`` and ``evaluate`` are the pieces; ``fit`` runs them with AdamW/SGD, cosine annealing with
warm restarts (with a deadline, the first cycle is fitted to the time left), class-weighted cross-entropy or
focal loss, gradient clipping, mixed precision on CUDA, early stopping on a validation metric, optional staged
unfreezing, best/last checkpoints and resume.

Loaders yield ``(x, y)``: ``x`` a float tensor (B, C, H, W) or (B, C, D, H, W), ``y`` (B,) int64 class indices.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from rich.console import Console
from torch import nn

from common.config import StrictModel
from common.metrics import classification_metrics, softmax
from common.progress import add_task, make_progress, update_rate

Monitor = Literal["balanced_accuracy", "accuracy", "auroc", "loss"]


class StageConfig(StrictModel):
    """One stage of staged unfreezing: train only the parameters whose names start with ``trainable``."""

    epochs: int = Field(ge=1)
    lr: float = Field(gt=0)
    trainable: list[str] = Field(default_factory=lambda: ["*"], min_length=1)  # "*" = every parameter


class TrainConfig(StrictModel):
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    scheduler: Literal["cosine_warm_restarts", "none"] = "cosine_warm_restarts"
    t0: int = Field(default=10, ge=1)  # epochs in the first cosine cycle
    t_mult: int = Field(default=1, ge=1)
    min_lr: float = Field(default=1e-6, ge=0)
    # With a deadline, shorten the first cosine cycle (re-estimated after every epoch from the measured epoch time)
    # so the learning rate has annealed when time runs out, instead of stopping mid-cycle at a high rate.
    fit_cycle_to_deadline: bool = True
    loss: Literal["ce", "focal"] = "ce"
    class_weighting: Literal["none", "balanced"] = "balanced"
    focal_gamma: float = Field(default=2.0, ge=0)
    focal_alpha: float | None = Field(default=None, gt=0, lt=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    amp: bool = True  # used only where the device supports it (CUDA)
    # bf16 autocast for training on a CPU that computes bf16 natively (AMX / AVX512-BF16): a ResNet18 step on 64
    # 64-px crops 0.36 -> 0.29 s there. Ignored on other CPUs, where bf16 is emulated and slower than fp32.
    # Evaluation, weights and optimizer state stay fp32.
    cpu_bf16: bool = False
    monitor: Monitor = "balanced_accuracy"
    patience: int = Field(default=5, ge=1)
    stages: list[StageConfig] | None = None  # staged unfreezing; when set, it replaces epochs/lr

    @model_validator(mode="after")
    def _stages_nonempty(self) -> TrainConfig:
        if self.stages is not None and not self.stages:
            raise ValueError("stages: give at least one stage or leave it out")
        return self

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages) if self.stages else self.epochs


@dataclass
class EvalOutput:
    logits: np.ndarray  # (N, C) float32
    targets: np.ndarray  # (N,) int64
    loss: float
    metrics: dict


@dataclass
class FitResult:
    best_path: Path
    last_path: Path
    best_epoch: int
    best_metric: float
    history: list[dict] = field(default_factory=list)
    stopped_reason: str = "completed"
    val_logits: np.ndarray | None = None
    val_targets: np.ndarray | None = None


# ---------------------------------------------------------------- losses


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): ``-alpha_t (1 - p_t)^gamma log p_t``, optionally class-weighted.

    ``alpha`` (binary convention) weighs class 1 by alpha and class 0 by 1 - alpha; with more classes it is a
    plain scalar factor. ``weight`` (C,) are per-class weights as in cross-entropy.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, weight=self.weight, reduction="none", label_smoothing=self.label_smoothing)
        with torch.no_grad():
            pt = torch.softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = (1.0 - pt).pow(self.gamma) * ce
        if self.alpha is not None:
            if logits.shape[1] == 2:
                loss = torch.where(target == 1, self.alpha * loss, (1.0 - self.alpha) * loss)
            else:
                loss = self.alpha * loss
        if self.weight is not None:
            return loss.sum() / self.weight[target].sum().clamp_min(1e-12)
        return loss.mean()


def balanced_class_weights(class_counts: Iterable[int]) -> torch.Tensor:
    """Weights ``n / (C * count_c)`` (sklearn's 'balanced'); classes with no samples get weight 0."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float32)
    n, c = counts.sum(), len(counts)
    w = torch.where(counts > 0, n / (c * counts.clamp_min(1)), torch.zeros_like(counts))
    return w


def build_loss(cfg: TrainConfig, class_counts: list[int] | None) -> nn.Module:
    weight = None
    if cfg.class_weighting == "balanced" and class_counts is not None:
        weight = balanced_class_weights(class_counts)
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma, cfg.focal_alpha, weight, cfg.label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


# ---------------------------------------------------------------- optimisation plumbing


def _set_trainable(model: nn.Module, prefixes: list[str]) -> int:
    """Freeze every parameter except those whose name starts with one of ``prefixes``; returns trainable count."""
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad = "*" in prefixes or any(name.startswith(pre) for pre in prefixes)
        n += p.numel() if p.requires_grad else 0
    if n == 0:
        raise ValueError(f"stage trainable={prefixes} matches no parameter of {type(model).__name__}")
    return n


def _build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def _build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    if cfg.scheduler == "none":
        return None
    # Stepped once per batch with a fractional epoch, so T_0 is in epochs.
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=cfg.t0, T_mult=cfg.t_mult,
                                                                eta_min=cfg.min_lr)


def fit_cycle_to_deadline(scheduler, epochs_done: int, epoch_seconds: float, seconds_left: float,
                          epochs_planned: int) -> int | None:
    """Fit ``scheduler``'s first cosine cycle (CosineAnnealingWarmRestarts stepped with fractional epochs,
    counted from the start of the stage) to a deadline; returns the cycle length in epochs, or None when the
    first cycle as configured is over (warm restarts then proceed as configured).

    Called after every epoch with the measured epoch time: the cycle ends with the epoch the deadline falls in
    (cut short at the deadline, near the minimum learning rate), never before the next epoch, and never later
    than the configured ``T_0`` or the stage's planned epochs."""
    if scheduler is None:
        return None
    configured = getattr(scheduler, "configured_T_0", scheduler.T_0)
    if epochs_done < 1 or epochs_done >= configured:
        return None
    fit = epochs_done + max(1, math.ceil(seconds_left / max(epoch_seconds, 1e-9)))
    cycle = max(epochs_done + 1, min(configured, fit, epochs_planned))
    scheduler.configured_T_0 = configured  # kept in the scheduler's state_dict, so a resume sees it
    scheduler.T_0 = scheduler.T_i = cycle
    # Re-set the rate for where we are on the new cycle: the last step of an epoch that ended a cycle exactly
    # left the rate at its restart value, which the next epoch's first batch would otherwise use.
    scheduler.step(epochs_done)
    return cycle


def _epoch_plan(cfg: TrainConfig) -> list[tuple[int, float, list[str]]]:
    """(stage index, lr, trainable prefixes) for every epoch."""
    if not cfg.stages:
        return [(0, cfg.lr, ["*"])] * cfg.epochs
    plan = []
    for i, st in enumerate(cfg.stages):
        plan += [(i, st.lr, st.trainable)] * st.epochs
    return plan


def _use_amp(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.amp and device.type == "cuda"


def _cpu_autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    from common.runtime import cpu_bf16_native

    return torch.bfloat16 if cfg.cpu_bf16 and device.type == "cpu" and cpu_bf16_native() else None


def _score(metrics: dict, loss: float, monitor: Monitor) -> float:
    """Monitor value where higher is better (loss is negated); NaN-safe."""
    if monitor == "loss":
        return -loss
    v = metrics.get(monitor)
    return float("-inf") if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def default_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


# ---------------------------------------------------------------- the loop


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    scheduler=None,
    epoch: int = 0,
    grad_clip: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
    on_batch=None,
    deadline: float | None = None,
) -> dict:
    """One pass over ``loader``. Returns {"loss": mean train loss, "batches": n, "interrupted": bool}.

    ``scheduler`` (CosineAnnealingWarmRestarts) is stepped per batch with the fractional epoch.
    ``deadline`` (time.monotonic) ends the epoch early, after the current batch.
    """
    model.train()
    n_batches = len(loader) if hasattr(loader, "__len__") else 0
    total, count, interrupted = 0.0, 0, False
    for i, (x, y) in enumerate(loader):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True).long()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=autocast_dtype,
                            enabled=scaler is not None or autocast_dtype is not None):
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}, batch {i + 1}; "
                                     "lower the learning rate or check the inputs for NaN")
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step(epoch + (i + 1) / max(n_batches, 1))
        total += float(loss.item()) * len(y)
        count += len(y)
        if on_batch is not None:
            on_batch(float(loss.item()))
        if deadline is not None and time.monotonic() >= deadline:
            interrupted = True
            break
    return {"loss": total / max(count, 1), "batches": i + 1 if count else 0, "interrupted": interrupted}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | None = None,
    loss_fn: nn.Module | None = None,
    labels: list[str] | None = None,
) -> EvalOutput:
    """Run ``model`` over ``loader``; returns logits (N, C), targets (N,), mean loss and classification metrics."""
    device = device or default_device(model)
    model.eval()
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    logits_all, targets_all, total = [], [], 0.0
    for x, y in loader:
        x = x.to(device)
        y = y.to(device).long()
        logits = model(x).float()
        total += float(loss_fn(logits, y).item()) * len(y)
        logits_all.append(logits.cpu().numpy())
        targets_all.append(y.cpu().numpy())
    if not logits_all:
        raise ValueError("evaluate: the validation loader is empty")
    logits_np = np.concatenate(logits_all).astype(np.float32)
    targets_np = np.concatenate(targets_all).astype(np.int64)
    names = labels or [str(i) for i in range(logits_np.shape[1])]
    metrics = classification_metrics(targets_np, softmax(logits_np), names)
    loss = total / len(targets_np)
    metrics["loss"] = loss
    return EvalOutput(logits_np, targets_np, loss, metrics)


def _plain(value: Any) -> Any:
    """Tensors stay; numpy scalars and arrays become Python numbers and lists, so ``weights_only`` loading (which
    unpickles nothing but tensors and plain containers) can read the checkpoint back."""
    if isinstance(value, torch.Tensor) or value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically (tmp + rename) so a crash mid-save never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(_plain(payload), tmp)
    tmp.replace(path)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by ``fit`` (weights, optimizer, scheduler, epoch, labels, config, history).

    ``weights_only``: tensors and plain containers only; a file that would construct any other object (and so
    could run code while being unpickled) is refused, never executed."""
    from common.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or unsafe file
        raise InputError(f"{path}: not a readable checkpoint ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    cfg: TrainConfig,
    out_dir: Path | str,
    labels: list[str],
    *,
    config_snapshot: dict | None = None,
    resume: bool = False,
    deadline: float | None = None,
    device: torch.device | None = None,
    class_counts: list[int] | None = None,
    console: Console | None = None,
    description: str = "train",
) -> FitResult:
    """Train ``model``; keep ``out_dir/best.pt`` (best monitored validation score) and ``out_dir/last.pt``.

    ``resume`` continues from ``last.pt`` (weights, optimizer, scheduler, history, early-stopping state).
    ``deadline`` is a ``time.monotonic()`` value: training stops cleanly after the batch that passes it, and
    that partial epoch is still validated and checkpointed. On return the model holds the best weights.
    ``class_counts`` feeds class weighting; without it the dataset's ``targets`` attribute is used if present.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    console = console or Console()
    device = device or default_device(model)
    model.to(device)
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"

    if class_counts is None:
        targets = getattr(getattr(train_loader, "dataset", None), "targets", None)
        if targets is not None:
            class_counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=len(labels)).tolist()
    loss_fn = build_loss(cfg, class_counts).to(device)
    eval_loss_fn = nn.CrossEntropyLoss()
    plan = _epoch_plan(cfg)
    steps = len(train_loader) if hasattr(train_loader, "__len__") else 1
    scaler = torch.amp.GradScaler("cuda") if _use_amp(cfg, device) else None
    autocast_dtype = _cpu_autocast_dtype(cfg, device)

    start_epoch, best_score, best_epoch, bad_epochs = 0, float("-inf"), -1, 0
    best_loss = float("inf")  # breaks ties of a saturating metric (AUROC 1.0 on a small validation split)
    history: list[dict] = []
    state = None
    if resume and last_path.is_file():
        state = load_checkpoint(last_path, map_location=device)
        model.load_state_dict(state["model"])
        start_epoch = int(state["epoch"]) + 1
        history = list(state.get("history", []))
        best_score = float(state.get("best_score", float("-inf")))
        best_loss = float(state.get("best_loss", float("inf")))
        best_epoch = int(state.get("best_epoch", -1))
        bad_epochs = int(state.get("bad_epochs", 0))
        console.print(f"[bold]resume[/] from {last_path} at epoch {start_epoch + 1}/{len(plan)}")

    optimizer = scheduler = None
    current_stage = -1
    stopped = "completed"
    progress = make_progress(console)
    with progress:
        epoch_task = add_task(progress, description, total=len(plan), info="")
        progress.update(epoch_task, completed=start_epoch)
        for epoch in range(start_epoch, len(plan)):
            stage, lr, trainable = plan[epoch]
            if stage != current_stage:
                _set_trainable(model, trainable)
                optimizer = _build_optimizer(model, cfg, lr)
                scheduler = _build_scheduler(optimizer, cfg, steps)
                if state is not None and state.get("stage") == stage and state.get("optimizer"):
                    optimizer.load_state_dict(state["optimizer"])
                    if scheduler is not None and state.get("scheduler"):
                        scheduler.load_state_dict(state["scheduler"])
                current_stage = stage
                stage_clock, stage_clock_epochs = time.monotonic(), 0
            # The scheduler counts epochs from the start of its stage.
            stage_epoch = epoch - next(i for i, p in enumerate(plan) if p[0] == stage)
            batch_task = add_task(progress, f"  epoch {epoch + 1}/{len(plan)}", total=steps)

            def on_batch(loss: float, _t=batch_task) -> None:
                progress.update(_t, advance=1, info=f"loss {loss:.4f}")
                update_rate(progress, _t, "batch")

            tr = train_one_epoch(model, train_loader, loss_fn, optimizer, device=device, scheduler=scheduler,
                                 epoch=stage_epoch, grad_clip=cfg.grad_clip, scaler=scaler,
                                 autocast_dtype=autocast_dtype, on_batch=on_batch,
                                 deadline=deadline)
            progress.remove_task(batch_task)
            ev = evaluate(model, val_loader, device, eval_loss_fn, labels)
            stage_clock_epochs += 1
            if deadline is not None and cfg.fit_cycle_to_deadline and cfg.scheduler == "cosine_warm_restarts":
                now = time.monotonic()
                fit_cycle_to_deadline(scheduler, stage_epoch + 1, (now - stage_clock) / stage_clock_epochs,
                                      deadline - now, sum(1 for p in plan if p[0] == stage))
            score = _score(ev.metrics, ev.loss, cfg.monitor)
            row = {"epoch": epoch + 1, "stage": stage, "lr": optimizer.param_groups[0]["lr"],
                   "train_loss": tr["loss"], "val_loss": ev.loss, "val_accuracy": ev.metrics["accuracy"],
                   "val_balanced_accuracy": ev.metrics["balanced_accuracy"], "val_auroc": ev.metrics["auroc"],
                   "partial": tr["interrupted"]}
            history.append(row)
            # A tie on the monitored metric goes to the lower validation loss: with a few validation cases the
            # metric saturates or moves in coarse steps, and the first epoch to reach a value is rarely the best.
            improved = score > best_score or (score == best_score and cfg.monitor != "loss" and ev.loss < best_loss)
            if improved:
                best_score, best_loss, best_epoch, bad_epochs = score, ev.loss, epoch + 1, 0
            else:
                bad_epochs += 1
            payload = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "epoch": epoch, "stage": stage, "labels": list(labels), "config": config_snapshot or {},
                "train_config": cfg.model_dump(mode="json"), "history": history, "best_score": best_score,
                "best_loss": best_loss,
                "best_epoch": best_epoch, "bad_epochs": bad_epochs, "monitor": cfg.monitor,
            }
            if improved:
                save_checkpoint(best_path, payload)
            save_checkpoint(last_path, payload)
            shown = ev.loss if cfg.monitor == "loss" else ev.metrics.get(cfg.monitor)
            progress.update(epoch_task, advance=1,
                            info=f"val {cfg.monitor} {shown if shown is None else round(shown, 4)} "
                                 f"(best {best_epoch})")
            update_rate(progress, epoch_task, "epoch")
            if tr["interrupted"]:
                stopped = "time budget reached"
                break
            if bad_epochs >= cfg.patience:
                stopped = f"early stop: no {cfg.monitor} gain in {cfg.patience} epochs"
                break
            if deadline is not None and time.monotonic() >= deadline:
                stopped = "time budget reached"
                break

    if not best_path.is_file():
        # Resumed a run that had already finished: last.pt is all there is.
        raise RuntimeError(f"{out_dir}: no best checkpoint written (nothing left to train?)")
    best = load_checkpoint(best_path, map_location=device)
    model.load_state_dict(best["model"])
    for p in model.parameters():
        p.requires_grad = True
    final = evaluate(model, val_loader, device, eval_loss_fn, labels)
    return FitResult(best_path, last_path, best_epoch, best_score if cfg.monitor != "loss" else -best_score,
                     history, stopped, final.logits, final.targets)
