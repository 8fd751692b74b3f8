"""Batch scoring of studies with a run's model.onnx (``medical3d.pipeline.StudyScorer``), no torch.

``vsuite score RUN INPUT... --out FILE`` dispatches here for medical3d runs. Inputs are files, folders and globs
(``medical3d.io.collect_studies``): a folder holding DICOM files is one study; any other folder is searched for
studies. Every input ends as at least one record, each study as exactly one; a study that fails is an error record
and never stops the batch.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from common.progress import add_task, make_progress, update_rate
from common.results import abs_path as source_path
from common.results import display_text as shown
from common.results import error_record, write_records
from common.rundir import verify_model_file
from medical3d.io import StudyInput, collect_studies, study_id
from medical3d.pipeline import StudyScorer
from medical3d.preprocess import set_threads


def score(run_dir: Path, inputs: list[str], out: Path, *, console: Console | None = None, run: dict | None = None
          ) -> list[dict]:
    """Score every study under ``inputs`` with ``run_dir/model.onnx``; write ``out`` (.csv/.parquet/.jsonl).

    One record per study found, plus one error record per input that yields none (missing, empty folder, glob
    matching nothing)."""
    console = console or Console()
    run = run or {}
    model_path = Path(run_dir) / str(run.get("model", "model.onnx"))
    verify_model_file(run, model_path)
    scorer = StudyScorer(model_path)
    set_threads((run.get("config") or {}).get("runtime", {}).get("threads"))
    records = score_items(scorer, collect_studies(inputs), console, run.get("run_id"))
    if not records:
        records.append(error_record(", ".join(map(shown, inputs)), "no inputs given"))
    write_records(records, out)
    return records


def score_items(scorer: StudyScorer, items: list[StudyInput], console: Console, run_id: str | None) -> list[dict]:
    """One record per item, in order, with a progress bar; an item that is an input error stays an error record."""
    records: list[dict] = []
    progress = make_progress(console)
    with progress:
        task = add_task(progress, "score studies", total=len(items))
        for item in items:
            if item.error is not None:
                rec = error_record(source_path(item.path), item.error, study=study_id(item.path))
            else:
                rec = scorer.score_study(item.path)
            rec["run_id"] = run_id
            records.append(rec)
            info = rec["verdict"] if rec["status"] == "ok" else "[red]error[/]"
            progress.update(task, advance=1, info=f"{shown(rec['study'])}: {info}")
            update_rate(progress, task, "study")
    return records
