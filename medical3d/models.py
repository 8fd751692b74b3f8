"""3D classification networks, chosen by config name, and local pretrained weights.

``NETWORKS`` maps ``model.network`` to a builder; MONAI provides DenseNet121 and ResNet18/34, and ``cnn3d`` is
a small plain 3D CNN, the fast CPU baseline. Every network maps ``(B, 1, D, H, W)`` float32 to ``(B, C)``
logits. ``GRADCAM_LAYERS`` names the layer Grad-CAM reads for each network.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
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


@functools.lru_cache(maxsize=32)
def _axis_filters(sigma: float, length: int) -> torch.Tensor:
    """(3, L, L) matrices that filter one axis of length L with the sampled Gaussian and its first and second
    derivatives (radius ceil(3 sigma)), replicate padding folded in: ``out[..., j] = sum_i x[..., i] M[i, j]``.

    Built with numpy, so an ONNX export sees constants, not the construction.
    """
    r = max(1, math.ceil(3.0 * sigma))
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-t * t / (2 * sigma * sigma))
    g /= g.sum()
    d1 = -t / sigma**2 * g
    d2 = (t * t / sigma**4 - 1 / sigma**2) * g
    d2 -= d2.mean()  # a constant has zero curvature
    m = np.zeros((3, length, length))
    src = np.clip(np.arange(length)[None, :] + np.arange(-r, r + 1)[:, None], 0, length - 1)  # (taps, L)
    dst = np.broadcast_to(np.arange(length)[None, :], src.shape)
    for o, k in enumerate((g, d1, d2)):
        np.add.at(m[o], (src.ravel(), dst.ravel()), np.broadcast_to(k[:, None], src.shape).ravel())
    return torch.from_numpy(m.astype(np.float32))


class BlobFilter(nn.Module):
    """Fixed (not trained) multi-scale Hessian blob enhancement: x (B, 1, D, H, W) -> (B, 1 + 2S, D, H, W).

    Channel 0 is the input; then for each scale sigma (voxels) a bright-blob map ``relu(-l1)`` and a dark-blob map
    ``relu(l3)``, where l1 >= l2 >= l3 are the eigenvalues of the scale-normalised Hessian (sigma^2 H). A voxel
    is bright-blob-like only when the image curves down along all three axes (a focal spot), so edges and
    sheets (skin, fat layers, organ borders) answer ~0; the classic dot-enhancement filter of lesion and nodule
    CAD. It gives a small network with few training studies a focal-lesion detector it would otherwise have to
    learn from a handful of voxels per study. Gaussian derivatives are separable 1D convolutions with replicate
    padding; the eigenvalues use the closed-form trigonometric solution, so the layer exports to ONNX.
    """

    def __init__(self, scales: list[float] | tuple[float, ...]) -> None:
        super().__init__()
        self.scales = [float(s) for s in scales]

    @property
    def out_channels(self) -> int:
        return 1 + 2 * len(self.scales)

    @staticmethod
    def _hessian_eigs(x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Largest and smallest eigenvalue of sigma^2 * Hessian, (B, 1, D, H, W) each.

        Separable Gaussian-derivative filtering as matrix products along each axis (CPU conv3d with one input
        channel is an order of magnitude slower): 3 orders along D, 3 x 3 along H, then the W order each of the
        six Hessian entries needs (xx, yy, zz, xy, xz, yz).
        """
        _, _, dd, hh, ww = x.shape
        md, mh, mw = (_axis_filters(sigma, n).to(x.device) for n in (dd, hh, ww))
        a = torch.einsum("ndhw,oda->noahw", x[:, 0], md)  # orders along D
        b = torch.einsum("noahw,phb->nopabw", a, mh)  # [order D][order H]
        # W order 0: xx (2,0) yy (0,2) xy (1,1); W order 1: xz (1,0) yz (0,1); W order 2: zz (0,0)
        w0 = torch.einsum("nsdhw,wc->nsdhc", torch.stack([b[:, 2, 0], b[:, 0, 2], b[:, 1, 1]], 1), mw[0])
        w1 = torch.einsum("nsdhw,wc->nsdhc", torch.stack([b[:, 1, 0], b[:, 0, 1]], 1), mw[1])
        w2 = torch.einsum("ndhw,wc->ndhc", b[:, 0, 0], mw[2])
        s2 = sigma * sigma
        h = {"xx": w0[:, 0:1] * s2, "yy": w0[:, 1:2] * s2, "xy": w0[:, 2:3] * s2,
             "xz": w1[:, 0:1] * s2, "yz": w1[:, 1:2] * s2, "zz": w2[:, None] * s2}
        a, b, c, d, e, f = h["xx"], h["yy"], h["zz"], h["xy"], h["xz"], h["yz"]
        q = (a + b + c) / 3
        p1 = d * d + e * e + f * f
        p2 = (a - q) ** 2 + (b - q) ** 2 + (c - q) ** 2 + 2 * p1
        p = torch.sqrt(p2 / 6 + 1e-12)
        ba, bb, bc = (a - q) / p, (b - q) / p, (c - q) / p
        bd, be, bf = d / p, e / p, f / p
        det = ba * (bb * bc - bf * bf) - bd * (bd * bc - bf * be) + be * (bd * bf - bb * be)
        phi = torch.acos(torch.clamp(det / 2, -1 + 1e-6, 1 - 1e-6)) / 3
        l1 = q + 2 * p * torch.cos(phi)  # largest
        l3 = q + 2 * p * torch.cos(phi + 2 * math.pi / 3)  # smallest
        return l1, l3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [x]
        for s in self.scales:
            l1, l3 = self._hessian_eigs(x, s)
            out += [torch.relu(-l1), torch.relu(l3)]
        return torch.cat(out, dim=1)


