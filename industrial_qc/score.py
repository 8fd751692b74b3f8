"""``vsuite score RUN INPUT... --out FILE`` for industrial_qc runs: files, folders and globs through the ONNX
pipeline, decoding overlapped with inference (a thread pool decodes ahead; cv2 releases the GIL), one record
per file, a bad file is an error record. A part-classifier run's FAIL and REVIEW parts get heatmap PNGs in
``<out-file-stem>_heatmaps/`` beside the output file. No torch on this path.

With ``--engine ray`` (``common.ray_engine``) decoding runs as Ray tasks (``decode_row``) and scoring in actors
that each load the run once (``PartScorer``); both engines make every record with ``score_decoded``. The actors
write heatmaps themselves: on a multi-node cluster the output folder must be on a filesystem every node shares."""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.inference import share_thread_pool
from common.results import abs_path, error_record
from common.scoring import ScoreJob, ScoreOptions, run_job
from industrial_qc.data import IMAGE_SUFFIXES
from industrial_qc.hotfolder import skip_name
from industrial_qc.images import ImageLimits, read_image
from industrial_qc.part_pipeline import HeatmapTarget, PartPipeline
from industrial_qc.pipeline import Pipeline, load_pipeline, part_record

PREFETCH = 8  # decoded images kept ahead of inference


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[dict]]:
    """Files, folders (recursive, symlinked folders not entered) and globs -> sorted unique image paths
    (absolute), plus an error record for each input that matches nothing: every input is answered. In folders,
    hidden names and unfinished copies (``.part``/``.tmp``) are left out, as the line leaves them
    (``industrial_qc.hotfolder.skip_name``); a file named on the command line is always scored."""
    files: list[Path] = []
    errors: list[dict] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = []
            for root, dirs, names in os.walk(p):  # followlinks=False: a link loop cannot hang the batch
                dirs.sort()
                found += [Path(root, n) for n in sorted(names) if not skip_name(n)]
        elif os.path.lexists(p):
            found = [p]
        elif any(ch in item for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(os.path.expanduser(item), recursive=True)
                           if not os.path.isdir(f) and Path(f).suffix.lower() in IMAGE_SUFFIXES)
        else:
            errors.append(error_record(abs_path(p), f"{p}: no such file, folder or glob match", file=abs_path(p)))
            continue
        if not found:
            errors.append(error_record(abs_path(p), f"{item}: matches no image files", file=abs_path(p)))
        files += [Path(abs_path(f)) for f in found]
    seen: set[str] = set()
    unique = []
    for f in files:
        r = os.path.realpath(f)
        if r not in seen:
            seen.add(r)
            unique.append(f)
    return unique, errors


def _decode(path: Path, limits: ImageLimits):
    t0 = time.perf_counter()
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the reader forever
            return None, f"{path}: not a regular file (FIFO, socket or device); not read", 0.0
        return read_image(path, limits), None, (time.perf_counter() - t0) * 1e3
    except InputError as exc:
        return None, str(exc), 0.0
    except Exception as exc:  # hostile files must not stop a batch
        return None, f"{path}: {type(exc).__name__}: {exc}", 0.0


NO_IMAGE = np.zeros((0, 0, 3), np.uint8)  # what a part that could not be decoded carries to the scorer


def decode_row(row: dict, limits: ImageLimits) -> tuple[dict, np.ndarray]:
    """Decode stage of a row ``{"source": absolute path, "heatmap": path or None}`` (a Ray task, or a thread of
    ``score_files``): ``meta`` (source, heatmap, error or None, decode_ms) and the BGR image (``NO_IMAGE`` when it
    could not be decoded)."""
    img, err, ms = _decode(Path(row["source"]), limits)
    meta = {"source": row["source"], "heatmap": row.get("heatmap"), "error": err, "decode_ms": ms}
    return meta, (NO_IMAGE if img is None else img)


def score_decoded(pipe: Pipeline | PartPipeline, meta: dict, img: np.ndarray) -> dict:
    """The record of a decoded row (``decode_row``): the pipeline's, or the error record saying why; never raises.
    Both engines make every record here, so their records are the same."""
    src = meta["source"]
    try:
        if meta["error"] is not None:
            return error_record(src, meta["error"], file=src, run_id=pipe.run_id)
        heat = meta.get("heatmap")
        return part_record(pipe, img, src, meta["decode_ms"], heatmap=(lambda: Path(heat)) if heat else None)
    except Exception as exc:  # MemoryError and the like: this input's error, not the batch's end
        return error_record(src, f"{src}: {type(exc).__name__}: {exc}", file=src, run_id=pipe.run_id)


