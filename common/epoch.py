"""The two pieces of the shared training loop: one training epoch and one evaluation pass (``common.engine.fit``
runs them).

Loaders yield ``(x, y)``: ``x`` a float tensor (B, C, H, W) or (B, C, D, H, W), ``y`` (B,) int64 class indices.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common import distributed
from common.inference import softmax
from common.metrics import classification_metrics


@dataclass
class EvalOutput:
    logits: np.ndarray  # (N, C) float32
    targets: np.ndarray  # (N,) int64
    loss: float
    metrics: dict


def default_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


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
    ``deadline`` (time.monotonic) ends the epoch early, after the current batch (on every torchrun rank at once).
    ``model`` may be a DistributedDataParallel wrapper.
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
        _backward_and_step(model, loss, optimizer, scaler, grad_clip)
        if scheduler is not None:
            scheduler.step(epoch + (i + 1) / max(n_batches, 1))
        total += float(loss.item()) * len(y)
        count += len(y)
        if on_batch is not None:
            on_batch(float(loss.item()))
        # Under torchrun every rank asks every batch: the first past its deadline stops them all after this batch
        # (a rank that stopped alone would leave the others waiting for its gradients).
        if deadline is not None and distributed.any_rank(time.monotonic() >= deadline):
            interrupted = True
            break
    return {"loss": total / max(count, 1), "batches": i + 1 if count else 0, "interrupted": interrupted}


def _backward_and_step(model: nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                       scaler: torch.amp.GradScaler | None, grad_clip: float | None) -> None:
    """Backward pass, gradient clipping and optimizer step; through the AMP grad scaler when there is one."""
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
