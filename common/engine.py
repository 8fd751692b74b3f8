"""One supervised classification training loop, used by the 2D crop classifier and the 3D study CNN.

``fit`` runs the pieces in ``common.epoch`` (``train_one_epoch``, ``evaluate``) with AdamW/SGD, cosine annealing
with warm restarts (with a deadline, the first cycle is fitted to the time left), class-weighted cross-entropy or
focal loss, gradient clipping, mixed precision on CUDA, early stopping on a validation metric, optional staged
unfreezing, best/last checkpoints and resume. Losses live in ``common.losses``, the optimizer and schedule in
``common.optim``, checkpoint files in ``common.checkpoints``.

Under ``torchrun`` (``common.distributed``) every rank runs ``fit``: DistributedDataParallel on a
``DistributedSampler`` shard of the training loader (``batch_size`` is per process). Rank 0 alone validates, decides
(best epoch, early stop, the cycle fitted to the deadline; broadcast to the others), writes checkpoints and prints;
a deadline one rank passes stops all after that batch. BatchNorm statistics follow rank 0's (DDP broadcasts its
buffers each step; at the end its best weights and buffers are copied into every rank).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from common import distributed
from common.checkpoints import load_checkpoint, save_checkpoint
from common.config import Monitor, TrainConfig
from common.epoch import EvalOutput, default_device, evaluate, train_one_epoch
from common.losses import build_loss
from common.optim import build_optimizer, build_scheduler, epoch_plan, fit_cycle_to_deadline, set_trainable
from common.progress import add_task, make_progress, update_rate


@dataclass
class FitResult:
    best_path: Path
    last_path: Path
    best_epoch: int
    best_metric: float
    history: list[dict] = field(default_factory=list)
    stopped_reason: str = "completed"
    val_logits: np.ndarray | None = None  # None on torchrun ranks other than 0 (rank 0 validates)
    val_targets: np.ndarray | None = None


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


# ---------------------------------------------------------------- fit: what it carries between its steps


@dataclass
class _Run:
    """What one ``fit`` call trains with; fixed for the whole call."""

    model: nn.Module
    train_loader: Iterable
    val_loader: Iterable
    cfg: TrainConfig
    labels: list[str]
    device: torch.device
    out_dir: Path
    config_snapshot: dict | None
    deadline: float | None
    loss_fn: nn.Module
    eval_loss_fn: nn.Module
    plan: list[tuple[int, float, list[str]]]  # (stage, lr, trainable prefixes) per epoch
    steps: int  # batches per epoch
    scaler: torch.amp.GradScaler | None
    autocast_dtype: torch.dtype | None

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"


@dataclass
class _Tracker:
    """History and early-stopping state: carried from epoch to epoch and stored in every checkpoint."""

    start_epoch: int = 0
    best_score: float = float("-inf")
    best_loss: float = float("inf")  # breaks ties of a saturating metric (AUROC 1.0 on a small validation split)
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    resumed: dict | None = None  # last.pt of a resumed run: the optimizer and scheduler state of its stage


@dataclass
class _Stage:
    """The stage being trained: its optimizer and schedule, and a clock for fitting the cycle to a deadline."""

    index: int = -1
    net: nn.Module | None = None  # what trains: the model, or its DistributedDataParallel wrapper under torchrun
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    first_epoch: int = 0  # the scheduler counts epochs from the start of its stage
    planned: int = 0  # epochs in this stage
    clock: float = 0.0
    epochs_timed: int = 0


# ---------------------------------------------------------------- fit


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

    Under torchrun ``train_loader`` (a DataLoader with a random or sequential sampler) is rebuilt around a
    ``DistributedSampler``; only rank 0 writes ``out_dir`` or prints, and the other ranks return a result without
    validation logits.
    """
    console = (console or Console()) if distributed.is_main() else Console(quiet=True)
    run = _set_up(model, train_loader, val_loader, cfg, Path(out_dir), labels, device=device,
                  class_counts=class_counts, config_snapshot=config_snapshot, deadline=deadline)
    tracker = _resume(run, console, resume)
    stopped = _train_epochs(run, tracker, console, description)
    return _finish(run, tracker, stopped)


