"""Two-stage inference from a run directory, on onnxruntime only (no torch import on this path).

image (H, W, 3) uint8 BGR -> letterbox (resize, flat-field, pad) -> detector.onnx -> decode + NMS -> padded square
crops -> the line classifier (classifier.int8.onnx, else classifier.onnx; one batch per image) -> temperature
softmax -> verdict rule -> one result dict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from common.errors import InputError
from common.inference import OnnxModel, softmax
from common.results import error_record, now_iso
from common.rundir import read_run_json, verify_model_file
from industrial_qc.crops import IMAGENET_MEAN, IMAGENET_STD, NORMALIZE_KINDS, crops_for_boxes, to_tensor_batch
from industrial_qc.flatfield import fit_to, flatfield
from industrial_qc.images import ImageLimits
from industrial_qc.part_pipeline import HeatmapTarget, PartPipeline, run_mode
from industrial_qc.verdict import (
    SCORE_KINDS,
    ScoreKind,
    candidate_scores,
    check_thresholds,
    part_verdict,
    score_kind,
)

PAD_VALUE = 114  # Ultralytics' letterbox grey
LINE_CLASSIFIER_INT8 = "classifier.int8.onnx"


def line_classifier_path(run_dir: Path | str, run: dict) -> Path:
    """The classifier file the line runs: run.json's ``artifacts.line_classifier`` (the int8 copy when training
    made and accepted one), else ``classifier.onnx`` (runs from before the int8 copy existed)."""
    return Path(run_dir) / ((run.get("artifacts") or {}).get("line_classifier") or "classifier.onnx")


# ------------------------------------------------------------------------------------------------ detector
def letterbox(img: np.ndarray, size: tuple[int, int], flatfield_params: dict | None = None
              ) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping aspect ratio and pad (grey 114) to ``size`` (h, w), centred as Ultralytics does; with
    ``flatfield_params`` the resized image is flat-fielded before the padding (the detector's input transform).

    Returns the padded image, the scale ``r`` and the padding (left, top) so boxes map back with
    ``(xy - pad) / r``.
    """
    img, r = fit_to(img, size)
    nh, nw = img.shape[:2]
    if flatfield_params is not None:
        img = flatfield(img, **flatfield_params)
    dw, dh = (size[1] - nw) / 2, (size[0] - nh) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    if top or bottom or left or right:
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return img, r, (left, top)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """Greedy class-agnostic NMS on (N, 4) xyxy boxes; indices of kept boxes, best first."""
    order = np.argsort(-scores)
    keep: list[int] = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while len(order) and len(keep) < max_det:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        ious = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[ious <= iou]
    return np.array(keep, np.int64)


