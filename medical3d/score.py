"""Batch scoring of studies with a run's model.onnx: SimpleITK preprocessing + onnxruntime, no torch.

``vsuite score RUN INPUT... --out FILE`` dispatches here for medical3d runs. A folder holding DICOM files is
one study; any other folder is searched for studies. Each study becomes one record: label, calibrated
probabilities, verdict, QA fields, ``status`` and ``reason``. A study that cannot be read or preprocessed is
an error record; it never stops the batch.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console

from common.errors import InputError
from common.inference import OnnxModel
from common.progress import add_task, make_progress, update_rate
from common.results import error_record, now_iso, write_records
from medical3d.config import PreprocessConfig
from medical3d.io import find_studies, study_id
from medical3d.verdict import DecisionRule

QA_FIELDS = ("format", "series_uid", "series_choice", "orientation", "oblique_deg", "original_size",
             "original_spacing", "n4_seconds", "bias_min", "bias_max", "cv_before", "cv_after",
             "foreground_clipped", "preprocess_seconds")


class StudyScorer:
    """model.onnx + its metadata (labels, preprocessing, threshold, temperature) -> one record per study."""

    def __init__(self, model_path: Path, threads: int | None = None) -> None:
        from pydantic import ValidationError

        self.model = OnnxModel(model_path, threads=threads)
        meta = self.model.metadata
        if "preprocessing" not in meta or "labels" not in meta:
            raise InputError(f"{model_path}: metadata lacks preprocessing/labels; not a medical3d model.onnx")
        try:
            self.preprocess = PreprocessConfig.model_validate(meta["preprocessing"])
        except ValidationError as exc:
            raise InputError(f"{model_path}: preprocessing metadata does not validate ({exc})") from None
        self.rule = DecisionRule.from_metadata(meta)

    def score_study(self, path: Path) -> dict:
        from medical3d.preprocess import preprocess_study

        t0 = time.perf_counter()
        try:
            result = preprocess_study(path, self.preprocess)
        except InputError as exc:
            return error_record(str(path), str(exc), study=study_id(path))
        except RuntimeError as exc:  # SimpleITK filter failure on a pathological volume
            return error_record(str(path), f"{path}: preprocessing failed ({exc})", study=study_id(path))
        t_inf = time.perf_counter()
        logits = self.model.run(result.array()[None])
        inference_ms = (time.perf_counter() - t_inf) * 1000
        probs = self.rule.probabilities(logits)[0]
        record = {
            "source": str(path),
            "study": study_id(path),
            "status": "ok",
            "reason": None,
            "label": self.rule.predicted_labels(probs[None])[0],
            "verdict": self.rule.verdicts(probs[None])[0],
            "score": float(probs[self.rule.positive_index]),
            "probabilities": {name: float(p) for name, p in zip(self.rule.labels, probs, strict=True)},
            "threshold": self.rule.threshold,
            **{k: result.qa.get(k) for k in QA_FIELDS},
            "inference_ms": round(inference_ms, 2),
            "seconds": round(time.perf_counter() - t0, 3),
            "timestamp": now_iso(),
        }
        return record

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        """(B, 1, D, H, W) preprocessed volumes -> (B, C) calibrated probabilities."""
        return self.rule.probabilities(self.model.run(x))


def score(run_dir: Path, inputs: list[str], out: Path, *, console: Console | None = None, run: dict | None = None
          ) -> list[dict]:
    """Score every study under ``inputs`` with ``run_dir/model.onnx``; write ``out`` (.csv/.parquet/.jsonl)."""
    console = console or Console()
    run = run or {}
    model_path = Path(run_dir) / str(run.get("model", "model.onnx"))
    scorer = StudyScorer(model_path)
    threads = (run.get("config") or {}).get("runtime", {}).get("threads")
    from medical3d.preprocess import set_threads

    set_threads(threads)
    studies = find_studies(inputs)
    records: list[dict] = []
    progress = make_progress(console)
    with progress:
        task = add_task(progress, "score studies", total=len(studies))
        for path in studies:
            rec = scorer.score_study(path)
            rec["run_id"] = run.get("run_id")
            records.append(rec)
            info = rec["verdict"] if rec["status"] == "ok" else "[red]error[/]"
            progress.update(task, advance=1, info=f"{study_id(path)}: {info}")
            update_rate(progress, task, "study")
    if not studies:
        records.append(error_record(", ".join(inputs), "no studies found (volume files or DICOM series folders)"))
    write_records(records, out)
    return records
