"""``vsuite qc train`` on image-level data: one torchvision ResNet judges each whole part.

    runs/<name>/
      run.json (mode "part")  part_classifier.onnx  part_classifier.int8.onnx (the line's copy, unless
      part.line_precision is fp32 or it disagreed with fp32 on val)  metrics.json  splits.csv
      checkpoints/part/best.pt last.pt  plots/confusion_matrix.png roc_curve.png

Every image is decoded once and fitted to ``part.image_size`` into one uint8 array; augmentation (albumentations,
seeded) works from memory. The shared loop (``common.engine.fit``) trains under the time budget, with staged
unfreezing when the network starts from pretrained weights. Then: temperature on val, the line model (int8 when it
agrees), PASS/FAIL/REVIEW thresholds from the val parts' defect scores (1 - P(good)), the run directory.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from rich.console import Console
from torch.utils.data import DataLoader, Dataset

from common import distributed
from common.calibration import fit_temperature
from common.config import TrainConfig, config_snapshot
from common.engine import fit
from common.metrics import classification_metrics
from common.rundir import write_run_json
from common.runtime import pick_device, seed_everything, set_torch_threads
from industrial_qc.classifier import build_classifier, geometry
from industrial_qc.config import PartAugmentConfig, PartConfig, QCConfig, VerdictConfig
from industrial_qc.crops import IMAGENET_MEAN, IMAGENET_STD
from industrial_qc.part_export import (
    PART_ONNX,
    LinePart,
    export_part_classifier,
    line_part_classifier,
    onnx_probs,
    store_part_thresholds,
)
from industrial_qc.parts import PAD_VALUE, SPLITS, PartSet, load_parts, load_pixels, to_input
from industrial_qc.train import Budget, TrainOutcome
from industrial_qc.verdict import PartSample, Thresholds, choose_thresholds


@dataclass
class PartData:
    """The dataset and its train and val parts decoded: (N, S, S, 3) uint8 BGR arrays and (N,) labels."""

    parts: PartSet
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray


def load_part_data(data: Path, cfg: QCConfig, threads: int, console: Console) -> PartData:
    """Load and check the dataset, then decode train and val once into memory at ``part.image_size``."""
    p = cfg.part
    parts = load_parts(data, p.good_labels, p.split_fractions, cfg.seed)
    drawn = f" (drawn here: {', '.join(parts.made_splits)})" if parts.made_splits else ""
    sizes = ", ".join(f"{s} {len(parts.split(s))}" for s in SPLITS if parts.split(s))
    console.print(f"[bold]data[/] {data}: classes {parts.labels} (good: {parts.good_label!r}); {sizes}{drawn}")
    t0 = time.monotonic()
    train_x = load_pixels(parts.paths("train"), p.image_size, threads)
    val_x = load_pixels(parts.paths("val"), p.image_size, threads)
    mb = (train_x.nbytes + val_x.nbytes) / 2**20
    console.print(f"  decoded {len(train_x) + len(val_x)} images at {p.image_size} px in "
                  f"{time.monotonic() - t0:.1f} s ({mb:.0f} MB in memory)")
    return PartData(parts, train_x, parts.targets("train"), val_x, parts.targets("val"))


class PartImages(Dataset):
    """(x, y): x (3, S, S) float32 normalised RGB (``parts.to_input``), y int64; ``transform`` augments the
    uint8 image first."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, normalize: str,
                 transform: A.Compose | None = None) -> None:
        self.images, self.targets, self.normalize, self.transform = images, targets, normalize, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        return torch.from_numpy(to_input(img[None], self.normalize)[0]), int(self.targets[i])


def part_augmentation(cfg: PartAugmentConfig, seed: int) -> A.Compose:
    """Train-time transform of a whole part (same size in and out): geometry, then photometric. Seeded:
    albumentations 2 draws from its own generator."""
    return A.Compose([
        *geometry(cfg),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=cfg.brightness_contrast),
        A.GaussNoise(std_range=(0.01, 0.04), p=cfg.noise),
    ], seed=seed)


def part_train_config(p: PartConfig) -> TrainConfig:
    """``part.train``; from pretrained weights with no stages given, staged unfreezing: the head (``fc``) alone
    for ``head_epochs`` at ``lr``, then every layer for the rest of ``epochs`` at ``lr * unfreeze_lr_scale``."""
    t = p.train
    if p.weights is None or t.stages is not None:
        return t
    stages = [{"epochs": p.head_epochs, "lr": t.lr, "trainable": ["fc"]},
              {"epochs": max(1, t.epochs - p.head_epochs), "lr": t.lr * p.unfreeze_lr_scale, "trainable": ["*"]}]
    return TrainConfig.model_validate({**t.model_dump(), "stages": stages})


@dataclass
class Trained:
    net: torch.nn.Module
    temperature: float
    history: list[dict]
    stopped: str
    best_epoch: int
    seconds: float