def _set_up(model: nn.Module, train_loader: Iterable, val_loader: Iterable, cfg: TrainConfig, out_dir: Path,
            labels: list[str], *, device: torch.device | None, class_counts: list[int] | None,
            config_snapshot: dict | None, deadline: float | None) -> _Run:
    """Output folder, device, loss, epoch plan and mixed precision for one ``fit`` call."""
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    device = device or default_device(model)
    model.to(device)
    distributed.init(device)  # under torchrun: joins the job (once), whoever called fit
    if class_counts is None:
        class_counts = _dataset_class_counts(train_loader, len(labels))
    if distributed.active():
        train_loader = distributed.shard_loader(train_loader)
    return _Run(
        model=model, train_loader=train_loader, val_loader=val_loader, cfg=cfg, labels=labels, device=device,
        out_dir=out_dir, config_snapshot=config_snapshot, deadline=deadline,
        loss_fn=build_loss(cfg, class_counts).to(device), eval_loss_fn=nn.CrossEntropyLoss(),
        plan=epoch_plan(cfg), steps=len(train_loader) if hasattr(train_loader, "__len__") else 1,
        scaler=torch.amp.GradScaler("cuda") if _use_amp(cfg, device) else None,
        autocast_dtype=_cpu_autocast_dtype(cfg, device),
    )


def _dataset_class_counts(loader: Iterable, n_classes: int) -> list[int] | None:
    """Samples per class from the loader's dataset ``targets`` attribute; None when it has none."""
    targets = getattr(getattr(loader, "dataset", None), "targets", None)
    if targets is None:
        return None
    return np.bincount(np.asarray(targets, dtype=np.int64), minlength=n_classes).tolist()


def _resume(run: _Run, console: Console, resume: bool) -> _Tracker:
    """Weights, history and early-stopping state from ``last.pt`` when ``resume`` asks and it exists (a fresh
    tracker otherwise); its optimizer state waits for its stage. Under torchrun rank 0 reads the file and sends
    what it holds to the others."""
    state = None
    if distributed.is_main() and resume and run.last_path.is_file():
        # CPU tensors when they travel to other ranks (load_state_dict moves them to each rank's device)
        state = load_checkpoint(run.last_path, map_location="cpu" if distributed.active() else run.device)
    state = distributed.broadcast(state)
    if state is None:
        return _Tracker()
    run.model.load_state_dict(state["model"])
    tracker = _Tracker(
        start_epoch=int(state["epoch"]) + 1,
        history=list(state.get("history", [])),
        best_score=float(state.get("best_score", float("-inf"))),
        best_loss=float(state.get("best_loss", float("inf"))),
        best_epoch=int(state.get("best_epoch", -1)),
        bad_epochs=int(state.get("bad_epochs", 0)),
        resumed=state,
    )
    console.print(f"[bold]resume[/] from {run.last_path} at epoch {tracker.start_epoch + 1}/{len(run.plan)}")
    return tracker


def _train_epochs(run: _Run, tracker: _Tracker, console: Console, description: str) -> str:
    """Train, validate and checkpoint epoch by epoch until the plan ends or a stop rule fires; returns why.
    Under torchrun rank 0's fitted cycle and stop travel to the other ranks: their schedules and loops keep step."""
    stage = _Stage()
    with make_progress(console) as progress:
        epoch_task = add_task(progress, description, total=len(run.plan), info="")
        progress.update(epoch_task, completed=tracker.start_epoch)
        for epoch in range(tracker.start_epoch, len(run.plan)):
            stage = _enter_stage(run, tracker, stage, epoch)
            tr = _train_epoch(run, stage, epoch, progress)
            cycle, stopped = None, None
            if distributed.is_main():
                ev = evaluate(run.model, run.val_loader, run.device, run.eval_loss_fn, run.labels)
                cycle = _fit_cycle_to_time_left(run, stage, epoch)
                improved = _record_epoch(run, tracker, stage, epoch, tr, ev)
                _save_epoch(run, tracker, stage, epoch, improved)
                _show_epoch(progress, epoch_task, run.cfg, ev, tracker.best_epoch)
                stopped = _stop_reason(run, tracker, stage, epoch, tr)
            if distributed.active():
                cycle, stopped = distributed.broadcast((cycle, stopped))
                if not distributed.is_main() and cycle is not None:
                    fit_cycle_to_deadline(stage.scheduler, *cycle)
            if stopped:
                return stopped
    return "completed"


