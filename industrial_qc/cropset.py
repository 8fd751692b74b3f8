"""Crop sets for stage 2: ground-truth defect crops, random defect-free windows and the detector's false
alarms (hard negatives), as uint8 arrays with class targets (0 = ``background``). Torch-free: eval uses it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from industrial_qc.crops import (
    box_polarity,
    crops_for_boxes,
    hard_negative_boxes,
    matched_proposal_boxes,
    random_background_boxes,
)
from industrial_qc.data import Sample, read_image

TRAIN_MARGIN = 1.5  # training crops keep 1.5x the context; augmentation shifts/zooms, then a centre crop


@dataclass
class CropSet:
    """crops (N, S, S, 3) uint8 BGR, targets (N,) int64 (0 = background, k = names[k - 1]), kind (N,) str,
    polarity (N,) int8 when measured (``build_crop_set(measure_polarity=True)``): +1 a bright mark, -1 a dark one
    (``crops.box_polarity``) for the ground-truth crops, 0 for the others."""

    crops: np.ndarray
    targets: np.ndarray
    kinds: np.ndarray
    polarity: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def counts(self, n_classes: int) -> list[int]:
        return np.bincount(self.targets, minlength=n_classes).tolist()

    def bright_share(self, n_classes: int) -> dict[int, float]:
        """Per defect class with ground-truth crops: the share of them that are bright marks."""
        if self.polarity is None:
            raise ValueError("bright_share: this crop set was built without measure_polarity=True")
        gt = self.kinds == "defect"
        return {c: float((self.polarity[gt & (self.targets == c)] > 0).mean()) for c in range(1, n_classes)
                if (gt & (self.targets == c)).any()}


def defect_rel_sizes(samples: Sequence[Sample]) -> np.ndarray:
    """Longer box side of every ground-truth defect, as a fraction of its image side."""
    sizes = [np.maximum(s.boxes[:, 3], s.boxes[:, 4]) for s in samples if s.defective]
    return np.concatenate(sizes) if sizes else np.array([0.05])


def build_crop_set(
    samples: Sequence[Sample],
    *,
    crop_size: int,
    context: float,
    min_crop: float,
    scale: float = 1.0,
    background_per_defect: float = 1.0,
    detections: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
    hard_negatives_per_image: int = 0,
    proposals_per_defect: int = 0,
    seed: int = 0,
    rel_sizes: np.ndarray | None = None,
    on_image: Callable[[], None] | None = None,
    measure_polarity: bool = False,
    images: Sequence[np.ndarray] | None = None,
) -> CropSet:
    """Crops of every ground-truth box, ``background_per_defect`` random clean windows per box (spread over all
    images, good parts included), up to ``hard_negatives_per_image`` unmatched detections per image and up to
    ``proposals_per_defect`` detections per box that match it (IoU >= 0.5, labelled with its class)
    (``detections[i] = (boxes xyxy px, scores)`` for ``samples[i]``). ``measure_polarity``: also each
    ground-truth crop's polarity (what ``classifier.augment.invert_classes: auto`` reads). ``images``: the
    samples already decoded (``read_image``), else each is read here."""
    rng = np.random.default_rng(seed)
    rel_sizes = defect_rel_sizes(samples) if rel_sizes is None else rel_sizes
    n_gt = sum(len(s.boxes) for s in samples)
    n_bg = round(background_per_defect * max(n_gt, 1))
    bg_per_image = np.bincount(rng.integers(0, len(samples), n_bg), minlength=len(samples)) if samples else []
    crops, targets, kinds, polarity = [], [], [], []
    for i, s in enumerate(samples):
        img = read_image(s.image) if images is None else images[i]
        gray = (cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img) if measure_polarity else None
        h, w = img.shape[:2]
        gt = s.boxes_xyxy(w, h)
        parts = [(gt, s.classes + 1, "defect")]
        bg = random_background_boxes(rng, w, h, gt, int(bg_per_image[i]), rel_sizes)
        parts.append((bg, np.zeros(len(bg), np.int64), "random"))
        if detections is not None and hard_negatives_per_image and i in detections:
            boxes, scores = detections[i]
            hn = hard_negative_boxes(boxes, scores, gt, hard_negatives_per_image)
            parts.append((hn, np.zeros(len(hn), np.int64), "hard_negative"))
        if detections is not None and proposals_per_defect and i in detections:
            pb, pc = matched_proposal_boxes(detections[i][0], gt, s.classes, proposals_per_defect)
            parts.append((pb, pc + 1, "proposal"))
        for boxes, tgt, kind in parts:
            if len(boxes):
                crops.append(crops_for_boxes(img, boxes, crop_size, context, min_crop, scale))
                targets.append(np.asarray(tgt, np.int64))
                kinds += [kind] * len(boxes)
                if measure_polarity:
                    polarity.append(box_polarity(gray, boxes) if kind == "defect" else np.zeros(len(boxes), np.int8))
        if on_image is not None:
            on_image()
    size = round(crop_size * scale)
    return CropSet(
        crops=np.concatenate(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
        targets=np.concatenate(targets) if targets else np.zeros(0, np.int64),
        kinds=np.array(kinds, dtype=object),
        polarity=(np.concatenate(polarity) if polarity else np.zeros(0, np.int8)) if measure_polarity else None,
    )
