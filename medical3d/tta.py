"""Test-time augmentation (TTA) for medical3d: the mean logits of a model over flipped copies of the input.

numpy only: the scorer (``medical3d.pipeline``) imports this module and must not pull in torch.

Views of ``flips``: the volume as it is and flipped along each one axis (x = left-right, y, z): 4 forward passes,
so inference costs 4x (on CPU about 4x the ``inference_ms`` of ``none``). Training flips every axis with
``augment.flip_prob``, so each single flip is a view the model has seen; all 8 flip combinations would double the
cost again for views that differ from these only by a second flip.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TTA_MODES = ("none", "flips")

# Axes of a (B, 1, D, H, W) batch: 2 = D (z), 3 = H (y), 4 = W (x).
_VIEWS: dict[str, list[tuple[int, ...]]] = {
    "none": [()],
    "flips": [(), (4,), (3,), (2,)],
}


def tta_views(mode: str) -> list[tuple[int, ...]]:
    """The axes of a (B, 1, D, H, W) batch flipped for each view of ``mode``; ``()`` is the input as it is."""
    if mode not in _VIEWS:
        raise ValueError(f"unknown TTA mode {mode!r}; expected one of {list(TTA_MODES)}")
    return list(_VIEWS[mode])


def tta_logits(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, mode: str) -> np.ndarray:
    """(B, C) float32: the mean of ``run``'s logits over the views of ``mode``.

    ``run``: (B, 1, D, H, W) float32 -> (B, C) logits (``OnnxModel.run`` or a torch wrapper).
    ``x``: (B, 1, D, H, W) float32 preprocessed volumes. Logits, not probabilities, are averaged: the run's
    temperature and bias then calibrate the averaged logits as they were fitted."""
    views = tta_views(mode)
    total = None
    for axes in views:
        view = np.ascontiguousarray(np.flip(x, axis=axes) if axes else x, dtype=np.float32)
        logits = np.asarray(run(view), dtype=np.float64)
        total = logits if total is None else total + logits
    return (total / len(views)).astype(np.float32)
