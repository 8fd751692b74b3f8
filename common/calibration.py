"""Temperature scaling (Guo et al., 2017): one scalar T fitted on validation logits to minimise NLL.

The NLL is taken against Platt's smoothed targets (Platt, 1999): a class seen n times in validation gets target
probability (n + 1) / (n + 2) for its own cases, the rest spread over the other classes. Against hard targets a
validation split the model separates perfectly (common with 18 studies) drives T to its lower bound and every
probability to 0 or 1e-200; with smoothed targets T stops where the confidence matches what n cases can show.

Both verticals divide their logits by T before the softmax, so REVIEW bands sit on calibrated probabilities.
medical3d also fits a per-class logit offset with T (``fit_temperature_bias``, Platt's a*z + b in softmax form):
one scale cannot calibrate logits that are lopsided (a 3D CNN on a blob filter gives normals a small constant
logit and lesions a large one; T alone then leaves the normals at p = 0.38 and the test ECE at 0.19).
Numpy + scipy only, so the inference side can reuse it without torch.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar
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


def soft_nll(logits: np.ndarray, soft_targets: np.ndarray, temperature: float = 1.0,
             bias: np.ndarray | None = None) -> float:
    """Mean cross-entropy of (N, C) ``soft_targets`` under ``softmax(logits / T + bias)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    logp = log_softmax(z if bias is None else z + np.asarray(bias, dtype=np.float64), axis=1)
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


def fit_temperature_bias(logits: np.ndarray, targets: np.ndarray, bounds: tuple[float, float] = (0.05, 50.0),
                         max_bias: float = 20.0) -> tuple[float, list[float]]:
    """Temperature T and per-class offsets b (b[0] = 0) minimising validation NLL of ``softmax(logits / T + b)``
    against Platt-smoothed targets. Falls back to ``(fit_temperature(...), zeros)`` when the joint fit is not
    better. (1.0, zeros) for empty input."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) == 0 or logits.ndim != 2:
        return 1.0, [0.0] * (logits.shape[1] if logits.ndim == 2 else 0)
    c = logits.shape[1]
    soft = platt_targets(targets, c)
    t_only = fit_temperature(logits, targets, bounds=(bounds[0], min(bounds[1], 20.0)))
    zeros = np.zeros(c)

    def objective(v: np.ndarray) -> float:
        return soft_nll(logits, soft, float(np.exp(v[0])), np.concatenate([[0.0], v[1:]]))

    x0 = np.concatenate([[np.log(t_only)], np.zeros(c - 1)])
    box = [(np.log(bounds[0]), np.log(bounds[1]))] + [(-max_bias, max_bias)] * (c - 1)
    res = minimize(objective, x0, method="L-BFGS-B", bounds=box)
    if not np.all(np.isfinite(res.x)) or objective(res.x) >= soft_nll(logits, soft, t_only, zeros) - 1e-9:
        return t_only, zeros.tolist()
    return float(np.exp(res.x[0])), [0.0, *(float(b) for b in res.x[1:])]
