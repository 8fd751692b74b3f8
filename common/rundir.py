"""The run directory: ``run.json`` describes a trained run and is what inference, scoring and the apps read.

    runs/<name>/run.json   vertical, labels, config snapshot, data fingerprint, versions, metrics
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from common.errors import InputError
from common.results import now_iso

VERTICALS = ("industrial_qc", "medical3d")
_TRACKED = ("vision-suite", "torch", "torchvision", "ultralytics", "monai", "SimpleITK", "onnx", "onnxruntime",
            "albumentations", "numpy", "scikit-learn")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on (absent ones are skipped)."""
    out = {"python": platform.python_version()}
    for name in _TRACKED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def fingerprint_files(paths: Iterable[Path], root: Path | None = None) -> str:
    """sha256 over (relative name, size, content) of every file, in sorted order: the training-data identity."""
    h = hashlib.sha256()
    files = sorted(Path(p) for p in paths)
    for p in files:
        name = str(p.relative_to(root)) if root is not None else p.name
        h.update(name.encode())
        h.update(str(p.stat().st_size).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_hashes(run_dir: Path | str) -> dict[str, str]:
    """sha256 of every ONNX model file directly in ``run_dir`` (what inference loads), by file name."""
    return {p.name: file_sha256(p) for p in sorted(Path(run_dir).glob("*.onnx")) if p.is_file()}


def verify_model_file(run: dict, path: Path | str) -> None:
    """Refuse a model file that is not the one training wrote: its sha256 must match run.json's ``model_sha256``.

    Runs written before the hashes were recorded have none; they load unchecked (as they always did)."""
    path = Path(path)
    recorded = (run.get("model_sha256") or {}).get(path.name)
    if recorded is None:
        if run.get("model_sha256"):
            raise InputError(f"{path}: not among the model files run.json records ({', '.join(run['model_sha256'])}); "
                             "it was not written by this run's training")
        return
    if not path.is_file():
        raise InputError(f"{path}: model file missing")
    actual = file_sha256(path)
    if actual != recorded:
        raise InputError(f"{path}: model file changed since training (sha256 {actual[:16]}..., run.json records "
                         f"{str(recorded)[:16]}...); refusing to load it")


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # gone after the rename; on a failure no .tmp is left behind


def write_run_json(run_dir: Path | str, *, vertical: str, labels: list[str], config: dict, data_fingerprint: str,
                   metrics: dict, **extra: Any) -> dict:
    """Write ``run_dir/run.json`` atomically and return what was written.

    ``run_id`` is the folder name plus a short hash of config and data, so two runs named alike stay apart.
    ``model_sha256``: the hash of every ``*.onnx`` in the run folder now (training writes run.json last), which
    loading checks (``verify_model_file``).
    """
    if vertical not in VERTICALS:
        raise ValueError(f"vertical must be one of {VERTICALS}, got {vertical!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    created = now_iso()
    digest = hashlib.sha256(json.dumps([config, data_fingerprint, created], sort_keys=True, default=str).encode())
    run = {
        "run_id": f"{run_dir.name}-{digest.hexdigest()[:8]}",
        "vertical": vertical,
        "created": created,
        "labels": list(labels),
        "config": config,
        "data_fingerprint": data_fingerprint,
        "versions": package_versions(),
        "metrics": metrics,
        "model_sha256": model_hashes(run_dir),
        **extra,
    }
    _atomic_write_json(run_dir / "run.json", run)
    return run


def update_run_json(run_dir: Path | str, **fields: Any) -> dict:
    """Merge ``fields`` into an existing run.json (e.g. metrics from a later eval)."""
    run = read_run_json(run_dir)
    run.update(fields)
    _atomic_write_json(Path(run_dir) / "run.json", run)
    return run


def read_run_json(run_dir: Path | str) -> dict:
    """Read and check ``run_dir/run.json``; an InputError names the path and what is wrong."""
    path = Path(run_dir) / "run.json"
    if not Path(run_dir).is_dir():
        raise InputError(f"{run_dir}: run directory not found")
    if not path.is_file():
        raise InputError(f"{path}: missing; is {run_dir} a run directory written by `vsuite qc train` or "
                         "`vsuite med train`?")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(run, dict):
        raise InputError(f"{path}: expected a JSON object")
    missing = [k for k in ("run_id", "vertical", "labels") if k not in run]
    if missing:
        raise InputError(f"{path}: missing field(s) {', '.join(missing)}")
    if run["vertical"] not in VERTICALS:
        raise InputError(f"{path}: vertical {run['vertical']!r} is not one of {', '.join(VERTICALS)}")
    return run