@dataclass
class Detections:
    """Boxes (K, 4) xyxy in original image pixels, scores (K,), classes (K,) detector class ids, and
    class_scores (K, nc): the detector's score for every class (None when made without them)."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    class_scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, keep: np.ndarray) -> Detections:
        """The detections at ``keep`` (indices or a mask), every field alike."""
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep],
                          None if self.class_scores is None else self.class_scores[keep])


def decode(output: np.ndarray, conf: float, iou: float, max_det: int, min_keep: int = 0,
           floor: float | None = None) -> Detections:
    """Ultralytics Detect head output (1, 4 + nc, A) [cx, cy, w, h, class scores] -> NMS'd detections
    in input (letterboxed) pixels, best first. Class-agnostic NMS: overlapping candidates make one crop.

    Detections score >= ``conf``; when fewer than ``min_keep`` do, the best ``min_keep`` scoring >= ``floor``
    are kept instead (greedy NMS decides in score order, so those above ``conf`` come first and are the same)."""
    pred = output[0].T  # (A, 4 + nc)
    cls_scores = pred[:, 4:]
    cls = cls_scores.argmax(axis=1)
    score = cls_scores[np.arange(len(cls)), cls]
    det = _nms_above(pred, score, cls, conf, iou, max_det)
    if len(det) < min_keep and floor is not None and floor < conf:
        det = _nms_above(pred, score, cls, floor, iou, min_keep)
    return det


def _nms_above(pred: np.ndarray, score: np.ndarray, cls: np.ndarray, conf: float, iou: float,
               max_det: int) -> Detections:
    m = score >= conf
    if not m.any():
        return Detections()
    p, score, cls = pred[m], score[m], cls[m]
    xy, wh = p[:, :2], p[:, 2:4]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
    keep = nms(boxes, score, iou, max_det)
    return Detections(boxes[keep].astype(np.float32), score[keep].astype(np.float32), cls[keep].astype(np.int64),
                      p[keep, 4:].astype(np.float32))


class OnnxDetector:
    """detector.onnx (exported by Ultralytics, static batch 1) with letterbox pre- and NMS post-processing."""

    def __init__(self, path: Path | str, threads: int | None = None) -> None:
        m = self.model = OnnxModel(path, threads=threads)
        shape = m.input_shape
        if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
            raise InputError(f"{m.path}: input shape {shape}: expected a fixed (1, 3, H, W) image")
        self.imgsz = (int(shape[2]), int(shape[3]))
        md = m.metadata
        out = m.output_shape  # (1, 4 + nc, anchors)
        nc = out[1] - 4 if len(out) == 3 and isinstance(out[1], int) else None
        self.labels: list[str] = m.checked_labels(nc) if "labels" in md else []
        self.conf = m.number("conf", 0.05, low=0.0, high=1.0, low_open=True)
        self.iou = m.number("iou", 0.5, low=0.0, high=1.0, low_open=True)
        self.max_det = m.number("max_det", 20, low=1, integer=True)
        # the best min_candidates detections down to floor_conf are kept even below conf (runs before: none)
        self.min_candidates = m.number("min_candidates", 0, low=0, integer=True)
        self.floor_conf = m.number("floor_conf", self.conf, low=0.0, high=self.conf, low_open=True)
        # runs exported before the transform existed have no "flatfield" entry: raw input
        self.flatfield: dict | None = (md.get("preprocessing") or {}).get("flatfield")
        if self.flatfield is not None:
            bad = {k: v for k, v in self.flatfield.items()
                   if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) or v <= 0}
            if bad:
                raise InputError(f"{m.path}: metadata preprocessing.flatfield {bad}: expected finite numbers > 0")

    def __call__(self, img: np.ndarray, conf: float | None = None, iou: float | None = None,
                 max_det: int | None = None) -> Detections:
        padded, r, (left, top) = letterbox(img, self.imgsz, self.flatfield)
        x = padded[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) * (1.0 / 255.0)
        out = self.model.run(x)
        det = decode(out, self.conf if conf is None else conf, self.iou if iou is None else iou,
                     self.max_det if max_det is None else max_det, self.min_candidates, self.floor_conf)
        if len(det):
            det.boxes[:, [0, 2]] = (det.boxes[:, [0, 2]] - left) / r
            det.boxes[:, [1, 3]] = (det.boxes[:, [1, 3]] - top) / r
            h, w = img.shape[:2]
            det.boxes[:, [0, 2]] = det.boxes[:, [0, 2]].clip(0, w)
            det.boxes[:, [1, 3]] = det.boxes[:, [1, 3]].clip(0, h)
        return det


# ---------------------------------------------------------------------------------------------- classifier
class OnnxClassifier:
    """classifier.onnx: (B, 3, S, S) normalised RGB crops -> logits (B, C); class 0 is ``background``."""

    def __init__(self, path: Path | str, threads: int | None = None) -> None:
        m = self.model = OnnxModel(path, threads=threads)
        md = m.metadata
        out = m.output_shape  # (B, C)
        self.labels: list[str] = m.checked_labels(out[-1] if len(out) == 2 else None)
        if self.labels[0] != "background":
            raise InputError(f"{path}: first label must be 'background', got {self.labels[0]!r}")
        self.crop_size = m.number("crop_size", low=2, integer=True)
        if len(m.input_shape) != 4 or any(isinstance(d, int) and d != self.crop_size for d in m.input_shape[2:]):
            raise InputError(f"{path}: input shape {m.input_shape} does not take {self.crop_size}-px crops "
                             "(metadata crop_size)")
        self.context = m.number("context", low=0.0)
        self.min_crop = m.number("min_crop", low=0.0, high=1.0, low_open=True)
        self.mean = self._triple("mean", IMAGENET_MEAN)
        self.std = self._triple("std", IMAGENET_STD)
        if min(self.std) <= 0:
            raise InputError(f"{path}: metadata std={list(self.std)}: must be > 0")
        self.temperature = m.number("temperature", 1.0, low=0.0, low_open=True)
        self.normalize = str(md.get("normalize", "imagenet"))
        if self.normalize not in NORMALIZE_KINDS:
            raise InputError(f"{path}: metadata normalize={self.normalize!r}: expected one of "
                             f"{', '.join(NORMALIZE_KINDS)}")

    def _triple(self, key: str, default: tuple) -> tuple[float, ...]:
        v = self.model.metadata.get(key, list(default))
        if not isinstance(v, list | tuple) or len(v) != 3 or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x) for x in v):
            raise InputError(f"{self.model.path}: metadata {key}={v!r}: expected three finite numbers")
        return tuple(float(x) for x in v)

    def crops(self, img: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return crops_for_boxes(img, boxes, self.crop_size, self.context, self.min_crop)

    def tensors(self, crops_bgr: np.ndarray) -> np.ndarray:
        """(K, S, S, 3) uint8 BGR crops -> (K, 3, S, S) float32, normalised as the model was trained."""
        return to_tensor_batch(crops_bgr, self.mean, self.std, self.normalize)

    def logits(self, crops_bgr: np.ndarray) -> np.ndarray:
        return self.model.run(self.tensors(crops_bgr))

    def probs(self, crops_bgr: np.ndarray) -> np.ndarray:
        """(K, S, S, 3) uint8 -> (K, C) calibrated probabilities (softmax of logits / temperature)."""
        if len(crops_bgr) == 0:
            return np.zeros((0, len(self.labels)), np.float64)
        return softmax(self.logits(crops_bgr), self.temperature)


# ------------------------------------------------------------------------------------------------ pipeline
def class_index(det_labels: list[str], cls_labels: list[str]) -> np.ndarray | None:
    """For each defect class of the classifier (``cls_labels[1:]``), its index among the detector's labels; None
    when the detector does not name every one of them (then candidates are named by the classifier alone)."""
    idx = [det_labels.index(c) if c in det_labels else -1 for c in cls_labels[1:]]
    return None if -1 in idx or not idx else np.array(idx, np.int64)


def defect_class_probs(probs: np.ndarray, det: Detections, det_index: np.ndarray | None) -> np.ndarray:
    """(K, C - 1): what each candidate is, given that it is a defect. The classifier's defect-class probabilities
    (background left out) times the detector's class scores, each normalised to sum to 1 (a product of experts).

    The two stages confuse the same pair of classes for different reasons: the classifier sees a padded crop
    resampled to its input, the detector the whole part at native scale, so together they name defects more
    often right than either alone. Without the detector's class scores (``det_index`` None, or detections without
    them): the classifier's."""
    p = probs[:, 1:].astype(np.float64)
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
    if det_index is None or det.class_scores is None or len(det.class_scores) != len(p):
        return p
    s = np.clip(det.class_scores[:, det_index].astype(np.float64), 1e-6, None)
    f = p * (s / s.sum(axis=1, keepdims=True))
    return f / np.maximum(f.sum(axis=1, keepdims=True), 1e-300)


