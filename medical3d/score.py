"""Batch scoring of studies with a run's model.onnx (``medical3d.pipeline.StudyScorer``), no torch.

``vsuite score RUN INPUT... --out FILE`` dispatches here for medical3d runs. Inputs are files, folders and globs
(``medical3d.io.collect_studies``): a folder holding DICOM files is one study; any other folder is searched for
studies. Every input ends as at least one record, each study as exactly one; a study that fails is an error record
and never stops the batch.

Both engines (``common.scoring``) split a study's work in two: ``prepare_row`` reads and preprocesses it (the heavy
part: a Ray task with ``--engine ray``) and ``StudyActor.score`` runs the model and makes the record (one loaded
model.onnx per actor, or one in this process).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from rich.console import Console

from common.results import abs_path as source_path
from common.results import display_text as shown
from common.results import error_record
from common.rundir import verify_model_file
from common.scoring import ScoreJob, ScoreOptions, run_job
from medical3d.config import PreprocessConfig
from medical3d.io import StudyInput, collect_studies, study_id
from medical3d.pipeline import PreparedStudy, StudyScorer, prepare_study
from medical3d.preprocess import set_threads

NO_VOLUME = np.zeros((0, 0, 0, 0), np.float32)  # what a study that could not be prepared carries to the scorer


def score(run_dir: Path, inputs: list[str], out: Path, *, console: Console | None = None, run: dict | None = None,
          options: ScoreOptions | None = None) -> list[dict]:
    """Score every study under ``inputs`` with ``run_dir/model.onnx`` into ``out`` (.csv/.parquet/.jsonl, or a
    partitioned Parquet folder) on the engine of ``options`` (default: local, a fresh output).

    One record per study found, plus one error record per input that yields none (missing, empty folder, glob
    matching nothing); the records of this pass (studies already in ``out`` are skipped with ``options.resume``)."""
    console = console or Console()
    run = run or {}
    options = options or ScoreOptions()
    model_path = Path(run_dir) / str(run.get("model", "model.onnx"))
    verify_model_file(run, model_path)
    scorer = StudyScorer(model_path)  # in this process too: a run that cannot load fails before any work
    threads = (run.get("config") or {}).get("runtime", {}).get("threads")
    set_threads(threads)
    items = collect_studies(inputs)
    rows = [study_row(item) for item in items]
    first = [] if items else [error_record(", ".join(map(shown, inputs)), "no inputs given")]
    actor_threads = max(1, round(options.cpus_per_worker))  # ONNX Runtime threads of a Ray actor: its CPUs
    job = ScoreJob(rows=rows, prepare=partial(prepare_row, cfg=scorer.preprocess, threads=threads),
                   scorer=StudyActor, scorer_args=(str(model_path), run.get("run_id"), actor_threads),
                   first=first, unit="study", describe=_describe)

    def local(todo: list[dict], emit) -> None:
        here = StudyActor.loaded(scorer, run.get("run_id"))
        for row in todo:
            emit(here.score(*prepare_row(row, scorer.preprocess)))

    return run_job(job, Path(out), options, console, local)


def study_row(item: StudyInput) -> dict:
    """A study (or an input that yields none) as a job row: ``source`` is its record's (absolute path)."""
    return {"source": source_path(item.path), "path": str(item.path), "error": item.error}


def prepare_row(row: dict, cfg: PreprocessConfig, threads: int | None = None) -> tuple[dict, np.ndarray]:
    """Read + preprocess stage of a row (``prepare_study``): ``meta`` (the ``PreparedStudy`` less its volume) and
    the (1, D, H, W) volume (``NO_VOLUME`` when there is none)."""
    if threads is not None:
        set_threads(threads)  # a Ray worker preprocesses as this process does
    path = Path(row["path"])
    if row.get("error") is not None:  # an input that yields no study: its error row, as it was found
        prep = PreparedStudy(str(path), row["source"], study_id(path), None, error=row["error"])
    else:
        prep = prepare_study(path, cfg)
    meta = {"path": prep.path, "source": prep.source, "study": prep.study, "qa": prep.qa, "error": prep.error,
            "seconds": prep.seconds}
    return meta, (NO_VOLUME if prep.volume is None else prep.volume)


class StudyActor:
    """The scoring actor of ``--engine ray`` (and the local engine's scorer): model.onnx loaded once, a prepared
    row in, its record (with the run's ``run_id``) out."""

    def __init__(self, model_path: str, run_id: str | None, threads: int | None = None) -> None:
        self.scorer, self.run_id = StudyScorer(Path(model_path), threads=threads or None), run_id

    @classmethod
    def loaded(cls, scorer: StudyScorer, run_id: str | None) -> StudyActor:
        self = cls.__new__(cls)
        self.scorer, self.run_id = scorer, run_id
        return self

    def score(self, meta: dict, volume: np.ndarray) -> dict:
        prep = PreparedStudy(meta["path"], meta["source"], meta["study"], volume if meta["error"] is None else None,
                             meta["qa"] or {}, meta["error"], float(meta["seconds"]))
        rec = self.scorer.score_prepared(prep)
        rec["run_id"] = self.run_id
        return rec


def _describe(rec: dict) -> str:
    info = rec["verdict"] if rec["status"] == "ok" else "[red]error[/]"
    return f"{shown(rec.get('study', rec.get('source')))}: {info}"
