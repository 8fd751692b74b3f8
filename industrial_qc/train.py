"""``vsuite qc train``: both stages under one time budget, then thresholds, plots and the run directory.

    runs/<name>/
      run.json  detector.onnx  classifier.onnx  classifier.int8.onnx (the line's copy, unless
      classifier.line_precision is fp32 or it disagreed with fp32 on val)  metrics.json  data.yaml (resolved copy)
      checkpoints/detector_best.pt detector_last.pt classifier/best.pt classifier/last.pt
      plots/confusion_matrix.png  pr_curve.png

The verdict thresholds live in the classifiers' ONNX metadata; run.json names the model files and their hashes.

Under torchrun (``common.distributed``) rank 0 alone trains the detector (with ``detector.device``, Ultralytics'
own DDP when that names several GPUs) and sets the line confidence while the other ranks wait; it sends them the
line detections, every rank builds the same crops, and the crop classifier trains on all ranks (DDP). Then the
other ranks return None and rank 0 does the rest. Only rank 0 writes the run directory or prints.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from common import distributed
from common.config import config_snapshot
from common.errors import InputError
from common.export import write_metadata
from common.rundir import write_run_json
from common.runtime import pick_device, seed_everything, set_torch_threads
from industrial_qc.config import ClassifierConfig, QCConfig
from industrial_qc.crops import BACKGROUND_GAP
from industrial_qc.cropset import TRAIN_MARGIN, CropSet, build_crop_set, defect_rel_sizes
from industrial_qc.data import (
    Dataset,
    Sample,
    defect_scale,
    fingerprint,
    load_dataset,
    small_defect_warning,
    write_resolved_yaml,
)
from industrial_qc.evaluate import pipeline_metrics
from industrial_qc.line_detections import LineDetections, line_detections, shared_line_detections
from industrial_qc.pipeline import Detections, OnnxDetector, Pipeline
from industrial_qc.quantize import LineClassifier, line_classifier
from industrial_qc.thresholds import line_thresholds, part_sample
from industrial_qc.verdict import PartSample, Thresholds

if TYPE_CHECKING:  # torch, which the stages load only when they run
    import torch

    from industrial_qc.classifier import ClassifierResult
    from industrial_qc.detector import DetectorResult

# Seconds kept back from the budget for ONNX export, hard-negative mining, thresholds and plots.
MIN_RESERVE_S = 15.0
MIN_BACKGROUND_SHARE = 0.25  # background crops per defect crop below which training warns (usually ~1)


@dataclass
class TrainOutcome:
    run_dir: Path
    run: dict
    metrics: dict


@dataclass(frozen=True)
class Budget:
    """The wall time both stages share (``max_minutes``; None: no budget), on ``time.monotonic``'s clock."""

    start: float
    seconds: float | None

    @classmethod
    def begin(cls, max_minutes: float | None) -> Budget:
        return cls(time.monotonic(), max_minutes * 60 if max_minutes else None)

    @property
    def deadline(self) -> float | None:
        return self.start + self.seconds if self.seconds else None

    def detector_minutes(self, share: float) -> float | None:
        """Stage 1's ``share`` of what the reserve (export, mining, thresholds, plots) leaves."""
        if not self.seconds:
            return None
        reserve = max(MIN_RESERVE_S, 0.08 * self.seconds)
        return max(0.05, (self.seconds - reserve) * share / 60)

    def classifier_deadline(self) -> float | None:
        """When stage 2 stops: the deadline less a reserve for what follows it, but no sooner than in 5 s."""
        if self.deadline is None:
            return None
        return max(time.monotonic() + 5.0, self.deadline - max(MIN_RESERVE_S, 0.05 * self.seconds))

    def reference_deadline(self) -> float | None:
        """When scoring train parts for the thresholds stops (``thresholds.train_reference``)."""
        return None if self.deadline is None else self.deadline - MIN_RESERVE_S / 2

    def minutes_used(self) -> float:
        return (time.monotonic() - self.start) / 60


@dataclass
class TrainData:
    """The splits training reads and what the run records about them."""

    ds: Dataset
    train: list[Sample]
    val: list[Sample]
    resolved_yaml: Path  # the run's data.yaml: an absolute ``path``, as Ultralytics needs
    fingerprint: str
    scale: dict  # defect_scale of the train split at the detector's input

    @property
    def labels(self) -> list[str]:
        return ["background", *self.ds.names]


