"""Image-level inspection from a part-classifier run, on onnxruntime only (no torch on this path).

image (H, W, 3) uint8 BGR -> whole part fitted to the model's square (aspect kept, grey padding:
``industrial_qc.parts.fit_square``) -> part_classifier(.int8).onnx -> logits (1, C) and class activation maps
(1, C, h, w) -> temperature softmax -> defect score 1 - P(good) -> verdict rule -> one result dict; a FAIL or
REVIEW part also gets a heatmap PNG: the CAM of its reported class over the part.

The ``cam`` output is Grad-CAM of the last conv stage: with global average pooling and a linear head, the gradient
of a class logit with respect to each feature map is that class's fc weight over h * w, so Grad-CAM equals
sum_k w[c, k] A_k up to a positive scale, which the graph computes; ReLU and normalisation happen here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np

from common.errors import InputError
from common.inference import OnnxModel, softmax
from common.rundir import read_run_json, verify_model_file
from industrial_qc.crops import IMAGENET_MEAN, IMAGENET_STD, to_tensor_batch
from industrial_qc.images import ImageLimits, write_image
from industrial_qc.parts import fit_square
from industrial_qc.verdict import check_thresholds, part_verdict

PART_MODEL = "part_classifier.onnx"
PART_NORMALIZE = ("imagenet", "per_image")
HEATMAP_MAX_SIDE = 1024  # px; a heatmap of a 20 MP part at full size costs the line a second of PNG encoding
HEATMAP_ALPHA = 0.45  # weight of the colour map over the part

HeatmapTarget = Callable[[], Path]  # where this part's heatmap goes; called only for a FAIL or REVIEW part
RunMode = Literal["detect", "part"]  # run.json ``mode``: box-labelled two-stage runs, or image-level part runs
RUN_MODES: tuple[RunMode, ...] = get_args(RunMode)


def run_mode(run: dict, run_dir: Path | str) -> RunMode:
    """run.json's ``mode`` ("detect" when absent: runs from before part runs existed); InputError when unknown."""
    mode = run.get("mode") or "detect"
    if mode not in RUN_MODES:
        raise InputError(f"{run_dir}/run.json: unknown mode {mode!r} (expected one of {', '.join(RUN_MODES)})")
    return mode


def _triple(model: OnnxModel, key: str, default: tuple) -> tuple[float, float, float]:
    v = model.metadata.get(key, list(default))
    if not isinstance(v, list | tuple) or len(v) != 3 or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x) for x in v):
        raise InputError(f"{model.path}: metadata {key}={v!r}: expected three finite numbers")
    return float(v[0]), float(v[1]), float(v[2])


def _output_index(model: OnnxModel, name: str, ndim: int) -> int:
    """Position of the output ``name`` (rank ``ndim``) among the model's outputs; InputError naming the file."""
    if name not in model.output_names:
        raise InputError(f"{model.path}: no {name!r} output (outputs: {', '.join(model.output_names)}); not a part "
                         "classifier exported by `vsuite qc train`")
    i = model.output_names.index(name)
    shape = model.session.get_outputs()[i].shape
    if len(shape) != ndim:
        raise InputError(f"{model.path}: output {name!r} has shape {shape}, expected {ndim} dimensions")
    return i


def part_thresholds(model: OnnxModel) -> tuple[float, float]:
    """(fail, review) from the model's metadata ``thresholds`` (their one home); InputError naming the file when
    they are missing, cannot judge, or apply to another score than the part's."""
    th = model.metadata.get("thresholds")
    if not isinstance(th, dict) or "fail" not in th or "review" not in th:
        raise InputError(f"{model.path}: no verdict thresholds (fail, review) in the metadata")
    if th.get("score", "part") != "part":
        raise InputError(f"{model.path}: thresholds apply to score {th.get('score')!r}, not the part's ('part')")
    return check_thresholds(th["fail"], th["review"], f"{model.path}: verdict thresholds")


