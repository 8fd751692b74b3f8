"""Temperature scaling (Guo et al., 2017): one scalar T fitted on validation logits to minimise NLL.

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


def fit_temperature(logits: np.ndarray, targets: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature in ``bounds`` that minimises validation NLL (searched over log T). 1.0 for empty input."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) == 0 or logits.ndim != 2:
        return 1.0
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(lambda log_t: nll(logits, targets, float(np.exp(log_t))), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    # Never return a temperature that is worse than doing nothing.
    return t if nll(logits, targets, t) <= nll(logits, targets, 1.0) else 1.0
