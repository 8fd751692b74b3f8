"""Temperature scaling (Guo et al., 2017): one scalar T fitted on validation logits to minimise NLL.

The NLL is taken against Platt's smoothed targets (Platt, 1999): a class seen n times in validation gets target
probability (n + 1) / (n + 2) for its own cases, the rest spread over the other classes. Against hard targets a
validation split the model separates perfectly (common with 18 studies) drives T to its lower bound and every
probability to 0 or 1e-200; with smoothed targets T stops where the confidence matches what n cases can show.

Both verticals divide their logits by T before the softmax, so REVIEW bands sit on calibrated probabilities.
Numpy + scipy only, so the inference side can reuse it without torch.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``targets`` (N,) under ``softmax(logits / T)`` (N, C)."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(targets)), np.asarray(targets, dtype=np.int64)].mean())


def platt_targets(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) soft targets: (n_c + 1) / (n_c + 2) on the true class c (n_c = its count), the rest uniform."""
    targets = np.asarray(targets, dtype=np.int64)
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    eps = 1.0 / (counts[targets] + 2.0)
    soft = np.repeat((eps / max(num_classes - 1, 1))[:, None], num_classes, axis=1)
    soft[np.arange(len(targets)), targets] = 1.0 - eps
    return soft


def soft_nll(logits: np.ndarray, soft_targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of (N, C) ``soft_targets`` under ``softmax(logits / T)``."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-(soft_targets * logp).sum(axis=1).mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature in ``bounds`` that minimises validation NLL against Platt-smoothed targets (searched over
    log T). 1.0 for empty input."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) == 0 or logits.ndim != 2:
        return 1.0
    soft = platt_targets(targets, logits.shape[1])
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(lambda log_t: soft_nll(logits, soft, float(np.exp(log_t))), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    # Never return a temperature that is worse than doing nothing.
    return t if soft_nll(logits, soft, t) <= soft_nll(logits, soft, 1.0) else 1.0
