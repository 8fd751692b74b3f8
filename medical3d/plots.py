"""Evaluation plots (ROC, confusion matrix, calibration curve) and Grad-CAM figures, as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.plots import pyplot, save_confusion_matrix
from medical3d.verdict import DecisionRule


def _plt():
    return pyplot()


def write_all(out_dir: Path, y: np.ndarray, probs: np.ndarray, rule: DecisionRule, title: str = "") -> list[Path]:
    """roc.png, confusion.png and calibration.png for targets ``y`` (N,) and calibrated ``probs`` (N, C)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [roc(out_dir / "roc.png", y, probs, rule, title),
            confusion(out_dir / "confusion.png", y, probs, rule, title),
            calibration(out_dir / "calibration.png", y, probs, rule, title)]


def roc(path: Path, y: np.ndarray, probs: np.ndarray, rule: DecisionRule, title: str = "") -> Path:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    pos = rule.positive_index
    yb = np.asarray(y) == pos
    if yb.any() and (~yb).any():
        fpr, tpr, _ = roc_curve(yb, probs[:, pos])
        ax.plot(fpr, tpr, lw=2, label=f"AUROC {roc_auc_score(yb, probs[:, pos]):.3f}")
        pred = probs[:, pos] >= rule.threshold
        ax.scatter([(pred & ~yb).sum() / (~yb).sum()], [(pred & yb).sum() / yb.sum()], c="red", zorder=3,
                   label=f"threshold {rule.threshold:.3f}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "ROC undefined: one class only", ha="center")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC {title}".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion(path: Path, y: np.ndarray, probs: np.ndarray, rule: DecisionRule, title: str = "") -> Path:
    from sklearn.metrics import confusion_matrix

    labels = rule.labels
    pred = [labels.index(p) for p in rule.predicted_labels(probs)]
    cm = confusion_matrix(np.asarray(y, dtype=int), pred, labels=list(range(len(labels))))
    return save_confusion_matrix(path, cm, labels, f"confusion at threshold {rule.threshold:.3f} {title}".strip())


def calibration(path: Path, y: np.ndarray, probs: np.ndarray, rule: DecisionRule, title: str = "") -> Path:
    from sklearn.calibration import calibration_curve

    plt = _plt()
    pos = rule.positive_index
    yb = (np.asarray(y) == pos).astype(int)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if len(np.unique(yb)) == 2:
        frac, mean = calibration_curve(yb, probs[:, pos], n_bins=min(10, max(2, len(yb) // 3)))
        ax.plot(mean, frac, "o-", label=f"T = {rule.temperature:.2f}")
        ax.legend(loc="upper left")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel=f"predicted p({rule.positive_label})", ylabel="observed fraction",
           title=f"calibration {title}".strip(), xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gradcam_views(path: Path, volume: np.ndarray, cam: np.ndarray, title: str = "") -> tuple[int, int, int]:
    """Axial, coronal and sagittal slices through the hottest CAM voxel, CAM over the volume.

    volume, cam: (D, H, W) = (z, y, x) arrays of the preprocessed grid. Returns the hottest (z, y, x).
    """
    plt = _plt()
    z, yy, x = (int(v) for v in np.unravel_index(int(np.argmax(cam)), cam.shape))
    views = [("axial", volume[z], cam[z]), ("coronal", volume[:, yy, :], cam[:, yy, :]),
             ("sagittal", volume[:, :, x], cam[:, :, x])]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, (name, img, heat) in zip(axes, views, strict=True):
        origin = "upper" if name == "axial" else "lower"
        ax.imshow(img, cmap="gray", origin=origin)
        ax.imshow(heat, cmap="jet", alpha=0.35, vmin=0, vmax=1, origin=origin)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(f"{title}  hottest voxel (z, y, x) = ({z}, {yy}, {x})".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return z, yy, x
