"""Stage 1: train an Ultralytics YOLO detector built from yaml (offline), validate it, export it to ONNX.

Ultralytics owns the training loop, augmentation, mAP and the export; this module chooses the arguments
(tuned for recall on small, faint defects), keeps everything offline (no weights, fonts or AMP-check
downloads: models come from yaml, a local .pt or one cached in Ultralytics' weights dir, ``amp=False`` on CPU,
``plots=False``) and writes our self-describing metadata into the exported file.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.errors import InputError
from common.runtime import import_ultralytics
from industrial_qc.config import DetectorConfig
from industrial_qc.detector_hooks import add_training_callbacks, epoch_progress

if TYPE_CHECKING:
    import torch


@dataclass
class DetectorResult:
    best_pt: Path
    last_pt: Path
    metrics: dict
    epochs_run: int
    seconds: float


def _yolo():
    import_ultralytics()
    from ultralytics import YOLO

    return YOLO


def build_model(cfg: DetectorConfig, weights: str | Path | None = None):
    """YOLO from ``cfg.model`` yaml; with ``weights`` (a local .pt, or a bare checkpoint name like ``yolov5nu.pt``
    in Ultralytics' weights dir) its matching tensors are loaded."""
    YOLO = _yolo()
    model = YOLO(cfg.model)
    w = weights or cfg.weights
    if w:
        w = local_weights(w)
        try:  # Ultralytics' safe load (common.runtime): tensors and its own network classes, no code
            model = model.load(str(w))
        except Exception as exc:
            raise InputError(f"--detector-weights {w}: refused, not a loadable Ultralytics checkpoint "
                             f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
                             ) from None
    return model


def local_weights(weights: str | Path) -> Path:
    """The file ``weights`` names: a local path, else a bare name found in Ultralytics' weights dir (absolute, so
    Ultralytics never tries to fetch it); a published checkpoint missing there names the pull command."""
    path = Path(weights)
    if path.is_file():
        return path
    if path.name == str(weights):
        from common.weights import ultralytics_weights

        cached = ultralytics_weights(path.name)
        if cached is not None:
            return cached.resolve()
    raise InputError(f"--detector-weights {path}: file not found (weights are never downloaded)")


def flatfield_params(cfg: DetectorConfig) -> dict | None:
    """Keyword arguments of ``industrial_qc.flatfield.flatfield`` for this config, or None (raw input)."""
    if cfg.input_norm == "none":
        return None
    return {"sigma": cfg.flatfield_sigma, "gain": cfg.flatfield_gain, "grid": 32}


def detector_view(data_yaml: Path, splits: tuple[str, ...], imgsz: int, flatfield: dict | None, out: Path,
                  progress=None) -> Path:
    """The dataset as the detector sees it: ``data_yaml`` itself for raw input, else a flat-fielded copy of
    ``splits`` under ``out`` (Ultralytics trains and validates from files). ``progress(done, total)``."""
    if flatfield is None:
        return data_yaml
    from industrial_qc.data import load_dataset
    from industrial_qc.flatfield import write_flatfield_dataset

    shutil.rmtree(out, ignore_errors=True)
    ds = load_dataset(data_yaml, splits, required=())
    return write_flatfield_dataset(ds, splits, out, imgsz, flatfield, progress)


def use_cpu_bf16(cfg: DetectorConfig, device: str) -> bool:
    """Train in bf16 autocast: asked for, on the CPU, and the CPU does bf16 natively (AMX / AVX512-BF16)."""
    from common.runtime import cpu_bf16_native

    return cfg.cpu_bf16 and device == "cpu" and cpu_bf16_native()


@contextlib.contextmanager
def cpu_bf16_training(enabled: bool):
    """Let Ultralytics' trainer run its ``amp="bf16"`` path on the CPU for the duration.

    Its ``autocast`` helper refuses bf16 off CUDA, although ``torch.autocast("cpu", torch.bfloat16)`` works and
    shortens the step a lot on a CPU with AMX.
    Weights, optimizer state and the EMA stay fp32; only the forward and backward math runs in bf16, as on a GPU.
    """
    if not enabled:
        yield
        return
    import torch
    import ultralytics.engine.trainer as trainer_mod

    original = trainer_mod.autocast

    def autocast(enabled=True, device="cuda"):
        if enabled is torch.bfloat16 and device == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return original(enabled, device)

    trainer_mod.autocast = autocast
    try:
        yield
    finally:
        trainer_mod.autocast = original


def ultralytics_device(cfg: DetectorConfig, device: torch.device) -> str:
    """Ultralytics' device string for stage 1: ``cfg.device`` when set ("0,1": its own DDP over those GPUs), else
    the run's device ("cpu", or the index of this process's GPU)."""
    if cfg.device is not None:
        return cfg.device
    return "cpu" if device.type == "cpu" else str(device.index or 0)


def train_args(cfg: DetectorConfig, data_yaml: Path, project: Path, *, device: str, seed: int,
               minutes: float | None, bf16: bool = False) -> dict:
    """Keyword arguments for ``YOLO.train``; ``minutes`` caps the wall time (Ultralytics' ``time`` in hours)."""
    args = dict(
        data=str(data_yaml), imgsz=cfg.imgsz, epochs=cfg.epochs, batch=cfg.batch, patience=cfg.patience,
        workers=cfg.workers, cache=cfg.cache, optimizer=cfg.optimizer, lr0=cfg.lr0, cos_lr=cfg.cos_lr,
        warmup_epochs=cfg.warmup_epochs,
        close_mosaic=cfg.close_mosaic, mosaic=cfg.mosaic, fliplr=cfg.fliplr, flipud=cfg.flipud, scale=cfg.scale,
        translate=cfg.translate, degrees=cfg.degrees, hsv_h=cfg.hsv_h, hsv_s=cfg.hsv_s, hsv_v=cfg.hsv_v,
        box=cfg.box, cls=cfg.cls, nbs=cfg.nbs, device=device, seed=seed, deterministic=False,
        # absolute: Ultralytics nests a relative project under ./runs/detect/
        project=str(Path(project).resolve()), name="train", exist_ok=True, verbose=False,
        # fp16 AMP's check would download yolo11n.pt and needs CUDA; bf16 skips that check (cpu_bf16_training)
        amp="bf16" if bf16 else False,
        plots=False,  # plotting fetches Arial.ttf
        val=True,
    )
    if minutes is not None:
        args["time"] = max(minutes, 0.05) / 60.0
    return args


def _flatfield_progress(progress, cfg: DetectorConfig):
    """``progress(done, total)`` for the flat-fielded copy on its own bar; None without a bar or a copy."""
    from common.progress import add_task, update_rate

    if progress is None or flatfield_params(cfg) is None:
        return None
    task = add_task(progress, "flat-field", total=None)

    def on_image(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)
        update_rate(progress, task, "img")

    return on_image


def _keep_checkpoints(trainer, work_dir: Path) -> tuple[Path, Path]:
    """Copy best.pt (last.pt when no epoch was validated as best) and last.pt to ``work_dir``; drop Ultralytics'
    weights folder (results.csv and args.yaml stay)."""
    best = Path(trainer.best) if Path(trainer.best).is_file() else Path(trainer.last)
    work_dir.mkdir(parents=True, exist_ok=True)
    best_pt, last_pt = work_dir / "detector_best.pt", work_dir / "detector_last.pt"
    shutil.copy2(best, best_pt)
    if Path(trainer.last).is_file():
        shutil.copy2(trainer.last, last_pt)
    shutil.rmtree(Path(trainer.last).parent, ignore_errors=True)
    return best_pt, last_pt


def _final_metrics(trainer, bf16: bool, during: dict) -> dict:
    """The last validation's metrics, the precision trained in and what ``during`` noted."""
    m = trainer.metrics or {}
    metrics = {
        "precision": float(m.get("metrics/precision(B)", 0.0)),
        "recall": float(m.get("metrics/recall(B)", 0.0)),
        "mAP50": float(m.get("metrics/mAP50(B)", 0.0)),
        "mAP50_95": float(m.get("metrics/mAP50-95(B)", 0.0)),
        "precision_mode": "bf16" if bf16 else "fp32",
        **during,
    }
    if during.get("best_epochs"):
        metrics["best_epoch"] = during["best_epochs"][-1]  # the epoch best.pt holds
    return metrics


def train_detector(cfg: DetectorConfig, data_yaml: Path, work_dir: Path, *, device: str = "cpu", seed: int = 0,
                   minutes: float | None = None, weights: str | Path | None = None, threads: int | None = None,
                   console=None) -> DetectorResult:
    """Train; returns the best/last .pt (copied to ``work_dir``) and the final validation metrics. ``device``:
    Ultralytics' device string ("cpu", "0", or "0,1" for its own DDP over those GPUs). ``threads``: torch threads
    for the training steps (None: all cores).

    Ultralytics runs quietly (YOLO_VERBOSE=False); a rich progress bar (epochs, rate, ETA, val mAP50 and
    recall) goes to ``console`` instead. With a time budget Ultralytics re-plans the epoch count as it goes.
    """
    import time

    from common.distributed import hidden_launch_env
    from common.progress import add_task, make_progress

    t0 = time.monotonic()
    model = build_model(cfg, weights)
    progress = make_progress(console) if console is not None else None
    if progress is not None:
        model.add_callback("on_fit_epoch_end", epoch_progress(progress, add_task(progress, "detector", total=None)))
    view_dir = work_dir / "detector_data"
    with progress if progress is not None else contextlib.nullcontext():
        view = detector_view(data_yaml, ("train", "val"), cfg.imgsz, flatfield_params(cfg), view_dir,
                             _flatfield_progress(progress, cfg))
        if minutes is not None:  # the flat-fielded copy came out of the same budget
            minutes = max(0.05, minutes - (time.monotonic() - t0) / 60)
        bf16 = use_cpu_bf16(cfg, device)
        during: dict = {}  # what the training steps really ran with, for metrics.json
        add_training_callbacks(model, cfg, threads, seed, during)
        # hidden_launch_env: under torchrun (rank 0 trains the detector alone) Ultralytics must see a single process,
        # and with several devices in ``device`` it starts its own DDP workers, as without torchrun.
        with cpu_bf16_training(bf16), hidden_launch_env():
            model.train(**train_args(cfg, view, work_dir / "ultralytics", device=device, seed=seed, minutes=minutes,
                                     bf16=bf16))
    shutil.rmtree(view_dir, ignore_errors=True)
    best_pt, last_pt = _keep_checkpoints(model.trainer, work_dir)
    return DetectorResult(best_pt, last_pt, _final_metrics(model.trainer, bf16, during), int(model.trainer.epoch) + 1,
                          time.monotonic() - t0)


def export_detector(pt: Path, out: Path, cfg: DetectorConfig, labels: list[str], extra_metadata: dict) -> Path:
    """Export ``pt`` to ``out`` (ONNX, static 1x3xHxW, opset 17) and add our metadata next to Ultralytics' own
    (names, stride, imgsz stay, so ``YOLO(out).val`` still works)."""
    import warnings

    from common.export import write_metadata
    from common.results import now_iso
    from common.rundir import package_versions

    YOLO = _yolo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript tracer warnings about the head's shape checks
        exported = Path(YOLO(str(pt)).export(format="onnx", imgsz=cfg.imgsz, opset=17, simplify=True, dynamic=False,
                                              device="cpu", verbose=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(exported), out)
    write_metadata(out, {
        "task": "detect",
        "labels": labels,
        "input_name": "images",
        "input_shape": [1, 3, cfg.imgsz, cfg.imgsz],
        "input_dtype": "float32",
        "output_format": "(1, 4 + nc, anchors): cx, cy, w, h in input pixels, then per-class scores in [0, 1]",
        "preprocessing": {"letterbox": True, "pad_value": 114, "color": "RGB", "scale": 1 / 255, "layout": "NCHW",
                          # after the letterbox resize, before the padding (industrial_qc/flatfield.py)
                          "flatfield": flatfield_params(cfg)},
        "conf": cfg.conf,
        "iou": cfg.iou,
        "max_det": cfg.max_det,
        "min_candidates": cfg.min_candidates,  # kept below conf when fewer score above it ...
        "floor_conf": cfg.min_conf,  # ... down to this confidence
        "nms": "class-agnostic, numpy",
        "exported_at": now_iso(),
        "versions": package_versions(),
        **extra_metadata,
    })
    return out


def choose_conf(dets: list, gt_boxes: list[np.ndarray], *, target_recall: float, iou_thr: float, floor: float,
                ceiling: float) -> tuple[float, float]:
    """Highest confidence in [floor, ceiling] that keeps ``target_recall`` of the ground-truth boxes the
    detector finds at all (IoU >= iou_thr with a detection made at ``floor``). Returns (conf, box recall at
    conf over all boxes).

    Relative to what is findable, not to all boxes: a detector that misses some val defects even at the floor
    would otherwise never reach the target, stay at the floor and send max_det candidates per part to stage 2."""
    from industrial_qc.crops import box_iou

    best = []
    for d, gt in zip(dets, gt_boxes, strict=True):
        if len(gt) == 0:
            continue
        if len(d) == 0:
            best += [0.0] * len(gt)
            continue
        hit = box_iou(gt, d.boxes) >= iou_thr
        best += list(np.where(hit, d.scores[None, :], 0.0).max(axis=1))
    if not best:
        return ceiling, float("nan")
    scores = np.array(best)
    found = np.sort(scores[scores > 0])[::-1]
    if len(found) == 0:
        return floor, 0.0
    k = min(len(found) - 1, max(0, int(np.ceil(target_recall * len(found))) - 1))
    conf = float(np.clip(found[k], floor, ceiling))
    return conf, float((scores >= conf).mean())


def validate_detector(model_path: Path, data_yaml: Path, split: str, imgsz: int, project: Path,
                      device: str = "cpu", flatfield: dict | None = None, agnostic: bool = True) -> dict:
    """Ultralytics validation (mAP50 and mAP50-95, overall and per class) of a .pt or .onnx detector; with
    ``flatfield`` (the detector's input transform) on a flat-fielded copy of the split. ``agnostic`` adds a
    second pass with every class merged into one (``single_cls``): how well stage 1 finds defects, whatever it
    calls them; stage 2 names them."""
    from common.inference import shared_pool_active

    if model_path.suffix == ".onnx" and shared_pool_active():
        # Ultralytics' ONNX backend makes sessions with their own thread pools, which onnxruntime refuses once
        # this process runs on the shared pool (``qc inspect``/``score`` in the same Python session): validate
        # the same weights from the checkpoint the ONNX file was exported from (their parity is tested).
        pt = model_path.parent / "checkpoints" / "detector_best.pt"
        model_path = pt if pt.is_file() else model_path
    YOLO = _yolo()
    model = YOLO(str(model_path), task="detect")
    batch = 1 if model_path.suffix == ".onnx" else 16
    view_dir = Path(project) / f"data_{split}_flatfield"
    view = detector_view(data_yaml, (split,), imgsz, flatfield, view_dir)
    results = {}
    for single_cls in (False, True) if agnostic else (False,):
        results[single_cls] = model.val(data=str(view), split=split, imgsz=imgsz, batch=batch, device=device,
                                        plots=False, project=str(Path(project).resolve()), name=f"val_{split}",
                                        exist_ok=True, verbose=False, workers=0, single_cls=single_cls)
    shutil.rmtree(view_dir, ignore_errors=True)
    res = results[False]
    names = res.names
    per_class = {}
    ap50 = res.box.ap50 if len(res.box.ap_class_index) else []
    ap = res.box.ap if len(res.box.ap_class_index) else []
    for i, c in enumerate(res.box.ap_class_index):
        per_class[names[int(c)]] = {"mAP50": float(ap50[i]), "mAP50_95": float(ap[i])}
    out = {
        "model": model_path.name,
        "mAP50": float(res.box.map50),
        "mAP50_95": float(res.box.map),
        "precision": float(res.box.mp),
        "recall": float(res.box.mr),
        "per_class": per_class,
    }
    if True in results:
        merged = results[True].box
        out["agnostic"] = {"mAP50": float(merged.map50), "mAP50_95": float(merged.map),
                           "precision": float(merged.mp), "recall": float(merged.mr)}
    return out