def train_part_classifier(cfg: QCConfig, data: PartData, out: Path, deadline: float | None, device: torch.device,
                          console: Console) -> Trained:
    """Fit the ResNet on the decoded parts until ``deadline`` (best epoch on val) and its temperature (under
    torchrun: on rank 0; the others get 1.0 and stop after the fit)."""
    t0, p = time.monotonic(), cfg.part
    labels = data.parts.labels
    net = build_classifier(p.arch, len(labels), "standard", p.weights)
    tcfg = part_train_config(p)
    # Each torchrun rank augments its own share with its own stream (rank 0: the single-process one).
    train_ds = PartImages(data.train_x, data.train_y, p.normalize,
                          part_augmentation(p.augment, cfg.seed + distributed.rank()))
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_ds, batch_size=tcfg.batch_size, shuffle=True, generator=gen,
                              num_workers=p.workers, drop_last=len(train_ds) > tcfg.batch_size)
    val_loader = DataLoader(PartImages(data.val_x, data.val_y, p.normalize), batch_size=max(64, tcfg.batch_size),
                            num_workers=p.workers)
    how = ("from scratch" if p.weights is None else f"from {p.weights}") + (", in stages" if tcfg.stages else "")
    console.print(f"[bold]train[/] {p.arch} ({how}) at {p.image_size} px on {len(train_ds)} parts, "
                  f"val {len(data.val_y)}")
    counts = np.bincount(data.train_y, minlength=len(labels)).tolist()
    res = fit(net, train_loader, val_loader, tcfg, out / "checkpoints" / "part", labels,
              config_snapshot=config_snapshot(cfg), deadline=deadline, device=device, class_counts=counts,
              console=console, description="part classifier")
    temperature = fit_temperature(res.val_logits, res.val_targets) if res.val_logits is not None else 1.0
    return Trained(net, temperature, res.history, res.stopped_reason, res.best_epoch, time.monotonic() - t0)


