"""Toy models, data and configs for the common tests."""

import numpy as np
import torch
from torch import nn

from common.config import TrainConfig, validate_config

# The training settings these tests were written against (the loop's former Python defaults); the YAML defaults
# of either vertical may move without changing what the tests exercise.
TRAIN_DEFAULTS = {
    "epochs": 10, "batch_size": 32, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "momentum": 0.9,
    "scheduler": "cosine_warm_restarts", "t0": 10, "t_mult": 1, "min_lr": 1e-6, "fit_cycle_to_deadline": True,
    "loss": "ce", "class_weighting": "balanced", "focal_gamma": 2.0, "focal_alpha": None, "label_smoothing": 0.0,
    "grad_clip": 1.0, "amp": True, "cpu_bf16": False, "monitor": "balanced_accuracy", "patience": 5, "stages": None,
}


def train_config(**changes) -> TrainConfig:
    """A ``TrainConfig`` of ``TRAIN_DEFAULTS`` with ``changes`` over them."""
    return validate_config(TrainConfig, {**TRAIN_DEFAULTS, **changes}, "tests/common/toys.py:TRAIN_DEFAULTS")


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


class Small2D(nn.Module):
    """A small 2D CNN (3 x H x W -> 4 logits) for export and ONNX inference tests."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.body(x))


# ONNX metadata of a QC classifier, as training writes it.
META = {"task": "classify", "labels": ["scratch", "pit", "stain", "background"], "temperature": 1.7,
        "preprocessing": {"size": 64, "mean": [0.485, 0.456, 0.406]}, "thresholds": {"fail": 0.6, "review": 0.3},
        "data_fingerprint": "abc123"}
