"""The verdict thresholds a training run chooses: the line's models score the val parts (and, with
``verdict.reference: train+val``, a sample of the train parts), and ``verdict.choose_thresholds`` reads them."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from rich.console import Console

from common.progress import add_task, make_progress, update_rate
from industrial_qc.config import VerdictConfig
from industrial_qc.crops import defect_free
from industrial_qc.data import Sample, read_image
from industrial_qc.pipeline import Detections, OnnxClassifier
from industrial_qc.verdict import PartSample, Thresholds, candidate_scores, choose_thresholds

# Train parts scored for the verdict thresholds (verdict.reference: train+val): at most this many, and at least
# the second number even when the training budget has run out.
MAX_REFERENCE_TRAIN_PARTS = 2000
MIN_REFERENCE_TRAIN_PARTS = 100


def part_sample(vcfg: VerdictConfig, samples: Sequence[Sample], dets: Sequence[Detections],
                probs: Sequence[np.ndarray], gt: Sequence[np.ndarray]) -> PartSample:
    """The thresholds' view of some parts from their line detections, class probabilities (K, C) and ground-truth
    boxes in pixels: each part's highest candidate score (0 without candidates) and, with
    ``fail_from_defect_free_regions``, each defective part's highest score among its candidates that touch no
    labelled defect (the rule hard negatives follow): what it would score if it were good."""
    cand = [candidate_scores(1.0 - p[:, 0], d.scores, vcfg.score) for d, p in zip(dets, probs, strict=True)]
    scores = np.array([float(c.max()) if len(c) else 0.0 for c in cand])
    free = None
    if vcfg.fail_from_defect_free_regions:
        free = []
        for s, d, c, g in zip(samples, dets, cand, gt, strict=True):
            if s.defective:
                keep = defect_free(d.boxes, g)
                free.append(float(c[keep].max()) if keep.any() else 0.0)
    return PartSample(scores, np.array([s.defective for s in samples], bool), None if free is None else np.array(free))


def val_thresholds(vcfg: VerdictConfig, val: PartSample, train: PartSample | None = None) -> Thresholds:
    """The verdict thresholds from the val parts and, with ``reference: train+val``, the train parts."""
    return choose_thresholds(val.scores, val.defective, target_recall=vcfg.target_recall,
                             max_false_reject=vcfg.max_false_reject, min_review=vcfg.min_review_threshold,
                             max_review=vcfg.max_review_threshold, min_fail=vcfg.min_fail_threshold,
                             defect_free_scores=val.defect_free,
                             train=train if vcfg.reference == "train+val" else None, score=vcfg.score,
                             recall_confidence=vcfg.recall_confidence)


def train_reference(vcfg: VerdictConfig, classifier: OnnxClassifier, train: Sequence[Sample],
                    dets: Sequence[Detections], seed: int, deadline: float | None,
                    max_parts: int = MAX_REFERENCE_TRAIN_PARTS, min_parts: int = MIN_REFERENCE_TRAIN_PARTS,
                    console: Console | None = None) -> PartSample:
    """The train split's parts for the thresholds, scored by the line's models: up to ``max_parts`` of them in a
    seeded random order, and after ``deadline`` (time.monotonic; the training budget) no more than ``min_parts``."""
    order = np.random.default_rng(seed).permutation(len(train))[:max_parts]
    used, probs, gt = [], [], []
    with make_progress(console) as progress:
        task = add_task(progress, "score train parts", total=len(order), info="verdict thresholds")
        for i in order:
            if deadline is not None and time.monotonic() > deadline and len(used) >= min_parts:
                break
            img = read_image(train[i].image)
            h, w = img.shape[:2]
            used.append(int(i))
            probs.append(classifier.probs(classifier.crops(img, dets[i].boxes)))
            gt.append(train[i].boxes_xyxy(w, h))
            progress.update(task, advance=1)
            update_rate(progress, task, "img")
    return part_sample(vcfg, [train[i] for i in used], [dets[i] for i in used], probs, gt)


def line_thresholds(vcfg: VerdictConfig, classifier: OnnxClassifier, val: PartSample,
                    train: Sequence[Sample], train_dets: Sequence[Detections], seed: int, deadline: float | None,
                    console: Console) -> Thresholds:
    """The thresholds the line runs with, from the scored val parts and (``reference: train+val``) a sample of the
    train parts scored now by the line's ``classifier``; why the train parts or the review floor were not used
    as asked goes to ``console``."""
    train_sample = None
    if vcfg.reference == "train+val":
        train_sample = train_reference(vcfg, classifier, train, train_dets, seed, deadline, console=console)
    th = val_thresholds(vcfg, val, train_sample)
    for note in (th.reference_note, th.review_note):
        if note:
            console.print(f"[yellow]  thresholds: {note}[/]")
    return th