class OnnxPartClassifier:
    """part_classifier.onnx: (B, 3, S, S) normalised whole parts -> logits (B, C) and cam (B, C, h, w); every
    setting it needs comes from its metadata, and a model that cannot say them is refused, naming the file."""

    def __init__(self, path: Path | str, threads: int | None = None) -> None:
        m = self.model = OnnxModel(path, threads=threads)
        md = m.metadata
        if md.get("mode") != "part":
            raise InputError(f"{m.path}: metadata mode={md.get('mode')!r}: not a part classifier (expected 'part')")
        self._logits = _output_index(m, "logits", 2)
        self._cam = _output_index(m, "cam", 4)
        self.labels: list[str] = m.checked_labels(m.session.get_outputs()[self._logits].shape[-1])
        maps = m.session.get_outputs()[self._cam].shape[1]
        if isinstance(maps, int) and maps != len(self.labels):
            raise InputError(f"{m.path}: output 'cam' has {maps} maps for {len(self.labels)} classes")
        self.good_label = md.get("good_label")
        if not isinstance(self.good_label, str) or self.good_label not in self.labels:
            raise InputError(f"{m.path}: metadata good_label={self.good_label!r} is not one of the labels "
                             f"{self.labels}")
        self.good_index = self.labels.index(self.good_label)
        self.size = m.number("input_size", low=2, integer=True)
        if len(m.input_shape) != 4 or any(isinstance(d, int) and d != self.size for d in m.input_shape[2:]):
            raise InputError(f"{m.path}: input shape {m.input_shape} does not take {self.size}-px parts "
                             "(metadata input_size)")
        self.normalize = md.get("normalize")
        if self.normalize not in PART_NORMALIZE:
            raise InputError(f"{m.path}: metadata normalize={self.normalize!r}: expected one of "
                             f"{', '.join(PART_NORMALIZE)}")
        if md.get("resize", "pad") != "pad":
            raise InputError(f"{m.path}: metadata resize={md.get('resize')!r}: only 'pad' (aspect kept) is known")
        self.mean = _triple(m, "mean", IMAGENET_MEAN)
        self.std = _triple(m, "std", IMAGENET_STD)
        if min(self.std) <= 0:
            raise InputError(f"{m.path}: metadata std={list(self.std)}: must be > 0")
        self.temperature = m.number("temperature", 1.0, low=0.0, low_open=True)
        self.fail_threshold, self.review_threshold = part_thresholds(m)

    def tensors(self, squares_bgr: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 BGR (``fit_square``) -> (N, 3, S, S) float32, normalised as the model was trained."""
        kind = "per_crop" if self.normalize == "per_image" else "imagenet"
        return to_tensor_batch(squares_bgr, self.mean, self.std, kind)

    def run(self, squares_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) uint8 BGR -> (calibrated probabilities (N, C) float64, class activation maps (N, C, h, w))."""
        out = self.model.run_all(self.tensors(squares_bgr))
        return softmax(out[self._logits], self.temperature), np.asarray(out[self._cam], np.float32)


# ------------------------------------------------------------------------------------------------ heatmaps
@dataclass(frozen=True)
class Placement:
    """Where ``fit_square`` put an (h, w) image inside its square: the resized size and the top-left offset."""

    width: int
    height: int
    left: int
    top: int

    @classmethod
    def of(cls, h: int, w: int, size: int) -> Placement:
        r = size / max(h, w)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        return cls(nw, nh, (size - nw) // 2, (size - nh) // 2)


def cam_heat(cam: np.ndarray, size: int, image_hw: tuple[int, int], out_hw: tuple[int, int] | None = None
             ) -> np.ndarray:
    """One class's activation map (h, w) -> (H, W) float32 in [0, 1] over the part: ReLU (only what speaks for the
    class), divided by its maximum, resized to the model's square, its padding cut off, resized to ``out_hw``
    (default: the image's (H, W)). A map with nothing positive (or not finite) is all zeros."""
    heat = np.nan_to_num(np.maximum(np.asarray(cam, np.float32), 0.0), nan=0.0, posinf=0.0)
    top = float(heat.max()) if heat.size else 0.0
    heat = heat / top if top > 0 else np.zeros_like(heat)
    square = cv2.resize(heat, (size, size), interpolation=cv2.INTER_LINEAR)
    p = Placement.of(*image_hw, size)
    inner = square[p.top : p.top + p.height, p.left : p.left + p.width]
    h, w = out_hw or image_hw
    return np.clip(cv2.resize(inner, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def overlay_heatmap(img: np.ndarray, heat: np.ndarray, caption: str | None = None) -> np.ndarray:
    """The part (H, W, 3) uint8 BGR with ``heat`` (H, W) in [0, 1] overlaid as a JET colour map (blue cold, red
    hot), captioned in the top-left corner."""
    colour = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(img, 1.0 - HEATMAP_ALPHA, colour, HEATMAP_ALPHA, 0.0)
    if caption:
        scale = max(0.35, min(out.shape[:2]) / 500)
        thick = max(1, round(scale))
        (_, th), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        for c, t in (((0, 0, 0), thick + 2), ((255, 255, 255), thick)):  # outlined: legible on any colour
            cv2.putText(out, caption, (4, 4 + th), cv2.FONT_HERSHEY_SIMPLEX, scale, c, t, cv2.LINE_AA)
    return out


def heatmap_image(img: np.ndarray, cam: np.ndarray, size: int, caption: str | None = None) -> np.ndarray:
    """The heatmap picture of one part: ``cam`` (h, w) of the reported class over ``img``, at most
    ``HEATMAP_MAX_SIDE`` px on its longer side."""
    h, w = img.shape[:2]
    r = min(1.0, HEATMAP_MAX_SIDE / max(h, w))
    shown = img if r == 1.0 else cv2.resize(img, (max(1, round(w * r)), max(1, round(h * r))),
                                            interpolation=cv2.INTER_AREA)
    return overlay_heatmap(shown, cam_heat(cam, size, (h, w), shown.shape[:2]), caption)


# ------------------------------------------------------------------------------------------------ pipeline
@dataclass
class PartAnalysis:
    """What the classifier saw in one part: probabilities (C,), activation maps (C, h, w), the image's (H, W)."""

    probs: np.ndarray
    cam: np.ndarray
    image_hw: tuple[int, int]
    classify_ms: float


class PartPipeline:
    """The line model of a part-classifier run: ``inspect(image)`` -> result dict with verdict, class
    probabilities and, for FAIL / REVIEW parts given a ``HeatmapTarget``, the path of the heatmap written."""

    mode = "part"

    def __init__(self, classifier: OnnxPartClassifier, run_id: str = "", limits: ImageLimits | None = None) -> None:
        self.classifier = classifier
        self.fail_threshold = classifier.fail_threshold
        self.review_threshold = classifier.review_threshold
        self.labels = classifier.labels
        self.good_label, self.good_index = classifier.good_label, classifier.good_index
        self.defect_index = np.array([i for i in range(len(self.labels)) if i != self.good_index], np.int64)
        self.run_id = run_id
        self.limits = limits or ImageLimits()  # what read_image accepts as a part (config ``input``)

    @classmethod
    def from_run(cls, run_dir: Path | str, threads: int | None = None, run: dict | None = None) -> PartPipeline:
        """The run's line model (run.json ``models.line``, else ``models.classifier``, else part_classifier.onnx),
        checked against run.json: its hash, and the labels and good class training recorded."""
        run_dir = Path(run_dir)
        run = run or read_run_json(run_dir)
        if run.get("vertical") != "industrial_qc" or run.get("mode") != "part":
            raise InputError(f"{run_dir}/run.json: vertical {run.get('vertical')!r} mode {run.get('mode')!r}: not a "
                             "part-classifier run of industrial_qc")
        path = line_model_path(run_dir, run)
        verify_model_file(run, path)
        clf = OnnxPartClassifier(path, threads)
        for key, have in (("labels", clf.labels), ("good_label", clf.good_label)):
            if key in run and run[key] != have:
                raise InputError(f"{path}: metadata {key} {have!r} differ from run.json's {run[key]!r}")
        return cls(clf, run["run_id"], ImageLimits.from_config((run.get("config") or {}).get("input")))

    def analyse(self, img: np.ndarray) -> PartAnalysis:
        t0 = time.perf_counter()
        probs, cam = self.classifier.run(fit_square(img, self.classifier.size)[None])
        return PartAnalysis(probs[0], cam[0], img.shape[:2], (time.perf_counter() - t0) * 1e3)

    def reported_class(self, probs: np.ndarray) -> int:
        """Index of the most probable defect class (the first one when none is a number)."""
        p = np.nan_to_num(probs[self.defect_index], nan=-1.0)
        return int(self.defect_index[int(np.argmax(p))])

    def result(self, an: PartAnalysis) -> dict:
        """The part's verdict and scores: defect score 1 - P(good); NaN (a model that cannot judge) -> REVIEW."""
        p = an.probs.astype(np.float64)
        score = float(np.clip(1.0 - p[self.good_index], 0.0, 1.0)) if np.isfinite(p).all() else float("nan")
        verdict = part_verdict([score], self.fail_threshold, self.review_threshold)
        k = self.reported_class(p)
        finite = np.isfinite(score)
        return {
            "verdict": verdict,
            "mode": self.mode,
            "max_defect_score": round(score, 4) if finite else 0.0,
            "max_defect_prob": round(score, 4) if finite else 0.0,
            "class": self.labels[k],
            "class_prob": round(float(p[k]), 4),
            "probabilities": {lbl: round(float(v), 4) for lbl, v in zip(self.labels, p, strict=True)},
            "defects": [],
            "n_candidates": 0,
            **({} if finite else {"verdict_note": "non-finite class probabilities: not passed"}),
            "classify_ms": round(an.classify_ms, 2),
        }

    def inspect(self, img: np.ndarray, heatmap: HeatmapTarget | None = None) -> dict:
        """One part -> result dict (``result``); with ``heatmap``, a FAIL or REVIEW part's heatmap PNG is written
        where it says and its path recorded (a failed write is noted, never the part's error)."""
        an = self.analyse(img)
        res = self.result(an)
        if heatmap is not None and res["verdict"] != "PASS":
            res.update(self.write_heatmap(img, an, res, heatmap))
        return res

    def heatmap(self, img: np.ndarray, an: PartAnalysis | None = None, class_name: str | None = None
                ) -> np.ndarray:
        """The heatmap picture (BGR) of ``class_name`` (default: the reported class) over the part."""
        an = an or self.analyse(img)
        k = self.labels.index(class_name) if class_name is not None else self.reported_class(an.probs)
        return heatmap_image(img, an.cam[k], self.classifier.size, f"{self.labels[k]} {an.probs[k]:.2f}")

    def write_heatmap(self, img: np.ndarray, an: PartAnalysis, res: dict, target: HeatmapTarget) -> dict:
        t0 = time.perf_counter()
        try:
            path = write_image(target(), self.heatmap(img, an, res["class"]))
        except Exception as exc:  # the verdict stands without its picture: a full disk must not stop the line
            return {"heatmap": None, "heatmap_error": f"{type(exc).__name__}: {exc}"}
        return {"heatmap": str(path), "heatmap_ms": round((time.perf_counter() - t0) * 1e3, 2)}


def line_model_path(run_dir: Path | str, run: dict) -> Path:
    """The part classifier the line runs: run.json ``models.line`` (the int8 copy when training accepted one),
    else ``models.classifier``, else ``part_classifier.onnx``."""
    models = run.get("models") or {}
    return Path(run_dir) / (models.get("line") or models.get("classifier") or PART_MODEL)
