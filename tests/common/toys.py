"""Toy models and data for the engine tests."""

import numpy as np
import torch
from torch import nn


class TinyNet(nn.Module):
    """A two-block MLP with a named ``features`` trunk and ``head`` (for staged unfreezing)."""

    def __init__(self, d_in: int = 2, hidden: int = 32, n_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def blobs(n: int, seed: int, noise: float = 0.6, flip: float = 0.0):
    """Two Gaussian blobs at (-1.5, -1.5) and (1.5, 1.5): separable with a small margin of overlap."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, noise, (n, 2)) + np.where(y[:, None] == 1, 1.5, -1.5)
    if flip:
        mask = rng.random(n) < flip
        y = np.where(mask, 1 - y, y)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)
