"""Classification metrics on numpy arrays, computed with scikit-learn.

Inputs: ``y_true`` (N,) int class indices, ``probs`` (N, C) float rows summing to 1. Outputs are plain
Python values (JSON-able) so they go straight into metrics.json and run.json.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE of the top-1 prediction: sum over equal-width confidence bins of |accuracy - confidence| * bin share.

    sklearn's ``calibration_curve`` gives per-bin accuracy and confidence but drops empty bins and does not
    return their weights, so the bins come from ``np.digitize`` on the same equal-width edges.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if len(y_true) == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def macro_auroc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """One-vs-rest macro AUROC; for two classes the AUROC of the positive (index 1) column.

    None when undefined (a class absent from ``y_true``).
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if n_classes == 2:
        return float(skm.roc_auc_score(y_true, probs[:, 1]))
    if len(present) < n_classes:
        # sklearn refuses multiclass AUROC with absent classes; average over the classes present.
        scores = [skm.roc_auc_score(y_true == c, probs[:, c]) for c in present]
        return float(np.mean(scores))
    return float(skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=list(range(n_classes))))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support, confusion matrix, macro AUROC, ECE."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    idx = list(range(len(labels)))
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=idx, zero_division=0
    )
    out: dict = {
        "n": len(y_true),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(labels)
        },
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=idx).tolist(),
        "auroc": macro_auroc(y_true, probs) if len(y_true) else None,
        "ece": expected_calibration_error(y_true, probs),
    }
    return out


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if len(y_true) == 0:
        return 0.0
    # sklearn warns (and averages only present classes) when a predicted class is absent from y_true; that is
    # the definition we want: mean recall over the classes that occur.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(skm.balanced_accuracy_score(y_true, y_pred))


def threshold_for_recall(y_true_binary: np.ndarray, scores: np.ndarray, target_recall: float) -> float:
    """Highest threshold ``t`` such that predicting positive when ``score >= t`` reaches ``target_recall``.

    Uses sklearn's precision-recall curve; with no positives returns +inf (nothing needs catching).
    """
    y = np.asarray(y_true_binary).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    if not y.any():
        return float("inf")
    _, recall, thresholds = skm.precision_recall_curve(y, s)
    # recall[i] is the recall at thresholds[i] (recall is non-increasing along thresholds).
    ok = np.nonzero(recall[:-1] >= target_recall - 1e-12)[0]
    if len(ok) == 0:
        return float(s[y].min())
    return float(thresholds[ok[-1]])


def binary_rates(y_true_binary: np.ndarray, y_pred_binary: np.ndarray) -> dict:
    """Sensitivity, specificity and the confusion counts of a binary decision."""
    y = np.asarray(y_true_binary).astype(bool)
    p = np.asarray(y_pred_binary).astype(bool)
    tn, fp, fn, tp = skm.confusion_matrix(y, p, labels=[False, True]).ravel()
    return {
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
    }