def part_metadata(cfg: QCConfig, parts: PartSet, temperature: float, out: Path) -> dict:
    """What the ONNX file says about itself: how to preprocess, which class is good, the calibration."""
    p = cfg.part
    meta = {"task": "classify_parts", "mode": "part", "labels": parts.labels, "good_label": parts.good_label,
            "arch": p.arch, "input_size": p.image_size, "normalize": p.normalize, "resize": "pad",
            "pad_value": PAD_VALUE, "temperature": temperature, "cam": {"layer": "layer4", "stride": 32},
            "preprocessing": {"color": "RGB", "scale": 1 / 255, "layout": "NCHW",
                              "resize": "longer side to input_size, aspect kept, centred on pad_value grey",
                              "normalize": "per image and channel: (x - mean(x)) / max(std(x), 0.02)"
                              if p.normalize == "per_image" else "(x - mean) / std"},
            "data_fingerprint": parts.fingerprint(), "run_name": out.name}
    if p.normalize == "imagenet":
        meta |= {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return meta


def part_thresholds(v: VerdictConfig, val_probs: np.ndarray, val_y: np.ndarray, train: PartSample | None = None
                    ) -> Thresholds:
    """PASS/FAIL/REVIEW thresholds on the val parts' defect scores 1 - P(good) (good = label 0), by the
    detection mode's rules (``verdict.choose_thresholds``; no defect-free regions here)."""
    return choose_thresholds(1.0 - val_probs[:, 0], val_y != 0, target_recall=v.target_recall,
                             max_false_reject=v.max_false_reject, min_review=v.min_review_threshold,
                             max_review=v.max_review_threshold, min_fail=v.min_fail_threshold, train=train,
                             score="classifier", recall_confidence=v.recall_confidence)


def train_reference(cfg: QCConfig, data: PartData, line: LinePart, temperature: float) -> PartSample | None:
    """The train parts scored by the line model, when ``verdict.reference`` offers them to the thresholds."""
    if cfg.verdict.reference != "train+val":
        return None
    probs = onnx_probs(line.model, data.train_x, cfg.part.normalize, temperature)
    return PartSample(1.0 - probs[:, 0], data.train_y != 0)


def write_splits_csv(parts: PartSet, path: Path) -> Path:
    """The exact split of every image (``path,label,split``, absolute paths): ``qc eval`` can read it back."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for s in SPLITS:
            w.writerows([str(Path(img).resolve()), parts.labels[y], s] for img, y in parts.split(s))
    return path


def part_metrics(trained: Trained, data: PartData, line: LinePart, th: Thresholds, budget: Budget) -> dict:
    """metrics.json's ``train`` section: val classification by the line model, the verdict on val, training."""
    labels = data.parts.labels
    val = classification_metrics(data.val_y, line.val_probs, labels)
    return {
        "classifier": {**val, "temperature": trained.temperature, "epochs": len(trained.history),
                       "best_epoch": trained.best_epoch, "stopped": trained.stopped,
                       "minutes": trained.seconds / 60, "line_model": line.model.path.name,
                       "int8_check": line.int8_check},
        "thresholds": {**th.to_dict(), "score": "part"},
        "val_parts": {"parts": len(data.val_y), "defective": int((data.val_y != 0).sum()),
                      "escape_rate": 1.0 - th.val_recall,
                      "false_reject_rate": th.val_false_reject, "review_rate": th.val_review_rate},
        "splits": data.parts.summary(),
        "minutes_total": budget.minutes_used(),
    }


def write_part_run(out: Path, data: Path, cfg: QCConfig, parts: PartSet, metrics: dict) -> dict:
    """run.json of a part run (``mode: "part"``): labels, the good class, the model files and their hashes."""
    line = metrics["classifier"]["line_model"]
    headline = {"val_accuracy": metrics["classifier"]["accuracy"], "val_auroc": metrics["classifier"]["auroc"],
                "val_escape_rate": metrics["val_parts"]["escape_rate"],
                "val_false_reject_rate": metrics["val_parts"]["false_reject_rate"],
                "minutes_total": metrics["minutes_total"]}
    return write_run_json(out, vertical="industrial_qc", labels=parts.labels, config=config_snapshot(cfg),
                          data_fingerprint=parts.fingerprint(), metrics=headline, mode="part",
                          good_label=parts.good_label, models={"classifier": PART_ONNX, "line": line},
                          data=str(Path(data).resolve()), splits=metrics["splits"], made_splits=parts.made_splits,
                          artifacts={"classifier": PART_ONNX, "line_classifier": line, "splits": "splits.csv",
                                     "checkpoints": "checkpoints", "metrics": "metrics.json", "plots": "plots"})


def train_part_run(data: Path | str, cfg: QCConfig, out: Path | str, console: Console | None = None
                   ) -> TrainOutcome | None:
    """Train the part classifier on the image-level dataset ``data`` into run directory ``out``.

    Under torchrun every rank decodes the data and trains (DDP); rank 0 alone writes ``out`` and prints, and the
    other ranks return None after the fit."""
    console = distributed.quiet_unless_main(console)
    budget = Budget.begin(cfg.max_minutes)
    seed_everything(cfg.seed)
    threads = set_torch_threads(cfg.threads)
    device = pick_device(cfg.device)
    distributed.init(device)
    data, out = Path(data), Path(out)
    pdata = load_part_data(data, cfg, threads, console)
    if distributed.is_main():
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    trained = train_part_classifier(cfg, pdata, out, budget.classifier_deadline(), device, console)
    if not distributed.is_main():
        return None

    fp32 = out / PART_ONNX
    export_part_classifier(trained.net, cfg.part.image_size, fp32,
                           part_metadata(cfg, pdata.parts, trained.temperature, out))
    line = line_part_classifier(cfg.part.line_precision, fp32, pdata.train_x, pdata.val_x, cfg.part.normalize,
                                trained.temperature, console)
    th = part_thresholds(cfg.verdict, line.val_probs, pdata.val_y,
                         train_reference(cfg, pdata, line, trained.temperature))
    metrics = part_metrics(trained, pdata, line, th, budget)
    store_part_thresholds(metrics["thresholds"], [fp32, line.model.path])
    _plots(out / "plots", metrics["classifier"]["confusion_matrix"], pdata, line, th)
    write_splits_csv(pdata.parts, out / "splits.csv")
    (out / "metrics.json").write_text(json.dumps({"train": metrics}, indent=2, default=float))
    return TrainOutcome(out, write_part_run(out, data, cfg, pdata.parts, metrics), metrics)


def part_summary_rows(m: dict) -> list[tuple[str, object]]:
    """The rows ``qc train`` prints for a part run (from metrics.json's ``train`` section)."""
    c, v = m["classifier"], m["val_parts"]
    return [("val accuracy", c["accuracy"]), ("val balanced accuracy", c["balanced_accuracy"]),
            ("val AUROC", c["auroc"]), ("epochs", c["epochs"]), ("temperature", c["temperature"]),
            ("fail threshold", m["thresholds"]["fail"]), ("review threshold", m["thresholds"]["review"]),
            ("escape rate", v["escape_rate"]), ("false-reject rate", v["false_reject_rate"]),
            ("review rate", v["review_rate"]), ("line model", c["line_model"]), ("minutes", m["minutes_total"])]


def _plots(plot_dir: Path, confusion: list[list[int]], data: PartData, line: LinePart, th: Thresholds) -> None:
    """Confusion matrix of the line model on val; ROC of the defect score with the chosen thresholds marked."""
    from sklearn.metrics import roc_curve

    from common.plots import pyplot, save_confusion_matrix

    save_confusion_matrix(plot_dir / "confusion_matrix.png", confusion, data.parts.labels, "part classifier, val")
    score, defective = 1.0 - line.val_probs[:, 0], data.val_y != 0
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    if defective.any() and (~defective).any():
        fpr, tpr, _ = roc_curve(defective, score)
        ax.plot(fpr, tpr, label="defective vs good")
        for t, name in ((th.review, "review"), (th.fail, "fail")):
            ax.scatter([(score[~defective] >= t).mean()], [(score[defective] >= t).mean()], label=f"{name} >= {t:.3f}")
    ax.set(xlabel="false-positive rate", ylabel="recall", xlim=(-0.02, 1.02), ylim=(0, 1.02), title="val parts")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(plot_dir / "roc_curve.png", dpi=100)
    plt.close(fig)

