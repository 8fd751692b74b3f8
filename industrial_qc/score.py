"""``vsuite score RUN INPUT... --out FILE`` for industrial_qc runs: files, folders and globs through the ONNX
pipeline, decoding overlapped with inference (a thread pool decodes ahead; cv2 releases the GIL), one record
per file, a bad file is an error record. No torch on this path."""

from __future__ import annotations

import glob
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from common.errors import InputError
from common.inference import share_thread_pool
from common.progress import add_task, make_progress, update_rate
from common.results import error_record, now_iso, write_records
from industrial_qc.data import IMAGE_SUFFIXES, read_image
from industrial_qc.pipeline import Pipeline

PREFETCH = 8  # decoded images kept ahead of inference


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[dict]]:
    """Files, folders (recursive) and globs -> sorted unique image paths, plus error records for inputs that
    match nothing."""
    files: list[Path] = []
    errors: list[dict] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found = [p]
        elif any(ch in item for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(os.path.expanduser(item), recursive=True)
                           if os.path.isfile(f) and Path(f).suffix.lower() in IMAGE_SUFFIXES)
        else:
            errors.append(error_record(item, "no such file, folder or glob match", file=item))
            continue
        if not found:
            errors.append(error_record(item, "matches no image files", file=item))
        files += found
    seen: set[Path] = set()
    unique = []
    for f in files:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(f)
    return unique, errors


def _decode(path: Path):
    t0 = time.perf_counter()
    try:
        return read_image(path), None, (time.perf_counter() - t0) * 1e3
    except InputError as exc:
        return None, str(exc), 0.0
    except Exception as exc:  # hostile files must not stop a batch
        return None, f"{type(exc).__name__}: {exc}", 0.0


def score_files(pipe: Pipeline, files: list[Path], *, workers: int = 2, on_record=None) -> list[dict]:
    """Records for ``files`` in order; decoding runs ``PREFETCH`` files ahead on a thread pool."""
    records: list[dict] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        queue: deque[tuple[Path, Future]] = deque()
        it = iter(files)
        for f in it:
            queue.append((f, pool.submit(_decode, f)))
            if len(queue) >= PREFETCH:
                break
        while queue:
            path, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(_decode, nxt)))
            img, err, decode_ms = fut.result()
            src = str(path)
            if err is not None:
                rec = error_record(src, err, file=src, run_id=pipe.run_id)
            else:
                t0 = time.perf_counter()
                try:
                    res = pipe.inspect(img)
                    rec = {"source": src, "status": "ok", "reason": None, "timestamp": now_iso(), "file": src,
                           "run_id": pipe.run_id, "verdict": res.pop("verdict"), **res,
                           "width": int(img.shape[1]), "height": int(img.shape[0]), "decode_ms": round(decode_ms, 2),
                           "latency_ms": round(decode_ms + (time.perf_counter() - t0) * 1e3, 2)}
                except Exception as exc:
                    rec = error_record(src, f"inference failed: {type(exc).__name__}: {exc}", file=src,
                                       run_id=pipe.run_id)
            records.append(rec)
            if on_record is not None:
                on_record(rec)
    return records


def score(run_dir: Path, inputs: list[str], out: Path, *, console, run: dict) -> list[dict]:
    """The ``vsuite.scorers`` entry point: score ``inputs`` with the run, write ``out`` (.csv/.parquet/.jsonl)."""
    share_thread_pool()  # detector and classifier alternate on one pool: less latency per part
    pipe = Pipeline.from_run(run_dir, run=run)
    files, errors = expand_inputs(list(inputs))
    with make_progress(console) as progress:
        task = add_task(progress, "score", total=len(files))

        def tick(_rec: dict) -> None:
            progress.update(task, advance=1)
            update_rate(progress, task, "img")

        records = errors + score_files(pipe, files, on_record=tick)
    write_records(records, out)
    return records
