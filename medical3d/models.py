"""3D classification networks, chosen by config name, and local pretrained weights.

``NETWORKS`` maps ``model.network`` to a builder; MONAI provides DenseNet121 and ResNet18/34, and ``cnn3d`` is
a small plain 3D CNN, the fast CPU baseline. Every network maps ``(B, 1, D, H, W)`` float32 to ``(B, C)``
logits. ``GRADCAM_LAYERS`` names the layer Grad-CAM reads for each network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from common.errors import InputError
from medical3d.config import ModelConfig


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The normalisation after every conv of ``cnn3d``: group (per volume, default) | batch | instance | none.

    Per-volume normalisation matters here: with batches of 2-4 volumes BatchNorm statistics are noise and train-
    and eval-mode outputs disagree.
    """
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 4), channels)
    return nn.Identity()


class PlainCNN3D(nn.Module):
    """Plain 3D CNN: a full-resolution stem, three conv pairs with max pooling, one last conv; the global max
    of every stage's output is concatenated for the linear classifier (multi-scale max pooling).

    Max pooling (rather than strided convolutions) and global max pooling keep a few bright voxels, a small
    lesion, from being averaged away. Pooling only maxima makes every feature a local detector ("is there such a
    spot anywhere?") instead of a summary of the whole body, which a small training set would memorise; pooling
    the shallow stages too gives the classifier local contrast features directly. x: (B, 1, D, H, W) -> logits
    (B, num_classes). With width w the deepest block has 8w channels at 1/16 of the input size.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16, dropout: float = 0.2,
                 norm: str = "group") -> None:
        super().__init__()
        w = width

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv3d(cin, cout, 3, padding=1, bias=norm == "none"), norm_layer(norm, cout),
                    nn.ReLU(inplace=True)]

        self.features = nn.Sequential()
        self.features.add_module("stem", nn.Sequential(*conv(in_channels, max(w // 2, 4)), nn.MaxPool3d(2)))
        self.features.add_module("block1", nn.Sequential(*conv(max(w // 2, 4), w), *conv(w, w), nn.MaxPool3d(2)))
        self.features.add_module("block2", nn.Sequential(*conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool3d(2)))
        self.features.add_module("block3", nn.Sequential(*conv(2 * w, 4 * w), *conv(4 * w, 4 * w), nn.MaxPool3d(2)))
        self.features.add_module("block4", nn.Sequential(*conv(4 * w, 8 * w)))
        self.dropout = nn.Dropout(dropout)
        pooled = max(w // 2, 4) + w + 2 * w + 4 * w + 8 * w
        self.classifier = nn.Linear(pooled, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for stage in self.features:
            x = stage(x)
            pooled.append(torch.amax(x, dim=(2, 3, 4)))
        return self.classifier(self.dropout(torch.cat(pooled, dim=1)))


def _cnn3d(cfg: ModelConfig, num_classes: int) -> nn.Module:
    return PlainCNN3D(1, num_classes, cfg.width, cfg.dropout, cfg.norm)


def _densenet121(cfg: ModelConfig, num_classes: int) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=3, in_channels=1, out_channels=num_classes, dropout_prob=cfg.dropout)


def _resnet(depth: int) -> Callable[[ModelConfig, int], nn.Module]:
    def build(cfg: ModelConfig, num_classes: int) -> nn.Module:
        from monai.networks import nets

        # pretrained=False: weights never come from the internet, only from --weights PATH.
        return getattr(nets, f"resnet{depth}")(pretrained=False, spatial_dims=3, n_input_channels=1,
                                               num_classes=num_classes)

    return build


NETWORKS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "cnn3d": _cnn3d,
    "densenet121": _densenet121,
    "resnet18": _resnet(18),
    "resnet34": _resnet(34),
}

GRADCAM_LAYERS = {
    "cnn3d": "features.block4",
    "densenet121": "class_layers.relu",
    "resnet18": "layer4",
    "resnet34": "layer4",
}


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """The network named by ``cfg.network`` with ``num_classes`` outputs, randomly initialised."""
    return NETWORKS[cfg.network](cfg, num_classes)


def load_weights(model: nn.Module, path: str | Path) -> dict:
    """Load local pretrained weights; tensors whose name and shape match are copied, the rest stay as they are
    (e.g. a classifier head with another class count). Accepts a plain state dict or a checkpoint holding one
    under ``model`` or ``state_dict``. Returns {"loaded": n, "skipped": [names], "missing": n}.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--weights {path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or corrupt files
        raise InputError(f"--weights {path}: not a readable torch weights file ({exc})") from exc
    state = obj
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict):
        raise InputError(f"--weights {path}: expected a state dict, got {type(state).__name__}")
    own = model.state_dict()
    matched, skipped = {}, []
    for name, tensor in state.items():
        name = name.removeprefix("module.")
        if name in own and hasattr(tensor, "shape") and tuple(tensor.shape) == tuple(own[name].shape):
            matched[name] = tensor
        else:
            skipped.append(name)
    if not matched:
        raise InputError(f"--weights {path}: no tensor matches {type(model).__name__} (names or shapes differ)")
    model.load_state_dict(matched, strict=False)
    return {"loaded": len(matched), "skipped": skipped, "missing": len(own) - len(matched)}
