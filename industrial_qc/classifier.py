"""Stage 2: a torchvision ResNet that verifies and names each padded crop; class 0 is ``background``.

The model module only builds the network; ``common.engine.fit`` trains it, ``common.calibration`` fits the
temperature and ``common.export`` writes the self-describing ONNX file.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common import distributed
from common.calibration import fit_temperature
from common.checkpoints import load_checkpoint
from common.engine import fit
from common.errors import InputError
from common.export import export_onnx
from common.inference import softmax
from common.metrics import classification_metrics
from industrial_qc.config import AugmentConfig, ClassifierConfig, GeometryConfig
from industrial_qc.crops import IMAGENET_MEAN, IMAGENET_STD, to_tensor_batch
from industrial_qc.cropset import CropSet

NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}


def build_classifier(arch: str, n_classes: int, stem: str = "standard", weights: str | Path | None = None) -> nn.Module:
    """ResNet with ``n_classes`` outputs, built with ``weights=None``; ``weights`` = ``imagenet`` (torchvision's
    file from the local cache, common.weights), a local state_dict or our checkpoint (matching tensors are
    loaded, a differently sized head is skipped). ``stem="no_maxpool"`` drops the stem max-pool: 2x finer
    features for small crops, at ~4x the compute."""
    if arch not in NETWORKS:
        raise InputError(f"classifier.arch {arch!r}: expected one of {', '.join(NETWORKS)}")
    net = NETWORKS[arch](weights=None, num_classes=n_classes)
    if stem == "no_maxpool":
        net.maxpool = nn.Identity()
    if weights:
        load_matching_tensors(net, arch, weights_file(arch, weights))
    return net


def weights_file(arch: str, weights: str | Path) -> Path:
    """The local file ``weights`` names: ``imagenet`` resolves in torchvision's cache, anything else is a path."""
    if str(weights) == "imagenet":
        from common.weights import imagenet_weights

        return imagenet_weights(arch)
    path = Path(weights)
    if not path.is_file():
        raise InputError(f"classifier.weights {path}: file not found (weights are never downloaded)")
    return path


def load_matching_tensors(net: nn.Module, arch: str, path: Path) -> None:
    """Load the tensors of ``path`` whose name and shape ``net`` has (a new head keeps its fresh init)."""
    try:  # tensors and plain containers only: a weights file never runs code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"classifier.weights {path}: not a loadable state_dict ({exc})") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise InputError(f"{path}: no tensor matches a {arch} (is it a {arch} state_dict?)")
    net.load_state_dict(usable, strict=False)


def geometry(cfg: GeometryConfig) -> list[A.BasicTransform]:
    """The geometric half of both classifiers' augmentation: quarter turns, flips, then a small affine."""
    return [
        A.RandomRotate90(p=cfg.rotate90),
        A.HorizontalFlip(p=cfg.flip),
        A.VerticalFlip(p=cfg.flip),
        A.Affine(scale=cfg.scale, translate_percent=(-cfg.translate, cfg.translate), rotate=(-cfg.rotate, cfg.rotate),
                 border_mode=cv2.BORDER_REFLECT_101, p=cfg.affine),
    ]


def augmentation(cfg: AugmentConfig, crop_size: int, seed: int) -> A.Compose:
    """Train-time transform of a (1.5 * S)-sized crop down to (S, S): geometry first, then photometric.
    Seeded: albumentations 2 draws from its own generator, not numpy's or python's global one."""
    return A.Compose([
        *geometry(cfg),
        A.CenterCrop(crop_size, crop_size),
        A.GaussNoise(std_range=(0.01, 0.04), p=cfg.noise),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=cfg.brightness_contrast),
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=15, val_shift_limit=10, p=cfg.hsv),
    ], seed=seed)


def invert_polarity(crop: np.ndarray) -> np.ndarray:
    """``crop`` (H, W, 3) uint8 mirrored around its mean colour: bright marks turn dark and dark ones bright."""
    mean = crop.reshape(-1, crop.shape[-1]).mean(axis=0)
    return np.clip(np.rint(2 * mean - crop.astype(np.float32)), 0, 255).astype(np.uint8)


def polarity_flip_classes(cfg: AugmentConfig, labels: list[str], train_set: CropSet) -> list[str]:
    """The defect classes whose crops get polarity flips: ``cfg.invert_classes`` as given, or ("auto") those
    whose training defects are bright in at least ``invert_min_share`` and dark in as many (a scratch can be
    either; a crack or a stain in the data always darkens, and flipping it would invent a defect no part shows)."""
    if cfg.invert_classes == "auto":
        shares = train_set.bright_share(len(labels))
        return [labels[c] for c, b in shares.items() if min(b, 1 - b) >= cfg.invert_min_share]
    unknown = set(cfg.invert_classes) - set(labels[1:])
    if unknown:
        raise InputError(f"classifier.augment.invert_classes: {sorted(unknown)} are not defect classes {labels[1:]}")
    return list(cfg.invert_classes)


