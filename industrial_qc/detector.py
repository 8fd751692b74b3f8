"""Stage 1: train an Ultralytics YOLO detector built from yaml (offline), validate it, export it to ONNX.

Ultralytics owns the training loop, augmentation, mAP and the export; this module chooses the arguments
(tuned for recall on small, faint defects), keeps everything offline (no weights, fonts or AMP-check
downloads: models come from yaml or a local .pt, ``amp=False`` on CPU, ``plots=False``) and writes our
self-describing metadata into the exported file.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.runtime import import_ultralytics
from industrial_qc import paste
from industrial_qc.config import DetectorConfig


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
    """YOLO from ``cfg.model`` yaml; with ``weights`` (local .pt) its matching tensors are loaded."""
    YOLO = _yolo()
    model = YOLO(cfg.model)
    w = weights or cfg.weights
    if w:
        w = Path(w)
        if not w.is_file():
            raise InputError(f"--detector-weights {w}: file not found (weights are never downloaded)")
        try:  # Ultralytics' safe load (common.runtime): tensors and its own network classes, no code
            model = model.load(str(w))
        except Exception as exc:
            raise InputError(f"--detector-weights {w}: refused, not a loadable Ultralytics checkpoint "
                             f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
                             ) from None
    return model


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
    halves the step time on a CPU with AMX (yolov5nu, batch 16 at 320 px: 0.87 -> 0.40 s with channels-last).
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


def _before_training(cfg: DetectorConfig, threads: int | None, seed: int = 0, stats: dict | None = None):
    """Callback for Ultralytics' ``on_pretrain_routine_end`` (model, optimizer and EMA built, no step taken):
    the torch threads we were asked for (Ultralytics' device selection sets cores - 1 for CPU training: on 2
    cores a single thread computed while the other core mostly waited for the data loader); channels-last
    weights, so oneDNN's convolutions skip a layout conversion per layer; the weight average (EMA) sized to
    this run (``ema_decay``, ``ema_tau``); and in-image defect copy-paste on the training set (``paste``; its
    counts go to ``stats``)."""

    def callback(trainer) -> None:
        import torch
        from ultralytics.utils.torch_utils import ModelEMA

        from common.runtime import set_torch_threads

        set_torch_threads(threads)
        if cfg.channels_last:
            trainer.model.to(memory_format=torch.channels_last)
        if trainer.ema is not None and trainer.ema.updates == 0:
            trainer.ema = ModelEMA(trainer.model, decay=cfg.ema_decay, tau=cfg.ema_tau)
        paste.install(trainer.train_loader.dataset, cfg.paste, seed, stats)

    return callback


def _sparse_validation(cfg: DetectorConfig):
    """Callback for Ultralytics' ``on_train_epoch_end`` (just before it decides whether to validate): validate
    every ``val_every`` epochs and over the last ``val_last`` ones (``trainer.epochs`` is re-planned from the time
    budget as training goes). Ultralytics still validates the final epoch, when time is up and when early
    stopping is near. A skipped epoch's fitness is cleared: ``save_model`` writes best.pt when the epoch's fitness
    equals the best so far, which a stale value from the previous (best) epoch would do for unvalidated weights."""

    def callback(trainer) -> None:
        epoch = trainer.epoch + 1  # 1-based: the epoch that just ended
        validate = (cfg.val_every <= 1 or epoch % cfg.val_every == 0 or epoch == 1
                    or epoch > trainer.epochs - cfg.val_last)
        trainer.args.val = validate
        if not validate:
            trainer.fitness = None

    return callback


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


def train_detector(cfg: DetectorConfig, data_yaml: Path, work_dir: Path, *, device: str = "cpu", seed: int = 0,
                   minutes: float | None = None, weights: str | Path | None = None, threads: int | None = None,
                   console=None) -> DetectorResult:
    """Train; returns the best/last .pt (copied to ``work_dir``) and the final validation metrics. ``threads``:
    torch threads for the training steps (None: all cores).

    Ultralytics runs quietly (YOLO_VERBOSE=False); a rich progress bar (epochs, rate, ETA, val mAP50 and
    recall) goes to ``console`` instead. With a time budget Ultralytics re-plans the epoch count as it goes.
    """
    import time

    from common.progress import add_task, make_progress, update_rate

    t0 = time.monotonic()
    model = build_model(cfg, weights)
    progress = make_progress(console) if console is not None else None
    if progress is not None:
        task = add_task(progress, "detector", total=None)
        shown: set[int] = set()
        last_val = [""]

        def on_epoch(trainer) -> None:
            if trainer.epoch in shown or trainer.epoch >= trainer.epochs:
                return  # the final validation of best.pt fires this hook again
            shown.add(trainer.epoch)
            if trainer.fitness is not None:  # validated this epoch (see _sparse_validation)
                m = trainer.metrics or {}
                last_val[:] = [f"val mAP50 {float(m.get('metrics/mAP50(B)', 0.0)):.3f} "
                               f"recall {float(m.get('metrics/recall(B)', 0.0)):.3f} (epoch {trainer.epoch + 1})"]
            progress.update(task, total=trainer.epochs, completed=trainer.epoch + 1, info=last_val[0])
            update_rate(progress, task, "epoch")

        model.add_callback("on_fit_epoch_end", on_epoch)
    project = work_dir / "ultralytics"
    view_dir = work_dir / "detector_data"
    with progress if progress is not None else contextlib.nullcontext():
        on_image = None
        if progress is not None and flatfield_params(cfg) is not None:
            ff_task = add_task(progress, "flat-field", total=None)

            def on_image(done: int, total: int) -> None:
                progress.update(ff_task, completed=done, total=total)
                update_rate(progress, ff_task, "img")

        view = detector_view(data_yaml, ("train", "val"), cfg.imgsz, flatfield_params(cfg), view_dir, on_image)
        if minutes is not None:  # the flat-fielded copy came out of the same budget
            minutes = max(0.05, minutes - (time.monotonic() - t0) / 60)
        bf16 = use_cpu_bf16(cfg, device)
        during: dict = {}  # what the training steps really ran with, for metrics.json
        model.add_callback("on_pretrain_routine_end", _before_training(cfg, threads, seed, during))

        def on_train_epoch_end(trainer) -> None:
            import torch

            during["torch_threads"] = torch.get_num_threads()

        model.add_callback("on_train_epoch_end", on_train_epoch_end)
        model.add_callback("on_train_epoch_end", _sparse_validation(cfg))

        def on_val_start(validator) -> None:  # the trainer's validator shares its callbacks
            during["val_passes"] = during.get("val_passes", 0) + 1  # incl. the final pass on best.pt

        model.add_callback("on_val_start", on_val_start)

        def on_model_save(trainer) -> None:  # last.pt is written each epoch, best.pt when this epoch is the best
            if trainer.fitness is not None and trainer.best_fitness == trainer.fitness:
                during.setdefault("best_epochs", []).append(trainer.epoch + 1)  # each epoch that wrote best.pt

        model.add_callback("on_model_save", on_model_save)
        with cpu_bf16_training(bf16):
            model.train(**train_args(cfg, view, project, device=device, seed=seed, minutes=minutes, bf16=bf16))
    shutil.rmtree(view_dir, ignore_errors=True)
    trainer = model.trainer
    best = Path(trainer.best) if Path(trainer.best).is_file() else Path(trainer.last)
    work_dir.mkdir(parents=True, exist_ok=True)
    best_pt, last_pt = work_dir / "detector_best.pt", work_dir / "detector_last.pt"
    shutil.copy2(best, best_pt)
    if Path(trainer.last).is_file():
        shutil.copy2(trainer.last, last_pt)
    shutil.rmtree(Path(trainer.last).parent, ignore_errors=True)  # keep one copy; results.csv and args.yaml stay
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
    return DetectorResult(best_pt, last_pt, metrics, int(trainer.epoch) + 1, time.monotonic() - t0)


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

    Relative to what is findable, not to all boxes: a detector that finds 89 % of the val defects at the floor
    would otherwise never reach 98 %, stay at the floor and send max_det candidates per part to stage 2
    (measured: 10.8 crops per part at conf 0.001 against 6.3 at 0.005, with the same 92 of 103 boxes found)."""
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