def model_thresholds(classifier: OnnxClassifier, run_dir: Path) -> tuple[float, float, ScoreKind]:
    """(fail, review, score) from the classifier's ONNX metadata ``thresholds``: their one home. A model without
    them, or with thresholds that cannot judge, is an InputError naming the file."""
    name = classifier.model.path.name
    th = classifier.model.metadata.get("thresholds") or {}
    if not isinstance(th, dict) or "fail" not in th or "review" not in th:
        raise InputError(f"{run_dir}: no verdict thresholds in the metadata of {name}")
    fail, review = check_thresholds(th["fail"], th["review"], f"{run_dir}: verdict thresholds of {name}")
    score = th.get("score", "classifier")
    if score not in SCORE_KINDS:
        raise InputError(f"{run_dir}: unknown verdict score {score!r} in the thresholds of {name} (expected one of "
                         f"{', '.join(SCORE_KINDS)})")
    return fail, review, score


class Pipeline:
    """The whole line model of a run: ``inspect(image)`` -> result dict with verdict and defects."""

    def __init__(self, detector: OnnxDetector, classifier: OnnxClassifier, fail_threshold: float,
                 review_threshold: float, run_id: str = "", score: ScoreKind = "classifier",
                 limits: ImageLimits | None = None) -> None:
        score = score_kind(score)
        self.fail_threshold, self.review_threshold = check_thresholds(fail_threshold, review_threshold,
                                                                      "verdict thresholds")
        self.limits = limits or ImageLimits()  # what read_image accepts as a part (config ``input``)
        self.detector = detector
        self.classifier = classifier
        self.run_id = run_id
        self.score = score  # what the thresholds apply to (industrial_qc.verdict.candidate_scores)
        self.class_index = class_index(detector.labels, classifier.labels)  # naming: defect_class_probs

    @classmethod
    def from_run(cls, run_dir: Path | str, threads: int | None = None, run: dict | None = None) -> Pipeline:
        """Load ``detector.onnx``, the line classifier (``line_classifier_path``) and the verdict thresholds from
        the line classifier's ONNX metadata (a run without a recorded ``score`` set them on the classifier's
        probability)."""
        run_dir = Path(run_dir)
        run = run or read_run_json(run_dir)
        if run.get("vertical") != "industrial_qc":
            raise InputError(f"{run_dir}/run.json: vertical is {run.get('vertical')!r}, not industrial_qc")
        for name in ("detector.onnx", line_classifier_path(run_dir, run).name):
            verify_model_file(run, run_dir / name)
        detector = OnnxDetector(run_dir / "detector.onnx", threads)
        classifier = OnnxClassifier(line_classifier_path(run_dir, run), threads)
        fail, review, score = model_thresholds(classifier, run_dir)
        return cls(detector, classifier, fail, review, run["run_id"], score,
                   ImageLimits.from_config((run.get("config") or {}).get("input")))

    def defect_scores(self, det: Detections, probs: np.ndarray) -> np.ndarray:
        """(K,) what the verdict reads for each candidate (``industrial_qc.verdict.candidate_scores``)."""
        return candidate_scores(1.0 - probs[:, 0], det.scores, self.score)

    def analyse(self, img: np.ndarray, det: Detections | None = None) -> tuple[Detections, np.ndarray, dict]:
        """Detections, their class probabilities (K, C) and stage timings in ms (``det`` reuses detections)."""
        t0 = time.perf_counter()
        if det is None:
            det = self.detector(img)
        t1 = time.perf_counter()
        probs = self.classifier.probs(self.classifier.crops(img, det.boxes))
        t2 = time.perf_counter()
        return det, probs, {"detect_ms": (t1 - t0) * 1e3, "classify_ms": (t2 - t1) * 1e3}

    def inspect(self, img: np.ndarray) -> dict:
        """One part -> {verdict, max_defect_score, max_defect_prob, defects: [...], n_candidates, detect_ms,
        classify_ms}."""
        det, probs, timing = self.analyse(img)
        return self.result(det, probs, timing)

    def result(self, det: Detections, probs: np.ndarray, timing: dict | None = None) -> dict:
        """The part's verdict, scores and reported defects from its detections and class probabilities (K, C)."""
        defect_p = 1.0 - probs[:, 0]  # probs is (K, C), K = 0 without candidates
        score = self.defect_scores(det, probs)
        verdict = part_verdict(score, self.fail_threshold, self.review_threshold)
        named = defect_class_probs(probs, det, self.class_index)
        defects = [self._defect(i, det, probs, named, defect_p, score) for i in np.argsort(-score)
                   if not score[i] < self.review_threshold]  # below: a candidate the two stages rejected
        bad = int(len(score) - np.isfinite(score).sum())
        return {
            "verdict": verdict,
            "max_defect_score": round(float(np.nanmax(score)), 4) if len(score) > bad else 0.0,
            "max_defect_prob": round(float(np.nanmax(defect_p)), 4) if np.isfinite(defect_p).any() else 0.0,
            "defects": defects,
            "n_candidates": len(det),
            **({"verdict_note": f"{bad} candidate(s) with a non-finite score: not passed"} if bad else {}),
            **({k: round(v, 2) for k, v in timing.items()} if timing else {}),
        }

    def _defect(self, i: int, det: Detections, probs: np.ndarray, named: np.ndarray, defect_p: np.ndarray,
                score: np.ndarray) -> dict:
        """The reported defect of candidate ``i``: its name from both stages, each stage's own view, its score."""
        labels, det_names = self.classifier.labels, self.detector.labels
        k = int(np.argmax(probs[i, 1:]) + 1)
        c = int(det.classes[i])
        n = int(np.argmax(named[i]))
        return {
            "class": labels[n + 1],  # what the part is reported with: both stages (defect_class_probs)
            "class_prob": round(float(named[i, n]), 4),
            "box": [round(float(v), 1) for v in det.boxes[i]],
            "det_class": det_names[c] if c < len(det_names) else str(c),
            "det_conf": round(float(det.scores[i]), 4),
            "cls_class": labels[k],
            "cls_prob": round(float(probs[i, k]), 4),
            "defect_prob": round(float(defect_p[i]), 4),  # the classifier's 1 - P(background)
            "defect_score": round(float(score[i]), 4),  # what the verdict reads (the classifier's thresholds.score)
            "level": "fail" if score[i] >= self.fail_threshold else "review",
        }