def load_train_data(data_yaml: Path, out: Path, imgsz: int, console: Console) -> TrainData:
    """Load and check the train and val splits, create the run folder with its resolved data.yaml (rank 0 of a
    torchrun job; the others only name it), and warn when the train defects are too small for the detector at
    ``imgsz``."""
    ds = load_dataset(data_yaml, ("train", "val"))
    train, val = ds.split("train"), ds.split("val")
    if not any(s.defective for s in train) or not any(s.defective for s in val):
        raise InputError(f"{data_yaml}: train and val each need at least one labelled defect")
    resolved = out / "data.yaml"
    if distributed.is_main():
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        resolved = write_resolved_yaml(ds, out / "data.yaml")
    fp = fingerprint(ds)
    console.print(f"[bold]data[/] {data_yaml}: {ds.summary()}")
    scale = defect_scale(train, imgsz)
    if warning := small_defect_warning(scale):
        console.print(f"[yellow]warning: {warning}[/]")
    return TrainData(ds, train, val, resolved, fp, scale)


def detector_stage(cfg: QCConfig, data: TrainData, out: Path, device: torch.device, budget: Budget,
                   weights: str | Path | None, console: Console) -> DetectorResult:
    """Stage 1: train the detector within its share of the budget and export ``detector.onnx``."""
    from industrial_qc.detector import export_detector, train_detector, ultralytics_device

    minutes = budget.detector_minutes(cfg.detector_share)
    console.print(f"[bold]stage 1[/] detector {cfg.detector.model} at {cfg.detector.imgsz} px"
                  + (f", {minutes:.1f} min budget" if minutes else f", {cfg.detector.epochs} epochs"))
    det = train_detector(cfg.detector, data.resolved_yaml, out / "checkpoints",
                         device=ultralytics_device(cfg.detector, device), seed=cfg.seed, minutes=minutes,
                         weights=weights, threads=cfg.threads, console=console)
    export_detector(det.best_pt, out / "detector.onnx", cfg.detector, data.ds.names,
                    {"data_fingerprint": data.fingerprint, "run_name": out.name})
    console.print(f"  detector: {det.epochs_run} epochs in {det.seconds / 60:.1f} min, val mAP50 "
                  f"{det.metrics['mAP50']:.3f}, recall {det.metrics['recall']:.3f}")
    return det


def stage2_crop_sets(ccfg: ClassifierConfig, train: list[Sample], val: list[Sample], train_dets: list[Detections],
                     val_dets: list[Detections], seed: int, val_images: list[np.ndarray] | None = None
                     ) -> tuple[CropSet, CropSet]:
    """Stage 2's training and validation crops: ground truth, random clean windows, the detector's false alarms
    (hard negatives) and its matching proposals (``*_dets[i]`` = the line detector's output on image ``i``;
    ``val_images``: the val split decoded, else read from disk)."""
    kw = dict(crop_size=ccfg.crop_size, context=ccfg.context, min_crop=ccfg.min_crop, scale=TRAIN_MARGIN,
              background_per_defect=ccfg.background_per_defect, rel_sizes=defect_rel_sizes(train),
              hard_negatives_per_image=ccfg.hard_negatives_per_image if ccfg.hard_negatives else 0,
              proposals_per_defect=ccfg.proposals_per_defect)
    auto_flip = ccfg.augment.invert > 0 and ccfg.augment.invert_classes == "auto"
    train_set = build_crop_set(train, detections={i: (d.boxes, d.scores) for i, d in enumerate(train_dets)},
                               seed=seed, measure_polarity=auto_flip, **kw)
    val_set = build_crop_set(val, detections={i: (d.boxes, d.scores) for i, d in enumerate(val_dets)},
                             seed=seed + 1, images=val_images, **kw)
    return train_set, val_set


def background_warning(counts: list[int]) -> str | None:
    """What to tell the user when stage 2 has few background crops (``counts``: crops per class, background
    first), else None."""
    bg, defects = counts[0], sum(counts[1:])
    if bg >= MIN_BACKGROUND_SHARE * defects:
        return None
    return (f"{bg} background crops for {defects} defect crops: the classifier sees little clean surface to tell "
            "false alarms from defects. Clean windows keep clear of every labelled defect (grown by a quarter of "
            f"its size, at most {BACKGROUND_GAP * 100:g} % of the part), and large defects leave little room; good "
            "parts in train (images without a label file) give it clean surface.")


def stage2_crops(ccfg: ClassifierConfig, data: TrainData, line: LineDetections, seed: int, console: Console
                 ) -> tuple[CropSet, CropSet]:
    """``stage2_crop_sets`` from the line detections, with their class counts (and a warning) on ``console``."""
    train_set, val_set = stage2_crop_sets(ccfg, data.train, data.val, line.train, line.val, seed,
                                          val_images=line.val_images)
    counts = train_set.counts(len(data.labels))
    console.print(f"[bold]stage 2[/] classifier {ccfg.arch}: {len(train_set)} train crops "
                  f"{dict(zip(data.labels, counts, strict=True))}, {len(val_set)} val crops")
    if warning := background_warning(counts):
        console.print(f"[yellow]warning: {warning}[/]")
    return train_set, val_set