class CropDataset(Dataset):
    """(x, y): x (3, S, S) float32 normalised RGB, y int64. Crops are stored with the training margin.
    ``invert``: probability of a polarity flip for the crops whose target is in ``invert_targets``."""

    def __init__(self, crops: CropSet, crop_size: int, transform: A.Compose | None, normalize: str = "per_crop",
                 invert: float = 0.0, invert_targets: tuple[int, ...] = ()) -> None:
        self.normalize = normalize
        self.crops = crops.crops
        self.targets = crops.targets
        self.crop_size = crop_size
        self.transform = transform or A.Compose([A.CenterCrop(crop_size, crop_size)])
        self.invert = invert
        self.invert_targets = frozenset(invert_targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        crop = self.crops[i]
        if self.invert and int(self.targets[i]) in self.invert_targets and random.random() < self.invert:
            crop = invert_polarity(crop)
        img = self.transform(image=crop)["image"]
        x = to_tensor_batch(img[None], normalize=self.normalize)[0]
        return torch.from_numpy(x), int(self.targets[i])


@dataclass
class ClassifierResult:
    model: nn.Module
    labels: list[str]
    temperature: float
    best_path: Path
    history: list[dict]
    stopped_reason: str
    val_metrics: dict
    seconds: float
    polarity_flips: list[str] = field(default_factory=list)  # classes trained with polarity flips


def train_classifier(cfg: ClassifierConfig, labels: list[str], train_set: CropSet, val_set: CropSet,
                     out_dir: Path, *, deadline: float | None, device: torch.device, seed: int = 0,
                     config_snapshot: dict | None = None, console=None) -> ClassifierResult:
    """Train on ``train_set`` (crops with the 1.5x margin) and pick the best epoch on ``val_set``; fit the
    temperature on the best model's validation logits (under torchrun on rank 0; the others return the trained
    model with temperature 1 and no metrics)."""
    t0 = time.monotonic()
    if len(train_set) == 0 or len(val_set) == 0:
        raise InputError("no classifier crops: the dataset has no boxes in train or val")
    model = build_classifier(cfg.arch, len(labels), cfg.stem, cfg.weights)
    gen = torch.Generator().manual_seed(seed)
    flipped = polarity_flip_classes(cfg.augment, labels, train_set) if cfg.augment.invert else []
    if cfg.augment.invert and console is not None:
        console.print(f"  polarity flips (p={cfg.augment.invert}) for: {', '.join(flipped) or 'no class'}")
    # Each torchrun rank augments its own share with its own stream (rank 0: the single-process one).
    augment = augmentation(cfg.augment, cfg.crop_size, seed + distributed.rank())
    train_ds = CropDataset(train_set, cfg.crop_size, augment, cfg.normalize,
                           invert=cfg.augment.invert, invert_targets=tuple(labels.index(c) for c in flipped))
    train_loader = DataLoader(train_ds, batch_size=cfg.train.batch_size, shuffle=True, generator=gen,
                              num_workers=cfg.workers, drop_last=len(train_set) > cfg.train.batch_size)
    val_ds = CropDataset(val_set, cfg.crop_size, None, cfg.normalize)
    val_loader = DataLoader(val_ds, batch_size=max(64, cfg.train.batch_size), num_workers=cfg.workers)
    res = fit(model, train_loader, val_loader, cfg.train, out_dir, labels, config_snapshot=config_snapshot,
              deadline=deadline, device=device, class_counts=train_set.counts(len(labels)), console=console,
              description="classifier")
    if res.val_logits is None:  # a torchrun rank other than 0: rank 0 calibrates
        return ClassifierResult(model, labels, 1.0, res.best_path, res.history, res.stopped_reason, {},
                                time.monotonic() - t0, flipped)
    temperature = fit_temperature(res.val_logits, res.val_targets)
    val_metrics = classification_metrics(res.val_targets, softmax(res.val_logits, temperature), labels)
    val_metrics["temperature"] = temperature
    return ClassifierResult(model, labels, temperature, res.best_path, res.history, res.stopped_reason, val_metrics,
                            time.monotonic() - t0, flipped)


def export_classifier(model: nn.Module, cfg: ClassifierConfig, labels: list[str], temperature: float, path: Path,
                      extra_metadata: dict) -> Path:
    """Write ``classifier.onnx`` (dynamic batch) with everything the line needs to crop, normalise and calibrate."""
    example = torch.zeros(1, 3, cfg.crop_size, cfg.crop_size)
    metadata = {
        "task": "classify_crops",
        "labels": labels,
        "arch": cfg.arch,
        "crop_size": cfg.crop_size,
        "context": cfg.context,
        "min_crop": cfg.min_crop,
        "normalize": cfg.normalize,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "preprocessing": {"color": "RGB", "scale": 1 / 255, "layout": "NCHW",
                          "normalize": "per crop and channel: (x - mean(x)) / max(std(x), 0.02)"
                          if cfg.normalize == "per_crop" else "(x - mean) / std",
                          "crop": "square, side = max(w, h) * (1 + 2 * context) >= min_crop * short side"},
        "temperature": temperature,
        **extra_metadata,
    }
    export_onnx(model, example, path, metadata)
    return path


def load_classifier_checkpoint(path: Path, cfg: ClassifierConfig) -> tuple[nn.Module, list[str]]:
    """The network and labels stored in a checkpoint written by ``fit``."""
    state = load_checkpoint(path)
    labels = list(state["labels"])
    model = build_classifier(cfg.arch, len(labels), cfg.stem)
    model.load_state_dict(state["model"])
    return model.eval(), labels
