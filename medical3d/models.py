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
    """The normalisation after every conv of ``cnn3d``: batch | instance | group | none."""
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 4), channels)
    return nn.Identity()


class PlainCNN3D(nn.Module):
    """Fully convolutional local detector with global max pooling: "is there such a spot anywhere?".

    stem: two convs at full resolution (a lesion of 1-3 voxels is seen before any pooling); block1, block2: max
    pooling then two convs each (1/2, 1/4 resolution); block4: 1x1 convs, a per-location detector that widens
    nothing. The receptive field stays local (~32 voxels), so a small training set cannot fit whole-body layout
    (which it would memorise instead of the lesion), and the global max of the detector map goes to the linear
    classifier. Normalisation is per volume by default (``norm="instance"``): batch statistics of 2-8 volumes are
    noise, and with BatchNorm train- and eval-mode outputs disagree. x: (B, 1, D, H, W) -> (B, num_classes).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16, dropout: float = 0.2,
                 norm: str = "instance") -> None:
        super().__init__()
        w = width
        c0 = max(w // 2, 4)

        def conv(cin: int, cout: int, k: int = 3) -> list[nn.Module]:
            return [nn.Conv3d(cin, cout, k, padding=k // 2, bias=norm == "none"), norm_layer(norm, cout),
                    nn.ReLU(inplace=True)]

        self.features = nn.Sequential()
        self.features.add_module("stem", nn.Sequential(*conv(in_channels, c0), *conv(c0, c0)))
        self.features.add_module("block1", nn.Sequential(nn.MaxPool3d(2), *conv(c0, w), *conv(w, w)))
        self.features.add_module("block2", nn.Sequential(nn.MaxPool3d(2), *conv(w, 2 * w), *conv(2 * w, 2 * w)))
        self.features.add_module("block4", nn.Sequential(*conv(2 * w, 4 * w, 1), *conv(4 * w, 4 * w, 1)))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(self.dropout(torch.amax(x, dim=(2, 3, 4))))


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