def classifier_stage(cfg: QCConfig, data: TrainData, crops: tuple[CropSet, CropSet], out: Path, device: torch.device,
                     budget: Budget, snapshot: dict, console: Console) -> tuple[ClassifierResult, int]:
    """Stage 2: train the crop classifier until its deadline and export ``classifier.onnx`` (rank 0). Returns the
    result and the torch threads it trained with."""
    from industrial_qc.classifier import export_classifier, train_classifier

    threads = set_torch_threads(cfg.threads)  # Ultralytics' device selection leaves torch on cores - 1
    clf = train_classifier(cfg.classifier, data.labels, *crops, out / "checkpoints" / "classifier",
                           deadline=budget.classifier_deadline(), device=device, seed=cfg.seed,
                           config_snapshot=snapshot, console=console)
    if not distributed.is_main():
        return clf, threads
    export_classifier(clf.model, cfg.classifier, data.labels, clf.temperature, out / "classifier.onnx",
                      {"data_fingerprint": data.fingerprint, "run_name": out.name})
    return clf, threads


def store_thresholds(th: Thresholds, out: Path, line: LineClassifier) -> dict:
    """Write the thresholds into ``classifier.onnx`` and the line's classifier (their one home); returns them."""
    thresholds = th.to_dict()
    for path in {out / "classifier.onnx", line.classifier.model.path}:
        write_metadata(path, {"thresholds": thresholds})
    return thresholds


def val_pipeline(detector: OnnxDetector, line_clf: LineClassifier, th: Thresholds, data: TrainData,
                 line: LineDetections, match_iou: float) -> dict:
    """Part and defect metrics of the line's pipeline on val, from the detections and probabilities made."""
    pipe = Pipeline(detector, line_clf.classifier, th.fail, th.review, score=th.score)
    results = []
    for s, d, p in zip(data.val, line.val, line_clf.val_probs, strict=True):
        w, h = s.size
        results.append({**pipe.result(d, p), "status": "ok", "height": h, "width": w})
    return pipeline_metrics(results, data.val, data.ds.names, match_iou)


def train_metrics(det: DetectorResult, clf: ClassifierResult, cls_threads: int, line: LineDetections,
                  crops: tuple[CropSet, CropSet], line_clf: LineClassifier, thresholds: dict, on_val: dict,
                  data: TrainData, budget: Budget) -> dict:
    """metrics.json's ``train`` section: both stages, the line classifier, the thresholds and the val pipeline."""
    return {
        "detector": {**det.metrics, "epochs": det.epochs_run, "minutes": det.seconds / 60, "line_conf": line.conf,
                     "val_box_recall_at_line_conf": line.box_recall},
        "classifier": {k: v for k, v in clf.val_metrics.items()}
        | {"epochs": len(clf.history), "stopped": clf.stopped_reason, "minutes": clf.seconds / 60,
           "train_crops": len(crops[0]), "val_crops": len(crops[1]),
           "line_classifier": line_clf.classifier.model.path.name,
           "torch_threads": cls_threads, "polarity_flips": clf.polarity_flips,
           "int8_check": line_clf.int8_check},
        "thresholds": thresholds,  # a report: the line reads them from the classifiers' ONNX metadata
        "val_pipeline": on_val,
        "defect_scale": data.scale,
        "minutes_total": budget.minutes_used(),
    }


def write_run(out: Path, data_yaml: Path, data: TrainData, snapshot: dict, metrics: dict) -> dict:
    """run.json: labels, config, data fingerprint, headline metrics and the files of the run (their hashes:
    ``model_sha256``)."""
    headline = {
        "val_detector_mAP50": metrics["detector"]["mAP50"],
        "val_classifier_accuracy": metrics["classifier"]["accuracy"],
        "val_escape_rate": metrics["val_pipeline"]["parts"]["escape_rate"],
        "val_false_reject_rate": metrics["val_pipeline"]["parts"]["false_reject_rate"],
        "minutes_total": metrics["minutes_total"],
    }
    return write_run_json(out, vertical="industrial_qc", labels=data.labels, config=snapshot,
                          data_fingerprint=data.fingerprint, metrics=headline, detector_names=data.ds.names,
                          data_yaml=str(Path(data_yaml).resolve()),
                          artifacts={"detector": "detector.onnx", "classifier": "classifier.onnx",
                                     "line_classifier": metrics["classifier"]["line_classifier"],
                                     "checkpoints": "checkpoints", "metrics": "metrics.json", "plots": "plots"})