class PartScorer:
    """The scoring actor of ``--engine ray``: loads the run once (``load_pipeline``) and scores decoded rows.
    ``threads``: ONNX Runtime threads, the CPUs the actor was given."""

    def __init__(self, run_dir: str, run: dict, threads: int | None = None) -> None:
        share_thread_pool(threads)
        self.pipe = load_pipeline(Path(run_dir), threads=threads, run=run)

    def score(self, meta: dict, img: np.ndarray) -> dict:
        return score_decoded(self.pipe, meta, img)


def heatmaps_beside(out: Path) -> Path:
    """Where batch scoring puts a part run's heatmaps: ``<out-file-stem>_heatmaps/`` beside the output file (or
    beside the folder of a partitioned Parquet output)."""
    return out.with_name(f"{out.stem}_heatmaps")


class HeatmapNames:
    """Heatmap paths of one scoring pass: ``<stem>.png``, or ``<stem>~<hash of the input path>.png`` for a later
    input with the same stem. Names are given to every input of the pass in order, FAIL / REVIEW or not, so that
    they do not depend on verdicts, on the engine, or on which inputs a resumed pass still has to score; a rerun
    into the same output writes the same names again (replacing them), where the line, whose records stay,
    never reuses one."""

    def __init__(self, folder: Path, files: list[Path] | None = None) -> None:
        self.folder, self.taken, self.names = folder, set(), {}
        for f in files or []:
            self.name(f)

    def name(self, path: Path) -> Path:
        key = str(path)
        if key not in self.names:
            dest, n = f"{path.stem}.png", 0
            tag = hashlib.sha256(os.fsencode(key)).hexdigest()[:8]
            while dest in self.taken:
                n += 1
                dest = f"{path.stem}~{tag}{f'-{n - 1}' if n > 1 else ''}.png"
            self.taken.add(dest)
            self.names[key] = self.folder / dest
        return self.names[key]

    def target(self, path: Path) -> HeatmapTarget:
        dest = self.name(path)
        return lambda: dest


def score_files(pipe: Pipeline | PartPipeline, files: list[Path], *, workers: int = 2, on_record=None,
                heatmaps: Path | HeatmapNames | None = None) -> list[dict]:
    """Records for ``files`` in order; decoding runs ``PREFETCH`` files ahead on a thread pool. ``heatmaps``: the
    folder a part run's FAIL / REVIEW heatmaps go to (or the names of a whole pass, ``HeatmapNames``)."""
    names = HeatmapNames(heatmaps, files) if isinstance(heatmaps, Path) else heatmaps
    rows = [{"source": str(f), "heatmap": str(names.name(f)) if names is not None else None} for f in files]
    records: list[dict] = []
    for rec in _score_rows(pipe, rows, workers):
        records.append(rec)
        if on_record is not None:
            on_record(rec)
    return records


def _score_rows(pipe: Pipeline | PartPipeline, rows: list[dict], workers: int = 2):
    """The local engine: ``decode_row`` ``PREFETCH`` rows ahead on a thread pool (cv2 releases the GIL),
    ``score_decoded`` in order; yields each record."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        queue: deque[Future] = deque()
        it = iter(rows)
        for row in it:
            queue.append(pool.submit(decode_row, row, pipe.limits))
            if len(queue) >= PREFETCH:
                break
        while queue:
            fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append(pool.submit(decode_row, nxt, pipe.limits))
            yield score_decoded(pipe, *fut.result())


def score(run_dir: Path, inputs: list[str], out: Path, *, console, run: dict,
          options: ScoreOptions | None = None) -> list[dict]:
    """The ``vsuite.scorers`` entry point: score ``inputs`` with the run into ``out`` (.csv/.parquet/.jsonl, or a
    partitioned Parquet folder), on the engine of ``options`` (default: local, a fresh output); the records of
    this pass (inputs already in ``out`` are skipped with ``options.resume``)."""
    options = options or ScoreOptions()
    out = Path(out)
    if options.engine == "local":
        share_thread_pool()  # detector and classifier alternate on one pool: less latency per part
    pipe = load_pipeline(run_dir, run=run)  # in this process too: a run that cannot load fails before any work
    files, errors = expand_inputs(list(inputs))
    names = HeatmapNames(heatmaps_beside(out), files) if isinstance(pipe, PartPipeline) else None
    rows = [{"source": str(f), "heatmap": str(names.name(f)) if names is not None else None} for f in files]
    threads = max(1, round(options.cpus_per_worker))
    job = ScoreJob(rows=rows, prepare=partial(decode_row, limits=pipe.limits), scorer=PartScorer,
                   scorer_args=(str(run_dir), run, threads), first=errors, unit="img")

    def local(todo: list[dict], emit) -> None:
        for rec in _score_rows(pipe, todo):
            emit(rec)

    return run_job(job, out, options, console, local)
