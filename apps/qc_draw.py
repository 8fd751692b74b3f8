"""Factory part views: the image with class-coloured labelled boxes, the crops, and the run's classifier on them.

Images are BGR uint8 as OpenCV reads them; what goes to streamlit is RGB. The classifier is the line's own reader
(``industrial_qc.pipeline.OnnxClassifier``: crop geometry, normalisation, labels and temperature from the ONNX
metadata). onnxruntime only, no torch.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from common.errors import InputError
from industrial_qc.crops import extract_square
from industrial_qc.images import decode_image
from industrial_qc.pipeline import OnnxClassifier

# Distinct colours (BGR), one per class in the order of the run's labels.
PALETTE = [(40, 39, 214), (180, 119, 31), (44, 160, 44), (14, 127, 255), (189, 103, 148), (75, 86, 140),
           (194, 119, 227), (34, 189, 188), (207, 190, 23), (127, 127, 127)]
MIN_VIEW_SIDE = 512  # small parts are upscaled so labels stay legible


def class_colour(name: str, names: list[str]) -> tuple[int, int, int]:
    """BGR colour of a class: by its index in ``names``, else by a stable hash of the name."""
    i = names.index(name) if name in names else sum(name.encode()) + len(names)
    return PALETTE[i % len(PALETTE)]


def hex_colour(bgr: tuple[int, int, int]) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


def read_image(path: Path) -> np.ndarray:
    """BGR uint8 (H, W, 3); InputError naming the file when it is missing or cannot be decoded."""
    if not path.is_file():
        raise InputError(f"{path}: image not found")
    data = np.fromfile(str(path), np.uint8)
    img = decode_image(data) if data.size else None
    if img is None:
        raise InputError(f"{path}: cannot decode image (corrupt, empty or not an image)")
    return img


def draw_defects(img: np.ndarray, defects: list[dict], names: list[str], selected: int | None = None
                 ) -> np.ndarray:
    """RGB copy of ``img`` with each defect boxed in its class colour, labelled ``#index class p(defect)``."""
    h, w = img.shape[:2]
    scale = max(1.0, MIN_VIEW_SIDE / max(h, w))
    out = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_NEAREST) \
        if scale > 1 else img.copy()
    thick = max(2, round(max(out.shape[:2]) / 300))
    font = 0.4 + 0.1 * thick
    for i, d in enumerate(defects):
        colour = class_colour(d["class"], names)
        x1, y1, x2, y2 = (round(v * scale) for v in d["box"])
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick * (2 if i == selected else 1), cv2.LINE_8)
        text = f"#{i} {d['class']} {d['defect_prob']:.2f}"  # as the line's annotated images
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        ty = y1 - 3 if y1 - th - base - 3 >= 0 else min(y2 + th + 3, out.shape[0] - base)
        cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + base - 1), colour, -1)
        cv2.putText(out, text, (x1 + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1, cv2.LINE_AA)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def simple_crop(img: np.ndarray, box: list[float], context: float = 0.5, size: int = 128) -> np.ndarray:
    """Square crop around ``box`` with ``context`` padding each side (reflect at the border), BGR (size, size, 3),
    resampled as stage 2's crops are (area-averaged when it shrinks: a hairline scratch stays whole)."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1, 4.0) * (1 + 2 * context)
    return extract_square(img, (x1 + x2) / 2, (y1 + y2) / 2, side, size)


def part_crops(img: np.ndarray, defects: list[dict], clf: OnnxClassifier | None
               ) -> tuple[list[np.ndarray], np.ndarray | None]:
    """RGB crops of the defects and, with a classifier, their (K, C) probabilities."""
    if not defects:
        return [], None
    boxes = np.array([d["box"] for d in defects], np.float32)
    if clf is not None:
        crops = clf.crops(img, boxes)
        probs = clf.probs(crops)
    else:
        crops = np.stack([simple_crop(img, d["box"]) for d in defects])
        probs = None
    return [cv2.cvtColor(c, cv2.COLOR_BGR2RGB) for c in crops], probs
