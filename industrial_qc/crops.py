"""Padded square crops around boxes: one geometry for training, evaluation and the line (torch-free).

A box (x1, y1, x2, y2) becomes a square of side ``max(w, h) * (1 + 2 * context)``, at least ``min_crop`` of the
image's shorter side, centred on the box. Pixels outside the image are reflected, so a defect at the border
still gets its context. The square is resampled to ``crop_size``: area-averaged when it shrinks, bilinear when it grows.
"""

from __future__ import annotations

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKGROUND_GAP = 0.05  # most a random background window keeps away from a defect, fraction of the shorter side


def square_regions(boxes: np.ndarray, img_w: int, img_h: int, context: float, min_crop: float) -> np.ndarray:
    """(K, 4) xyxy boxes -> (K, 3) [cx, cy, side] in pixels."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(np.maximum(w, h) * (1.0 + 2.0 * context), min_crop * min(img_w, img_h))
    side = np.maximum(side, 4.0)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2, side], axis=1)


def extract_square(img: np.ndarray, cx: float, cy: float, side: float, out_size: int) -> np.ndarray:
    """The square of ``side`` px centred on (cx, cy), resampled to (out_size, out_size, 3) uint8, reflect-padded.

    Shrinking averages areas (``cv2.INTER_AREA`` on the square cut at native resolution): point sampling at any
    scale below 1 breaks a 1-px line into dashes or misses it, so a faint smooth scratch would reach the
    classifier as a broken, jagged line or as nothing. Enlarging samples bilinearly."""
    s = out_size / side
    if s >= 1.0:
        m = np.array([[s, 0.0, out_size / 2 - cx * s], [0.0, s, out_size / 2 - cy * s]], np.float32)
        return cv2.warpAffine(img, m, (out_size, out_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    n = max(out_size, round(side))
    x0, y0 = round(cx - n / 2), round(cy - n / 2)  # whole pixels: the cut is an exact copy, borders reflected
    m = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]], np.float32)
    native = cv2.warpAffine(img, m, (n, n), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
    return cv2.resize(native, (out_size, out_size), interpolation=cv2.INTER_AREA)


def _halve(img: np.ndarray) -> np.ndarray:
    """Each 2x2 block averaged (an odd last row or column dropped), so coordinates map exactly by 1/2."""
    h, w = img.shape[:2]
    return cv2.resize(img[: h - h % 2, : w - w % 2], (w // 2, h // 2), interpolation=cv2.INTER_AREA)


def crops_for_boxes(img: np.ndarray, boxes: np.ndarray, crop_size: int, context: float, min_crop: float,
                    scale: float = 1.0) -> np.ndarray:
    """(K, 4) xyxy boxes -> (K, S, S, 3) uint8 crops, S = round(crop_size * scale). ``scale`` > 1 keeps extra
    margin that training augmentation (shift, zoom, rotate) eats before the centre crop."""
    h, w = img.shape[:2]
    regions = square_regions(boxes, w, h, context, min_crop)
    size = round(crop_size * scale)
    out = np.empty((len(regions), size, size, 3), np.uint8)
    pyramid = [img]  # halved copies, made as needed: a big crop is cut from the level where it is < 2x its output
    for i, (cx, cy, side) in enumerate(regions):
        level, side = 0, float(side) * scale
        while side / 2 ** (level + 1) >= size and min(pyramid[level].shape[:2]) >= 4:
            level += 1
            if len(pyramid) == level:
                pyramid.append(_halve(pyramid[-1]))
        f = 2.0**level
        out[i] = extract_square(pyramid[level], float(cx) / f, float(cy) / f, side / f, size)
    return out


NORMALIZE_KINDS = ("imagenet", "per_crop")


def to_tensor_batch(crops_bgr: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD, normalize: str = "imagenet"
                    ) -> np.ndarray:
    """(K, S, S, 3) uint8 BGR -> (K, 3, S, S) float32 RGB.

    ``normalize="imagenet"``: scale to [0, 1], then (x - mean) / std per channel.
    ``normalize="per_crop"``: each crop and channel standardised to zero mean, unit std: lighting, exposure and
    surface tint drop out, and a faint defect stands out as much as a strong one.
    """
    x = crops_bgr[..., ::-1].astype(np.float32) * (1.0 / 255.0)
    if normalize == "per_crop":
        m = x.mean(axis=(1, 2), keepdims=True)
        sd = x.std(axis=(1, 2), keepdims=True)
        x = (x - m) / np.maximum(sd, 0.02)
    else:
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def box_polarity(gray: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """+1 where the mark inside each xyxy box is brighter than its surroundings, -1 where it is darker: the
    larger of the box's bright and dark extremes (1st / 99th percentile) against a median background as wide
    as the box, which a thin line or a small spot does not move. ``gray`` (H, W) uint8."""
    out = np.zeros(len(boxes), np.int8)
    h, w = gray.shape[:2]
    for i, (x1, y1, x2, y2) in enumerate(np.rint(np.asarray(boxes, np.float32).reshape(-1, 4)).astype(int)):
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, max(x2, x1 + 1)), min(h, max(y2, y1 + 1))
        side = max(x2 - x1, y2 - y1)
        wx1, wy1, wx2, wy2 = max(0, x1 - side), max(0, y1 - side), min(w, x2 + side), min(h, y2 + side)
        win = np.ascontiguousarray(gray[wy1:wy2, wx1:wx2])
        k = min(int(np.clip(2 * (side // 2) + 1, 5, 99)), 2 * ((min(win.shape) - 1) // 2) + 1)  # odd, fits
        background = cv2.medianBlur(win, k) if k >= 3 else np.median(win)
        res = (win.astype(np.float32) - background)[y1 - wy1 : y2 - wy1, x1 - wx1 : x2 - wx1]
        out[i] = 1 if np.quantile(res, 0.99) > -np.quantile(res, 0.01) else -1
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) of xyxy boxes."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


# ------------------------------------------------------------------------------------------- crop sets
def overlaps_any(box: np.ndarray, gt: np.ndarray, margin: float = 0.0, max_grow: float | None = None) -> bool:
    """Whether ``box`` (x1, y1, x2, y2) overlaps any of ``gt`` (K, 4), each grown by ``margin`` of its width and
    height (by at most ``max_grow`` pixels each way, if given)."""
    if len(gt) == 0:
        return False
    g = np.asarray(gt, np.float32).copy()
    gx, gy = margin * (g[:, 2] - g[:, 0]), margin * (g[:, 3] - g[:, 1])
    if max_grow is not None:
        gx, gy = np.minimum(gx, max_grow), np.minimum(gy, max_grow)
    g[:, 0] -= gx
    g[:, 1] -= gy
    g[:, 2] += gx
    g[:, 3] += gy
    ix = np.minimum(box[2], g[:, 2]) - np.maximum(box[0], g[:, 0])
    iy = np.minimum(box[3], g[:, 3]) - np.maximum(box[1], g[:, 1])
    return bool(((ix > 0) & (iy > 0)).any())


def defect_free(boxes: np.ndarray, gt: np.ndarray, margin: float = 0.25) -> np.ndarray:
    """Mask (N,) of the xyxy ``boxes`` that touch no ground-truth box grown by ``margin`` of its size."""
    return np.array([not overlaps_any(b, gt, margin) for b in np.asarray(boxes, np.float32).reshape(-1, 4)], bool)


def random_background_boxes(rng: np.random.Generator, img_w: int, img_h: int, gt: np.ndarray, n: int,
                            rel_sizes: np.ndarray, tries: int = 20) -> np.ndarray:
    """Up to ``n`` xyxy boxes that touch no ground-truth box grown by 25 % of its size (at most ``BACKGROUND_GAP``
    of the shorter image side); sides drawn from ``rel_sizes`` (fractions of the shorter image side, taken from
    the defects) so background crops look like defect crops in scale. Every ``tries // 4`` misses the side is
    halved. Both let large defects leave room: a defect 80 % of the part wide, grown by a quarter, would cover
    the whole part, and none of the classifier's clean surface would come from such parts."""
    out = []
    short = min(img_w, img_h)
    for _ in range(n):
        for t in range(tries):
            side = float(rng.choice(rel_sizes)) * short if len(rel_sizes) else 0.05 * short
            side *= 0.5 ** (t // max(1, tries // 4))
            side = float(np.clip(side * rng.uniform(0.7, 1.4), 2.0, short * 0.9))
            aspect = rng.uniform(0.5, 2.0)
            w, h = side * min(1.0, aspect), side * min(1.0, 1 / aspect)
            x1, y1 = rng.uniform(0, img_w - w), rng.uniform(0, img_h - h)
            box = np.array([x1, y1, x1 + w, y1 + h], np.float32)
            if not overlaps_any(box, gt, margin=0.25, max_grow=BACKGROUND_GAP * short):
                out.append(box)
                break
    return np.array(out, np.float32).reshape(-1, 4)


def hard_negative_boxes(det_boxes: np.ndarray, det_scores: np.ndarray, gt: np.ndarray, k: int,
                        margin: float = 0.25) -> np.ndarray:
    """The ``k`` highest-scoring detections that touch no ground-truth box grown by ``margin`` of its size (the
    rule random background windows follow). A low IoU is not enough: a candidate on one end of a long scratch
    has IoU < 0.1 with the scratch's box, yet its crop shows the scratch, and teaching it as background teaches
    the classifier to dismiss scratches."""
    if len(det_boxes) == 0 or k == 0:
        return np.zeros((0, 4), np.float32)
    if len(gt):
        keep = defect_free(det_boxes, gt, margin)
        det_boxes, det_scores = det_boxes[keep], det_scores[keep]
    order = np.argsort(-det_scores)[:k]
    return det_boxes[order].astype(np.float32)


def matched_proposal_boxes(det_boxes: np.ndarray, gt: np.ndarray, gt_classes: np.ndarray, k: int,
                           iou_thr: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``k`` detections per ground-truth box that overlap it with IoU >= ``iou_thr`` (best IoU first), each
    labelled with that box's class: (boxes (M, 4) xyxy, classes (M,)).

    The line classifies the detector's boxes, not the labeller's: these crops are a little off-centre, too tight
    or too loose in the way the detector is, and they multiply the defect examples (Fast R-CNN trains on proposals
    the same way)."""
    empty = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    if len(det_boxes) == 0 or len(gt) == 0 or k == 0:
        return empty
    iou = box_iou(det_boxes, gt)  # (D, G)
    owner = iou.argmax(axis=1)
    best = iou.max(axis=1)
    boxes, classes = [], []
    for j in range(len(gt)):
        idx = np.flatnonzero((owner == j) & (best >= iou_thr))
        idx = idx[np.argsort(-best[idx])][:k]
        boxes.append(np.asarray(det_boxes, np.float32)[idx])
        classes += [int(gt_classes[j])] * len(idx)
    if not classes:
        return empty
    return np.concatenate(boxes).astype(np.float32), np.array(classes, np.int64)
