"""Inference of the medical3d vertical, a study in, a record out: SimpleITK preprocessing + onnxruntime, no torch.

``StudyScorer`` loads a run's model.onnx and the rule stored in its metadata (labels, preprocessing, threshold,
temperature, REVIEW band) and turns one study into one record: label, calibrated probabilities, verdict, QA fields,
``status`` and ``reason``, ``source`` its absolute path. A study that cannot be read, preprocessed or run is an
error record, whatever the exception. The metadata is validated when the scorer loads: a run that cannot be judged
by (NaN threshold, labels that do not fit the model's output, ...) refuses to load. A model answer that is not
finite is a REVIEW verdict with the reason, never a call. Batch scoring over many inputs is ``medical3d.score``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.inference import OnnxModel
from common.results import abs_path as source_path
from common.results import display_text as shown
from common.results import error_record, now_iso
from medical3d.config import PreprocessConfig, preprocess_from_metadata
from medical3d.io import study_id
from medical3d.preprocess import PreprocessResult, preprocess_study
from medical3d.tta import TTA_MODES, tta_logits
from medical3d.verdict import REVIEW, DecisionRule

QA_FIELDS = ("format", "series_uid", "series_choice", "orientation", "oblique_deg", "original_size",
             "original_spacing", "n4_seconds", "bias_min", "bias_max", "cv_before", "cv_after",
             "foreground_clipped", "preprocess_seconds")
NON_FINITE = "model output is not finite (NaN or infinite logits): no call can be made, sent to REVIEW"


class StudyScorer:
    """model.onnx + its metadata (labels, preprocessing, threshold, temperature) -> one record per study."""

    def __init__(self, model_path: Path, threads: int | None = None) -> None:
        self.model = OnnxModel(model_path, threads=threads)
        meta = self.model.metadata
        self.preprocess = stored_preprocessing(meta, model_path)
        self.rule = DecisionRule.from_metadata(meta, source=f"{model_path} metadata")
        self.tta = stored_tta(meta, model_path)
        check_model_shapes(self.model, self.rule, self.preprocess)

    def score_study(self, path: Path) -> dict:
        """One record for the study at ``path``; any failure is an error record naming it and what went wrong."""
        t0 = time.perf_counter()
        source, name = source_path(path), study_id(Path(path))
        stage = "preprocessing"
        try:
            result = preprocess_study(path, self.preprocess)
            stage = "inference"
            t_inf = time.perf_counter()
            logits = tta_logits(self.model.run, result.array()[None], self.tta)
            inference_ms = (time.perf_counter() - t_inf) * 1000
            probs = self.rule.probabilities(logits)[0]
        except InputError as exc:
            return error_record(source, str(exc), study=name)
        except Exception as exc:  # one hostile study (SimpleITK, MemoryError, onnxruntime, ...) never ends the batch
            return error_record(source, f"{shown(path)}: {stage} failed ({type(exc).__name__}: {exc})", study=name)
        return self.study_record(source, name, probs, result, inference_ms, t0)

    def study_record(self, source: str, name: str, probs: np.ndarray, result: PreprocessResult,
                     inference_ms: float, t0: float) -> dict:
        """The record of a study that went through: probs (C,) calibrated; non-finite ones make a REVIEW."""
        finite = bool(np.isfinite(probs).all())
        return {
            "source": source,
            "study": name,
            "status": "ok",
            "reason": None if finite else NON_FINITE,
            "label": self.rule.predicted_labels(probs[None])[0],
            "verdict": self.rule.verdicts(probs[None])[0] if finite else REVIEW,
            "score": float(probs[self.rule.positive_index]) if finite else None,
            "probabilities": ({label: float(p) for label, p in zip(self.rule.labels, probs, strict=True)}
                              if finite else None),
            "threshold": self.rule.threshold,
            **{k: result.qa.get(k) for k in QA_FIELDS},
            "inference_ms": round(inference_ms, 2),
            "seconds": round(time.perf_counter() - t0, 3),
            "timestamp": now_iso(),
        }

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        """(B, 1, D, H, W) preprocessed volumes -> (B, C) calibrated probabilities (with the run's TTA)."""
        return self.rule.probabilities(tta_logits(self.model.run, x, self.tta))


def stored_preprocessing(meta: dict, model_path: Path) -> PreprocessConfig:
    """The preprocessing section of model.onnx metadata, validated; InputError naming the model when unusable."""
    if "preprocessing" not in meta or "labels" not in meta:
        raise InputError(f"{model_path}: metadata lacks preprocessing/labels; not a medical3d model.onnx")
    if not isinstance(meta["preprocessing"], dict):
        raise InputError(f"{model_path}: preprocessing metadata is not a mapping")
    try:
        return preprocess_from_metadata(meta["preprocessing"])
    except InputError as exc:
        raise InputError(f"{model_path}: preprocessing metadata does not validate ({exc})") from None


def stored_tta(meta: dict, model_path: Path) -> str:
    """The run's test-time augmentation (``medical3d.tta``); "none" for models exported before it existed."""
    mode = meta.get("tta", "none")
    if mode not in TTA_MODES:
        raise InputError(f"{model_path}: tta {mode!r} in the metadata is not one of {list(TTA_MODES)}")
    return mode


def check_model_shapes(model: OnnxModel, rule: DecisionRule, prep: PreprocessConfig) -> None:
    """Refuse a model whose output is not (batch, len(labels)) or whose input is not the preprocessed volume
    (1 channel, crop size z y x). Symbolic (named) dimensions are not checked."""
    out_shape = model.output_shape
    if out_shape and len(out_shape) != 2:
        raise InputError(f"{model.path}: output shape {out_shape}: expected [batch, {len(rule.labels)}]")
    model.checked_labels(out_shape[1] if out_shape else None)
    want = [1, *reversed(prep.crop.size)]
    in_shape = list(model.input_shape or [])
    fits = len(in_shape) == 5 and all(not isinstance(d, int) or d == w for d, w in zip(in_shape[1:], want, strict=True))
    if in_shape and not fits:
        raise InputError(f"{model.path}: input shape {in_shape} does not fit the preprocessing (expected "
                         f"[batch, {', '.join(map(str, want))}] from preprocessing.crop.size {list(prep.crop.size)})")