class PlainCNN3D(nn.Module):
    """Plain 3D CNN: a full-resolution stem, three conv pairs with max pooling, one last conv; the global max
    of every stage's output is concatenated for the linear classifier (multi-scale max pooling).

    Max pooling (rather than strided convolutions) and global max pooling keep a few bright voxels, a small
    lesion, from being averaged away. Pooling only maxima makes every feature a local detector ("is there such a
    spot anywhere?") instead of a summary of the whole body, which a small training set would memorise; pooling
    the shallow stages too gives the classifier local contrast features directly. x: (B, 1, D, H, W) -> logits
    (B, num_classes). With width w the deepest block has 8w channels at 1/16 of the input size. ``blob_scales``
    (voxels) puts a fixed ``BlobFilter`` in front (single-channel input only); empty = the raw volume.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16, dropout: float = 0.2,
                 norm: str = "group", blob_scales: list[float] | tuple[float, ...] = ()) -> None:
        super().__init__()
        w = width
        self.blob = BlobFilter(blob_scales) if blob_scales else nn.Identity()
        if blob_scales:
            if in_channels != 1:
                raise ValueError("blob_scales needs a single-channel input")
            in_channels = self.blob.out_channels

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
        x = self.blob(x)
        for stage in self.features:
            x = stage(x)
            pooled.append(torch.amax(x, dim=(2, 3, 4)))
        return self.classifier(self.dropout(torch.cat(pooled, dim=1)))


def _cnn3d(cfg: ModelConfig, num_classes: int) -> nn.Module:
    return PlainCNN3D(1, num_classes, cfg.width, cfg.dropout, cfg.norm, cfg.blob_scales)


def _densenet121(cfg: ModelConfig, num_classes: int) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=3, in_channels=1, out_channels=num_classes, dropout_prob=cfg.dropout)


def _resnet(depth: int) -> Callable[[ModelConfig, int], nn.Module]:
    def build(cfg: ModelConfig, num_classes: int) -> nn.Module:
        from monai.networks import nets
        from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

        kwargs = {}
        if cfg.weights == "medicalnet":  # MedicalNet's shortcuts (parameter-free "A" for 18/34): its tensors fit
            bias_downsample, shortcut = get_medicalnet_pretrained_resnet_args(depth)
            kwargs = {"shortcut_type": shortcut, "bias_downsample": bias_downsample}
        # pretrained=False: weights never come from the internet, only from the local cache or --weights PATH.
        return getattr(nets, f"resnet{depth}")(pretrained=False, spatial_dims=3, n_input_channels=1,
                                               num_classes=num_classes, **kwargs)

    return build


def load_medicalnet(model: nn.Module, cfg: ModelConfig) -> dict:
    """MedicalNet's backbone weights from the local cache into a ``resnet*`` built with ``weights: medicalnet``;
    the classifier head (``fc``) keeps its random start. InputError when the network has none or it is not cached."""
    from common.weights import medicalnet_state, medicalnet_weights

    if not cfg.network.startswith("resnet"):
        raise InputError(f"model.weights medicalnet: MedicalNet has 3D ResNets only, not {cfg.network!r}; "
                         f"set model.network to resnet10, resnet18 or resnet34")
    depth = int(cfg.network.removeprefix("resnet"))
    path = medicalnet_weights(depth)
    state = medicalnet_state(path, depth)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise InputError(f"{path}: does not fit {cfg.network} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return {"loaded": len(state), "path": str(path)}


NETWORKS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "cnn3d": _cnn3d,
    "densenet121": _densenet121,
    "resnet10": _resnet(10),
    "resnet18": _resnet(18),
    "resnet34": _resnet(34),
}

GRADCAM_LAYERS = {
    "cnn3d": "features.block4",
    "densenet121": "class_layers.relu",
    "resnet10": "layer4",
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
