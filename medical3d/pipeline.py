"""Inference of the medical3d vertical, a study in, a record out: SimpleITK preprocessing + onnxruntime, no torch.

``StudyScorer`` loads a run's model.onnx and the rule stored in its metadata (labels, preprocessing, threshold,
temperature, REVIEW band) and turns one study into one record: label, calibrated probabilities, verdict, QA fields,
``status`` and ``reason``, ``source`` its absolute path. A study that cannot be read, preprocessed or run is an
error record, whatever the exception. The metadata is validated when the scorer loads: a run that cannot be judged
by (NaN threshold, labels that do not fit the model's output, ...) refuses to load. A model answer that is not
finite is a REVIEW verdict with the reason, never a call. Batch scoring over many inputs is ``medical3d.score``.
``score_study`` is ``prepare_study`` (read + preprocess, no model) then ``score_prepared`` (inference + record).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.inference import OnnxModel
from common.results import abs_path as source_path
from common.results import display_text as shown
from common.results import error_record, now_iso
from medical3d.config import PreprocessConfig, preprocess_from_metadata
from medical3d.io import study_id
from medical3d.preprocess import preprocess_study
from medical3d.tta import TTA_MODES, tta_logits
from medical3d.verdict import REVIEW, DecisionRule

QA_FIELDS = ("format", "series_uid", "series_choice", "orientation", "oblique_deg", "original_size",
             "original_spacing", "n4_seconds", "bias_min", "bias_max", "cv_before", "cv_after",
             "foreground_clipped", "preprocess_seconds")
NON_FINITE = "model output is not finite (NaN or infinite logits): no call can be made, sent to REVIEW"


@dataclass
class PreparedStudy:
    """A study read and preprocessed, ready for the model (``prepare_study``), or why it is not (``error``).

    ``volume``: (1, D, H, W) float32 network input, None with an error; ``qa``: the preprocessing's QA fields;
    ``seconds``: time spent reading and preprocessing. The two halves of ``StudyScorer.score_study`` are split here
    so that batch scoring on Ray preprocesses in tasks and runs only the model in its actors."""

    path: str  # as given (for messages)
    source: str  # absolute path: the record's ``source``
    study: str
    volume: np.ndarray | None
    qa: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


def prepare_study(path: str | Path, cfg: PreprocessConfig) -> PreparedStudy:
    """Read, validate and preprocess the study at ``path`` with ``cfg``; a failure, whatever the exception, is a
    ``PreparedStudy`` with ``error`` naming the study and what went wrong."""
    t0 = time.perf_counter()
    source, name = source_path(path), study_id(Path(path))
    try:
        result = preprocess_study(path, cfg)
        volume = result.array()
    except InputError as exc:
        return PreparedStudy(str(path), source, name, None, error=str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:  # one hostile study (SimpleITK, MemoryError, ...) never ends the batch
        return PreparedStudy(str(path), source, name, None, error=f"{shown(path)}: preprocessing failed "
                             f"({type(exc).__name__}: {exc})", seconds=time.perf_counter() - t0)
    return PreparedStudy(str(path), source, name, volume, result.qa, seconds=time.perf_counter() - t0)


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
        return self.score_prepared(prepare_study(path, self.preprocess))

    def score_prepared(self, prep: PreparedStudy) -> dict:
        """The record of a study read and preprocessed by ``prepare_study``: inference, calibration, verdict; its
        error record when preparing or inference failed. Never raises."""
        if prep.error is not None:
            return error_record(prep.source, prep.error, study=prep.study)
        t_inf = time.perf_counter()
        try:
            logits = tta_logits(self.model.run, prep.volume[None], self.tta)
            inference_ms = (time.perf_counter() - t_inf) * 1000
            probs = self.rule.probabilities(logits)[0]
        except InputError as exc:
            return error_record(prep.source, str(exc), study=prep.study)
        except Exception as exc:  # onnxruntime, MemoryError, ...: this study's error row, never the batch's end
            return error_record(prep.source, f"{shown(prep.path)}: inference failed ({type(exc).__name__}: {exc})",
                                study=prep.study)
        return self.study_record(prep.source, prep.study, probs, prep.qa, inference_ms,
                                 prep.seconds + (time.perf_counter() - t_inf))

    def study_record(self, source: str, name: str, probs: np.ndarray, qa: dict, inference_ms: float,
                     seconds: float) -> dict:
        """The record of a study that went through: probs (C,) calibrated; non-finite ones make a REVIEW. ``qa``:
        the preprocessing's QA fields; ``seconds``: preparing plus inference."""
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
            **{k: qa.get(k) for k in QA_FIELDS},
            "inference_ms": round(inference_ms, 2),
            "seconds": round(seconds, 3),
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
