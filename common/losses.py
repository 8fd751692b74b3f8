"""Training losses for the shared loop: class-weighted cross-entropy or focal loss, chosen by ``TrainConfig``.

Logits are (B, C) float, targets (B,) int64 class indices.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from common.config import TrainConfig


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
    """The training loss ``cfg`` names, class-weighted when ``cfg.class_weighting`` asks and counts are known."""
    weight = None
    if cfg.class_weighting == "balanced" and class_counts is not None:
        weight = balanced_class_weights(class_counts)
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma, cfg.focal_alpha, weight, cfg.label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
