"""Optimisation plumbing for the shared loop: the epoch plan of staged unfreezing, which parameters train, the
optimizer, and the cosine schedule with warm restarts (its first cycle fitted to a deadline when there is one)."""

from __future__ import annotations

import math

import torch
from torch import nn

from common.config import TrainConfig


def epoch_plan(cfg: TrainConfig) -> list[tuple[int, float, list[str]]]:
    """(stage index, lr, trainable prefixes) for every epoch."""
    if not cfg.stages:
        return [(0, cfg.lr, ["*"])] * cfg.epochs
    plan = []
    for i, st in enumerate(cfg.stages):
        plan += [(i, st.lr, st.trainable)] * st.epochs
    return plan


def set_trainable(model: nn.Module, prefixes: list[str]) -> int:
    """Freeze every parameter except those whose name starts with one of ``prefixes``; returns trainable count."""
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad = "*" in prefixes or any(name.startswith(pre) for pre in prefixes)
        n += p.numel() if p.requires_grad else 0
    if n == 0:
        raise ValueError(f"stage trainable={prefixes} matches no parameter of {type(model).__name__}")
    return n


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum, over the parameters that currently train."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """CosineAnnealingWarmRestarts, or None for a constant rate."""
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