def _enter_stage(run: _Run, tracker: _Tracker, stage: _Stage, epoch: int) -> _Stage:
    """The stage ``epoch`` belongs to. Entering a new one sets what trains and builds its optimizer and schedule,
    restored from ``last.pt`` when a resumed run stopped inside that stage."""
    index, lr, trainable = run.plan[epoch]
    if index == stage.index:
        return stage
    set_trainable(run.model, trainable)
    net = run.model
    if distributed.active():
        # Wrapped anew per stage: DDP syncs the gradients of the parameters that train when it is built.
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(run.model, device_ids=[run.device] if run.device.type == "cuda" else None)
    optimizer = build_optimizer(run.model, run.cfg, lr)
    scheduler = build_scheduler(optimizer, run.cfg, run.steps)
    state = tracker.resumed
    if state is not None and state.get("stage") == index and state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
    first = next(i for i, p in enumerate(run.plan) if p[0] == index)
    planned = sum(1 for p in run.plan if p[0] == index)
    return _Stage(index, net, optimizer, scheduler, first, planned, clock=time.monotonic())


def _train_epoch(run: _Run, stage: _Stage, epoch: int, progress: Progress) -> dict:
    """One training epoch with its own progress bar (loss and batch rate)."""
    batch_task = add_task(progress, f"  epoch {epoch + 1}/{len(run.plan)}", total=run.steps)

    def on_batch(loss: float) -> None:
        progress.update(batch_task, advance=1, info=f"loss {loss:.4f}")
        update_rate(progress, batch_task, "batch")

    sampler = getattr(run.train_loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle each epoch, the same on every rank
        sampler.set_epoch(epoch)
    tr = train_one_epoch(stage.net, run.train_loader, run.loss_fn, stage.optimizer, device=run.device,
                         scheduler=stage.scheduler, epoch=epoch - stage.first_epoch, grad_clip=run.cfg.grad_clip,
                         scaler=run.scaler, autocast_dtype=run.autocast_dtype, on_batch=on_batch,
                         deadline=run.deadline)
    progress.remove_task(batch_task)
    return tr


def _fit_cycle_to_time_left(run: _Run, stage: _Stage, epoch: int) -> tuple | None:
    """With a deadline, re-fit the stage's first cosine cycle to the time left, at the measured epoch time.
    Returns the arguments after the scheduler that ``fit_cycle_to_deadline`` was called with (None: not called),
    for the other ranks to fit theirs alike."""
    stage.epochs_timed += 1
    cfg = run.cfg
    if run.deadline is None or not cfg.fit_cycle_to_deadline or cfg.scheduler != "cosine_warm_restarts":
        return None
    now = time.monotonic()
    args = (epoch - stage.first_epoch + 1, (now - stage.clock) / stage.epochs_timed, run.deadline - now,
            stage.planned)
    fit_cycle_to_deadline(stage.scheduler, *args)
    return args


def _record_epoch(run: _Run, tracker: _Tracker, stage: _Stage, epoch: int, tr: dict, ev: EvalOutput) -> bool:
    """Append the epoch to the history and update the early-stopping state; returns whether it is the best."""
    cfg = run.cfg
    score = _score(ev.metrics, ev.loss, cfg.monitor)
    tracker.history.append({
        "epoch": epoch + 1, "stage": stage.index, "lr": stage.optimizer.param_groups[0]["lr"],
        "train_loss": tr["loss"], "val_loss": ev.loss, "val_accuracy": ev.metrics["accuracy"],
        "val_balanced_accuracy": ev.metrics["balanced_accuracy"], "val_auroc": ev.metrics["auroc"],
        "partial": tr["interrupted"]})
    # A tie on the monitored metric goes to the lower validation loss: with a few validation cases the metric
    # saturates or moves in coarse steps, and the first epoch to reach a value is rarely the best.
    improved = (score > tracker.best_score
                or (score == tracker.best_score and cfg.monitor != "loss" and ev.loss < tracker.best_loss))
    if improved:
        tracker.best_score, tracker.best_loss, tracker.best_epoch, tracker.bad_epochs = score, ev.loss, epoch + 1, 0
    else:
        tracker.bad_epochs += 1
    return improved


def _save_epoch(run: _Run, tracker: _Tracker, stage: _Stage, epoch: int, improved: bool) -> None:
    """``last.pt`` after every epoch, ``best.pt`` when the epoch is the best so far (the same contents)."""
    cfg = run.cfg
    payload = {
        "model": run.model.state_dict(), "optimizer": stage.optimizer.state_dict(),
        "scheduler": stage.scheduler.state_dict() if stage.scheduler is not None else None,
        "epoch": epoch, "stage": stage.index, "labels": list(run.labels), "config": run.config_snapshot or {},
        "train_config": cfg.model_dump(mode="json"), "history": tracker.history,
        "best_score": tracker.best_score, "best_loss": tracker.best_loss, "best_epoch": tracker.best_epoch,
        "bad_epochs": tracker.bad_epochs, "monitor": cfg.monitor,
    }
    if improved:
        save_checkpoint(run.best_path, payload)
    save_checkpoint(run.last_path, payload)


def _show_epoch(progress: Progress, task: int, cfg: TrainConfig, ev: EvalOutput, best_epoch: int) -> None:
    shown = ev.loss if cfg.monitor == "loss" else ev.metrics.get(cfg.monitor)
    progress.update(task, advance=1,
                    info=f"val {cfg.monitor} {shown if shown is None else round(shown, 4)} (best {best_epoch})")
    update_rate(progress, task, "epoch")


def _annealing_to_deadline(stage: _Stage, epoch: int) -> bool:
    """Whether the epoch lies inside a first cosine cycle that was fitted to the deadline and has not yet annealed.

    The rate stays high until near the deadline and the validation metric climbs only as it anneals, so
    counting patience in these epochs would stop a run on a plateau it was about to leave (ELPV, seed 1: stopped
    after 15 of 30 minutes with its best epoch at 7; see benchmarks/RESULTS.md)."""
    scheduler = stage.scheduler
    if scheduler is None or getattr(scheduler, "configured_T_0", None) is None:
        return False  # no deadline fitting: the configured cycle and patience stand
    return epoch - stage.first_epoch + 1 < scheduler.T_0


def _stop_reason(run: _Run, tracker: _Tracker, stage: _Stage, epoch: int, tr: dict) -> str | None:
    """Why training stops after this epoch (time budget, early stopping), or None to go on."""
    cfg = run.cfg
    if tr["interrupted"]:
        return "time budget reached"
    if tracker.bad_epochs >= cfg.patience and not _annealing_to_deadline(stage, epoch):
        return f"early stop: no {cfg.monitor} gain in {cfg.patience} epochs"
    if run.deadline is not None and time.monotonic() >= run.deadline:
        return "time budget reached"
    return None


def _finish(run: _Run, tracker: _Tracker, stopped: str) -> FitResult:
    """Reload the best weights (every parameter trainable again) and score the validation set with them.

    Under torchrun rank 0 reloads them and copies its parameters and buffers into every rank; the other ranks take
    its history and best epoch, and return no validation logits."""
    missing = distributed.is_main() and not run.best_path.is_file()
    if distributed.broadcast(missing):
        # Resumed a run that had already finished: last.pt is all there is.
        raise RuntimeError(f"{run.out_dir}: no best checkpoint written (nothing left to train?)")
    if distributed.is_main():
        best = load_checkpoint(run.best_path, map_location=run.device)
        run.model.load_state_dict(best["model"])
    distributed.broadcast_state(run.model)
    for p in run.model.parameters():
        p.requires_grad = True
    if distributed.active():
        tracker.best_score, tracker.best_epoch, tracker.history = distributed.broadcast(
            (tracker.best_score, tracker.best_epoch, tracker.history))
    best_metric = tracker.best_score if run.cfg.monitor != "loss" else -tracker.best_score
    result = FitResult(run.best_path, run.last_path, tracker.best_epoch, best_metric, tracker.history, stopped)
    if distributed.is_main():
        final = evaluate(run.model, run.val_loader, run.device, run.eval_loss_fn, run.labels)
        result.val_logits, result.val_targets = final.logits, final.targets
    return result
