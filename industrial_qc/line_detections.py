"""Stage 1's detections at the line confidence, which stage 2's crops and the thresholds are made from.

``line_detections`` sets the line confidence on val (written into ``detector.onnx``) and detects val, and train
when stage 2 or the thresholds need it. Under torchrun rank 0 makes them and ``shared_line_detections`` sends
them to the other ranks, so that every rank cuts the same crops.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from common import distributed
from common.export import write_metadata
from common.progress import add_task, make_progress, update_rate
from industrial_qc.config import QCConfig
from industrial_qc.data import read_image
from industrial_qc.pipeline import Detections, OnnxDetector

if TYPE_CHECKING:
    from industrial_qc.train import TrainData


@dataclass
class LineDetections:
    """What the exported detector makes of both splits at its line confidence. The val images are decoded once
    here for every later step (val splits are small); train images are read again where needed."""

    conf: float
    box_recall: float  # val box recall at ``conf``
    val_images: list[np.ndarray]
    val_gt: list[np.ndarray]  # (K, 4) ground-truth boxes in pixels
    val: list[Detections]
    train: list[Detections]  # empty when neither stage 2 nor the thresholds need them


def _detect_all(detector: OnnxDetector, images: Iterable[np.ndarray], total: int, progress, label: str
                ) -> list[Detections]:
    task = add_task(progress, label, total=total)
    out = []
    for img in images:
        out.append(detector(img))
        progress.update(task, advance=1)
        update_rate(progress, task, "img")
    return out


def _keep(d: Detections, conf: float, min_keep: int) -> Detections:
    """What the line detector makes at ``conf`` of detections made at its floor (``decode``: best first)."""
    m = d.scores >= conf
    m[:min_keep] = True
    return d.subset(m)


def line_detections(cfg: QCConfig, data: TrainData, detector: OnnxDetector, console: Console) -> LineDetections:
    """Set the line confidence (the highest that keeps ``detector.target_box_recall`` of the val boxes the
    detector finds; written into its ONNX file) and detect val at it, and train too when hard negatives,
    proposals or train-split thresholds need it."""
    from industrial_qc.detector import choose_conf

    dcfg, ccfg = cfg.detector, cfg.classifier
    val_images = [read_image(s.image) for s in data.val]
    val_gt = [s.boxes_xyxy(*s.size) for s in data.val]
    detector.conf = dcfg.min_conf
    with make_progress(console) as progress:
        val_raw = _detect_all(detector, val_images, len(val_images), progress, "detect val")
        conf, box_recall = choose_conf(val_raw, val_gt, target_recall=dcfg.target_box_recall,
                                       iou_thr=cfg.verdict.match_iou, floor=dcfg.min_conf, ceiling=dcfg.conf)
        detector.conf = conf
        write_metadata(detector.model.path, {"conf": conf})
        val_dets = [_keep(d, conf, dcfg.min_candidates) for d in val_raw]
        train_dets = []
        if ccfg.hard_negatives or ccfg.proposals_per_defect > 0 or cfg.verdict.reference == "train+val":
            train_dets = _detect_all(detector, (read_image(s.image) for s in data.train), len(data.train),
                                     progress, "detect train")
    console.print(f"  line confidence {conf:.4f}: val box recall {box_recall:.3f} with <= {dcfg.max_det} "
                  "candidates")
    return LineDetections(conf, box_recall, val_images, val_gt, val_dets, train_dets)


def shared_line_detections(line: LineDetections | None, data: TrainData) -> LineDetections:
    """Rank 0's line detections on every torchrun rank (the detections travel, the val images are read again
    here), so that every rank cuts the same crops; ``line`` itself without torchrun."""
    if not distributed.active():
        return line
    sent = distributed.broadcast(None if line is None else (line.conf, line.box_recall, line.val, line.train))
    if line is not None:
        return line
    conf, box_recall, val, train = sent
    return LineDetections(conf, box_recall, [read_image(s.image) for s in data.val],
                          [s.boxes_xyxy(*s.size) for s in data.val], val, train)
