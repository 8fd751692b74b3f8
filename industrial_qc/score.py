"""``vsuite score RUN INPUT... --out FILE`` for industrial_qc runs: files, folders and globs through the ONNX
pipeline, decoding overlapped with inference (a thread pool decodes ahead; cv2 releases the GIL), one record
per file, a bad file is an error record. A part-classifier run's FAIL and REVIEW parts get heatmap PNGs in
``<out-file-stem>_heatmaps/`` beside the output file. No torch on this path."""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from common.errors import InputError
from common.inference import share_thread_pool
from common.progress import add_task, make_progress, update_rate
from common.results import abs_path, error_record, write_records
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


def heatmaps_beside(out: Path) -> Path:
    """Where batch scoring puts a part run's heatmaps: ``<out-file-stem>_heatmaps/`` beside the output file."""
    return out.with_name(f"{out.stem}_heatmaps")


class HeatmapNames:
    """Heatmap paths of one scoring pass: ``<stem>.png``, or ``<stem>~<hash of the input path>.png`` for a second
    input with the same stem. A rerun into the same output writes the same names again (replacing them), where
    the line, whose records stay, never reuses one."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.taken = folder, set()

    def target(self, path: Path) -> HeatmapTarget:
        def name() -> Path:
            dest, n = f"{path.stem}.png", 0
            tag = hashlib.sha256(os.fsencode(str(path))).hexdigest()[:8]
            while dest in self.taken:
                n += 1
                dest = f"{path.stem}~{tag}{f'-{n - 1}' if n > 1 else ''}.png"
            self.taken.add(dest)
            return self.folder / dest

        return name


def score_files(pipe: Pipeline | PartPipeline, files: list[Path], *, workers: int = 2, on_record=None,
                heatmaps: Path | None = None) -> list[dict]:
    """Records for ``files`` in order; decoding runs ``PREFETCH`` files ahead on a thread pool. ``heatmaps``: the
    folder a part run's FAIL / REVIEW heatmaps go to."""
    records: list[dict] = []
    names = HeatmapNames(heatmaps) if heatmaps is not None else None
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        queue: deque[tuple[Path, Future]] = deque()
        it = iter(files)
        for f in it:
            queue.append((f, pool.submit(_decode, f, pipe.limits)))
            if len(queue) >= PREFETCH:
                break
        while queue:
            path, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(_decode, nxt, pipe.limits)))
            src = str(path)
            try:
                img, err, decode_ms = fut.result()
                rec = error_record(src, err, file=src, run_id=pipe.run_id) if err is not None \
                    else part_record(pipe, img, src, decode_ms, heatmap=names and names.target(path))
            except Exception as exc:  # MemoryError and the like: this input's error, not the batch's end
                rec = error_record(src, f"{src}: {type(exc).__name__}: {exc}", file=src, run_id=pipe.run_id)
            records.append(rec)
            if on_record is not None:
                on_record(rec)
    return records


def score(run_dir: Path, inputs: list[str], out: Path, *, console, run: dict) -> list[dict]:
    """The ``vsuite.scorers`` entry point: score ``inputs`` with the run, write ``out`` (.csv/.parquet/.jsonl)."""
    share_thread_pool()  # detector and classifier alternate on one pool: less latency per part
    pipe = load_pipeline(run_dir, run=run)
    heatmaps = heatmaps_beside(Path(out)) if isinstance(pipe, PartPipeline) else None
    files, errors = expand_inputs(list(inputs))
    with make_progress(console) as progress:
        task = add_task(progress, "score", total=len(files))

        def tick(_rec: dict) -> None:
            progress.update(task, advance=1)
            update_rate(progress, task, "img")

        records = errors + score_files(pipe, files, on_record=tick, heatmaps=heatmaps)
    write_records(records, out)
    return records