def load_pipeline(run_dir: Path | str, threads: int | None = None, run: dict | None = None
                  ) -> Pipeline | PartPipeline:
    """The run's line model by run.json ``mode``: the two-stage ``Pipeline`` or the part classifier's."""
    run = run or read_run_json(run_dir)
    kind = PartPipeline if run_mode(run, run_dir) == "part" else Pipeline
    return kind.from_run(run_dir, threads=threads, run=run)


def part_record(pipe: Pipeline | PartPipeline, img: np.ndarray, source: str, decode_ms: float,
                heatmap: HeatmapTarget | None = None, **fields) -> dict:
    """The record of one decoded part (the line's and batch scoring's): the pipeline's result, image size and
    timings; an inference failure is this part's error record, never an exception. ``heatmap``: where a part
    run's FAIL / REVIEW heatmap goes (``PartPipeline.inspect``)."""
    t0 = time.perf_counter()
    base = {"file": source, "run_id": pipe.run_id, **fields}
    try:
        res = pipe.inspect(img) if heatmap is None else pipe.inspect(img, heatmap=heatmap)
    except Exception as exc:
        return error_record(source, f"{source}: inference failed: {type(exc).__name__}: {exc}", **base)
    return {"source": source, "status": "ok", "reason": None, "timestamp": now_iso(), **base,
            "verdict": res.pop("verdict"), **res, "width": int(img.shape[1]), "height": int(img.shape[0]),
            "decode_ms": round(decode_ms, 2), "latency_ms": round(decode_ms + (time.perf_counter() - t0) * 1e3, 2)}


def draw_annotations(img: np.ndarray, result: dict) -> np.ndarray:
    """A copy of ``img`` with each reported defect boxed and labelled (red: FAIL-level, orange: REVIEW-level)."""
    out = img.copy()
    colour = {"FAIL": (0, 0, 255), "REVIEW": (0, 165, 255), "PASS": (0, 200, 0)}
    for d in result.get("defects", []):
        x1, y1, x2, y2 = (round(v) for v in d["box"])
        level = d.get("level") or ("fail" if result["verdict"] == "FAIL" else "review")
        c = colour["FAIL"] if level == "fail" else colour["REVIEW"]
        cv2.rectangle(out, (x1, y1), (x2, y2), c, 1)
        cv2.putText(out, f"{d['class']} {d['defect_prob']:.2f}", (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, c, 1, cv2.LINE_AA)
    cv2.putText(out, result["verdict"], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour[result["verdict"]], 1,
                cv2.LINE_AA)
    return out