def train_run(data_yaml: Path, cfg: QCConfig, out: Path, *, detector_weights: str | Path | None = None,
              console: Console | None = None) -> TrainOutcome | None:
    """Train stage 1 and stage 2 on ``data_yaml`` into run directory ``out`` and return run.json's content
    (None on a torchrun rank other than 0, after stage 2 has trained)."""
    console = distributed.quiet_unless_main(console)
    budget = Budget.begin(cfg.max_minutes)
    seed_everything(cfg.seed)
    set_torch_threads(cfg.threads)
    device = pick_device(cfg.device)
    distributed.init(device)
    out = Path(out)
    data = load_train_data(data_yaml, out, cfg.detector.imgsz, console)
    snapshot = config_snapshot(cfg)

    det, detector, line = None, None, None
    if distributed.is_main():  # the other ranks wait for its line detections
        det = detector_stage(cfg, data, out, device, budget, detector_weights, console)
        detector = OnnxDetector(out / "detector.onnx")  # what the line runs, for everything that follows
        line = line_detections(cfg, data, detector, console)
    line = shared_line_detections(line, data)
    crops = stage2_crops(cfg.classifier, data, line, cfg.seed, console)
    clf, cls_threads = classifier_stage(cfg, data, crops, out, device, budget, snapshot, console)
    if not distributed.is_main():
        return None

    line_clf = line_classifier(cfg.classifier.line_precision, out / "classifier.onnx", data.train, line.train,
                               line.val_images, line.val, console)
    val_sample = part_sample(cfg.verdict, data.val, line.val, line_clf.val_probs, line.val_gt)
    th = line_thresholds(cfg.verdict, line_clf.classifier, val_sample, data.train, line.train, cfg.seed,
                         budget.reference_deadline(), console)
    thresholds = store_thresholds(th, out, line_clf)
    on_val = val_pipeline(detector, line_clf, th, data, line, cfg.verdict.match_iou)
    metrics = train_metrics(det, clf, cls_threads, line, crops, line_clf, thresholds, on_val, data, budget)
    _plots(out / "plots", clf.val_metrics["confusion_matrix"], data.labels, val_sample, th)
    (out / "metrics.json").write_text(json.dumps({"train": metrics}, indent=2, default=float))
    return TrainOutcome(out, write_run(out, data_yaml, data, snapshot, metrics), metrics)


def train_qc(data: Path | str, cfg: QCConfig, out: Path, *, detector_weights: str | Path | None = None,
             console: Console | None = None) -> TrainOutcome | None:
    """``qc train DATA``: a data.yaml trains detector and crop classifier (``train_run``); a CSV manifest or a
    folder of class folders trains a part classifier (``industrial_qc.part_train``). None on a torchrun rank
    other than 0 (rank 0 writes the run and returns it)."""
    from industrial_qc.parts import data_kind

    if data_kind(data) == "detect":
        return train_run(Path(data), cfg, out, detector_weights=detector_weights, console=console)
    if detector_weights is not None:
        raise InputError("--detector-weights is for detection data (a data.yaml); a part classifier starts from "
                         "--set part.weights=...")
    from industrial_qc.part_train import train_part_run

    return train_part_run(data, cfg, out, console=console)

def _plots(plot_dir: Path, confusion: list[list[int]], labels: list[str], val: PartSample, th: Thresholds) -> None:
    """Confusion matrix of stage 2 on val crops; part-level precision-recall curve with the chosen thresholds."""
    from sklearn.metrics import precision_recall_curve

    from common.plots import pyplot, save_confusion_matrix

    plt = pyplot()
    scores, defective = val.scores, val.defective

    save_confusion_matrix(plot_dir / "confusion_matrix.png", confusion, labels, "classifier, val crops")

    fig, ax = plt.subplots(figsize=(5, 4))
    if defective.any() and (~defective).any():
        p, r, _ = precision_recall_curve(defective, scores)
        ax.plot(r, p, label="part: defective vs good")
    for t, name in ((th.review, "review"), (th.fail, "fail")):
        pred = scores >= t
        rec = (pred & defective).sum() / max(defective.sum(), 1)
        prec = (pred & defective).sum() / max(pred.sum(), 1)
        ax.scatter([rec], [prec], label=f"{name} >= {t:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("part-level PR curve (val)")
    fig.tight_layout()
    fig.savefig(plot_dir / "pr_curve.png", dpi=100)
    plt.close(fig)
