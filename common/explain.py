"""Grad-CAM for 2D and 3D classifiers, through ``monai.visualize.GradCAM``.

``grad_cam(model, x, "layer4")`` -> a heat map with the spatial shape of ``x`` in [0, 1]; for a 3D CNN the
map is a volume aligned voxel for voxel with the network input.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of the model's submodules (to pick ``target_layer``)."""
    return [name for name, _ in model.named_modules() if name]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def grad_cam(model: nn.Module, x: torch.Tensor, target_layer: str, class_idx: int | None = None) -> np.ndarray:
    """Grad-CAM of ``class_idx`` (default: the predicted class) at ``target_layer``.

    x: (1, C, H, W) or (1, C, D, H, W) float32. Returns (H, W) or (D, H, W) float32 in [0, 1], upsampled to the
    input size by MONAI.
    """
    from monai.visualize import GradCAM

    if target_layer not in dict(model.named_modules()):
        raise ValueError(f"target_layer {target_layer!r} is not a submodule; some are: {layer_names(model)[-8:]}")
    if x.ndim not in (4, 5) or x.shape[0] != 1:
        raise ValueError(f"x must be (1, C, H, W) or (1, C, D, H, W), got {tuple(x.shape)}")
    was_training = model.training
    model.eval()
    # GradCAM needs gradients even when the caller froze parameters.
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        # MONAI's default post-processing maps (min, max) to (1, 0), i.e. flips the map; keep raw values and
        # normalise below so the hottest voxel is 1.
        cam = GradCAM(nn_module=model, target_layers=target_layer, postprocessing=_identity)
        with torch.enable_grad():
            out = cam(x=x.detach().clone().requires_grad_(True), class_idx=class_idx)
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)
    heat = out[0, 0].detach().cpu().numpy().astype(np.float32)
    lo, hi = float(heat.min()), float(heat.max())
    return (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
