"""The line's classifier: an int8 copy of ``classifier.onnx``, calibrated on training crops, which the line runs
only when it agrees with fp32 on the val candidates (else the line keeps fp32)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from common.export import ExportError, quantize_int8, write_metadata
from industrial_qc.data import Sample, read_image
from industrial_qc.pipeline import LINE_CLASSIFIER_INT8, Detections, OnnxClassifier

CALIBRATION_IMAGES = 64  # training images whose crops set the int8 activation ranges
# The int8 classifier replaces fp32 on the line only if, over the val candidates, its defect probability moves by
# at most INT8_MEAN_DIFF on average and by more than 0.1 on at most INT8_BIG_DIFF_SHARE of them.
INT8_MEAN_DIFF = 0.02
INT8_BIG_DIFF_SHARE = 0.02


@dataclass
class LineClassifier:
    """The classifier the line runs, its class probabilities (K, C) on each val image's candidates, and how the
    int8 copy compared with fp32 (None when no int8 copy was made)."""

    classifier: OnnxClassifier
    val_probs: list[np.ndarray]
    int8_check: dict | None


def calibration_batches(clf: OnnxClassifier, samples: Sequence[Sample], dets: Sequence[Detections]
                        ) -> list[np.ndarray]:
    """``clf``'s input tensors for up to CALIBRATION_IMAGES training images spread over the split (crops of the
    ground-truth boxes and the detector's candidates, one batch per image): what the line classifier will see."""
    idx = np.unique(np.linspace(0, len(samples) - 1, min(CALIBRATION_IMAGES, len(samples))).round().astype(int))
    batches = []
    for i in idx:
        img = read_image(samples[i].image)
        h, w = img.shape[:2]
        boxes = samples[i].boxes_xyxy(w, h)
        if i < len(dets) and len(dets[i]):
            boxes = np.concatenate([boxes, dets[i].boxes])
        if len(boxes):
            batches.append(clf.tensors(clf.crops(img, boxes)))
    return batches


def int8_agreement(ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """How far the int8 classifier's defect probabilities (1 - p(background)) are from fp32's on the same crops."""
    ref, got = [p for p in ref if len(p)], [p for p in got if len(p)]
    if not ref:
        return {"crops": 0, "mean_abs_diff": 0.0, "max_abs_diff": 0.0, "share_diff_over_0.1": 0.0,
                "same_class": 1.0, "used": True}
    r, g = np.concatenate(ref), np.concatenate(got)
    diff = np.abs(r[:, 0] - g[:, 0])
    out = {"crops": len(diff), "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
           "share_diff_over_0.1": float((diff > 0.1).mean()), "same_class": float((r.argmax(1) == g.argmax(1)).mean())}
    out["used"] = bool(out["mean_abs_diff"] <= INT8_MEAN_DIFF and out["share_diff_over_0.1"] <= INT8_BIG_DIFF_SHARE)
    return out


def int8_copy(fp32: OnnxClassifier, train: Sequence[Sample], train_dets: Sequence[Detections], console: Console
              ) -> OnnxClassifier | None:
    """``fp32`` quantized to ``LINE_CLASSIFIER_INT8`` next to it, calibrated on training crops; None (and a
    note on ``console``) when quantization fails."""
    try:
        batches = calibration_batches(fp32, train, train_dets)
        int8_path = fp32.model.path.parent / LINE_CLASSIFIER_INT8
        quantize_int8(fp32.model.path, int8_path, batches,
                      {"precision": "int8", "calibration_crops": int(sum(len(b) for b in batches))})
        return OnnxClassifier(int8_path)
    except ExportError as exc:
        console.print(f"[yellow]  {exc}; the line uses the fp32 classifier[/]")
        return None


def val_probs(classifiers: Sequence[OnnxClassifier], images: Sequence[np.ndarray], dets: Sequence[Detections]
              ) -> list[list[np.ndarray]]:
    """Each classifier's class probabilities on the candidates of each val image, all from the same crops (made
    with the first classifier's crop geometry, which an int8 copy shares)."""
    out: list[list[np.ndarray]] = [[] for _ in classifiers]
    for img, d in zip(images, dets, strict=True):
        crops = classifiers[0].crops(img, d.boxes)
        for probs, clf in zip(out, classifiers, strict=True):
            probs.append(clf.probs(crops))
    return out


def line_classifier(precision: str, fp32_path: Path, train: Sequence[Sample], train_dets: Sequence[Detections],
                    val_images: Sequence[np.ndarray], val_dets: Sequence[Detections], console: Console
                    ) -> LineClassifier:
    """The line's classifier for ``classifier.line_precision``: with ``int8``, the int8 copy when it agrees with
    fp32 on the val candidates (its agreement written into its metadata), else fp32 (the copy deleted)."""
    fp32 = OnnxClassifier(fp32_path)
    (fp32_path.parent / LINE_CLASSIFIER_INT8).unlink(missing_ok=True)  # a stale copy from an earlier run here
    int8 = int8_copy(fp32, train, train_dets, console) if precision == "int8" else None
    if int8 is None:
        return LineClassifier(fp32, val_probs([fp32], val_images, val_dets)[0], None)
    fp32_probs, int8_probs = val_probs([fp32, int8], val_images, val_dets)
    check = int8_agreement(fp32_probs, int8_probs)
    if check["used"]:
        write_metadata(int8.model.path, {"val_agreement": check})
        console.print(f"  line classifier: int8 ({LINE_CLASSIFIER_INT8}); defect probability vs fp32 on "
                      f"{check['crops']} val candidates: mean |diff| {check['mean_abs_diff']:.4f}, "
                      f"same class {check['same_class']:.3f}")
        return LineClassifier(int8, int8_probs, check)
    console.print(f"[yellow]  line classifier: fp32; the int8 copy moved defect probabilities by "
                  f"{check['mean_abs_diff']:.3f} on average ({check['share_diff_over_0.1']:.1%} "
                  "by more than 0.1)[/]")
    int8.model.path.unlink()
    return LineClassifier(fp32, fp32_probs, check)
