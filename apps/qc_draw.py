"""Factory part views: the image with class-coloured labelled boxes, the crops, and the run's classifier on them.

Images are BGR uint8 as OpenCV reads them; what goes to streamlit is RGB. onnxruntime only, no torch.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from common.errors import InputError
from common.inference import OnnxModel

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
    from industrial_qc.data import decode_image  # cv2 + numpy: the line's decoding (16-bit and float stretched)

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
    from industrial_qc.crops import extract_square  # cv2 + numpy only

    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1, 4.0) * (1 + 2 * context)
    return extract_square(img, (x1 + x2) / 2, (y1 + y2) / 2, side, size)


class ClassifierView:
    """The run's line classifier applied to a part's boxes: the same crops stage 2 saw, all class probabilities.

    Crop geometry (``crop_size``, ``context``, ``min_crop``), normalisation (``normalize``: per_crop or
    imagenet) and temperature come from the ONNX metadata, as in ``industrial_qc.pipeline.OnnxClassifier``.
    """

    def __init__(self, path: Path) -> None:
        self.model = OnnxModel(path, threads=1)
        md = self.model.metadata
        self.labels = list(md.get("labels") or [])
        if not self.labels:
            raise InputError(f"{path}: no labels in the model metadata")
        self.crop_size = int(md.get("crop_size", 64))
        self.context = float(md.get("context", 0.5))
        self.min_crop = float(md.get("min_crop", 0.0))
        self.mean = tuple(md.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(md.get("std", (0.229, 0.224, 0.225)))
        self.temperature = float(md.get("temperature", 1.0))
        self.normalize = str(md.get("normalize", "imagenet"))

    def crops(self, img: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        from industrial_qc.crops import crops_for_boxes  # cv2 + numpy only

        return crops_for_boxes(img, boxes, self.crop_size, self.context, self.min_crop)

    def probs(self, crops_bgr: np.ndarray) -> np.ndarray:
        """(K, S, S, 3) uint8 BGR -> (K, C) calibrated probabilities."""
        from industrial_qc.crops import to_tensor_batch

        if len(crops_bgr) == 0:
            return np.zeros((0, len(self.labels)))
        x = to_tensor_batch(crops_bgr, self.mean, self.std, self.normalize)
        z = self.model.run(x).astype(np.float64) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def part_crops(img: np.ndarray, defects: list[dict], clf: ClassifierView | None
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
