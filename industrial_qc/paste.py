"""In-image defect copy-paste for the detector's training samples.

A labelled defect is copied, with a margin of its own surface around it, to a free spot of the same image and
blended in with a feathered edge; its box is added to the labels. The copy sits on the texture it was cut from
(same part, same camera, same flat-field), so no seam of a foreign surface is taught, and the detector sees more
defects per step and in more places. Images without defects are left alone: nothing of theirs would fit.

It wraps the training dataset's ``get_image_and_label`` (the image and labels before Ultralytics' mosaic,
affine, flips and colour jitter), so every image a mosaic draws can receive copies.
"""

from __future__ import annotations

import numpy as np

from industrial_qc.crops import overlaps_any


def _feather(h: int, w: int, core: tuple[int, int, int, int]) -> np.ndarray:
    """(h, w) float32 weights: 1 on the core box (x1, y1, x2, y2 inside the patch), falling linearly to 0 at the
    patch border."""
    x1, y1, x2, y2 = core
    xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    ax = np.minimum(np.clip((xs + 1) / max(x1 + 1, 1), 0, 1), np.clip((w - xs) / max(w - x2 + 1, 1), 0, 1))
    ay = np.minimum(np.clip((ys + 1) / max(y1 + 1, 1), 0, 1), np.clip((h - ys) / max(h - y2 + 1, 1), 0, 1))
    return np.minimum(ay[:, None], ax[None, :])


def paste_defects(img: np.ndarray, cls: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, *,
                  margin: float = 0.25, tries: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One copy of each labelled defect of ``img`` at a random free place of the same image.

    ``img`` (H, W, C) uint8; ``cls`` (K, 1); ``boxes`` (K, 4) x1, y1, x2, y2 in pixels. The copied patch is the
    box grown by ``margin`` of its longer side (at least 3 px) each way; it is blended with weights falling from
    1 on the box to 0 at the patch border, and it never lands on another box or copy (grown the same way). A
    defect whose patch touches another defect's box (the copy would carry an unlabelled piece of it) or that
    finds no free place in ``tries`` draws is not copied. Returns a new image, classes and boxes (the
    originals first); the input arrays are not modified.
    """
    h, w = img.shape[:2]
    out = img.copy()
    new_cls, new_boxes = [cls.reshape(-1, 1)], [boxes.reshape(-1, 4)]
    grow = np.maximum(3.0, margin * np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))
    taken = np.concatenate([boxes[:, :2] - grow[:, None], boxes[:, 2:] + grow[:, None]], axis=1)
    for k in range(len(boxes)):
        x1, y1, x2, y2 = boxes[k]
        g = grow[k]
        px1, py1 = int(max(0, np.floor(x1 - g))), int(max(0, np.floor(y1 - g)))
        px2, py2 = int(min(w, np.ceil(x2 + g))), int(min(h, np.ceil(y2 + g)))
        pw, ph = px2 - px1, py2 - py1
        if pw >= w or ph >= h or pw < 2 or ph < 2:
            continue
        if overlaps_any(np.array([px1, py1, px2, py2], np.float32), np.delete(boxes, k, axis=0)):
            continue  # its patch would carry an unlabelled piece of a neighbouring defect
        for _ in range(tries):
            dx, dy = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
            core = np.array([x1 - px1 + dx, y1 - py1 + dy, x2 - px1 + dx, y2 - py1 + dy], np.float32)
            spot = np.array([dx, dy, dx + pw, dy + ph], np.float32)
            if not overlaps_any(spot, taken):
                break
        else:
            continue
        a = _feather(ph, pw, (int(core[0]) - dx, int(core[1]) - dy, int(np.ceil(core[2])) - dx,
                              int(np.ceil(core[3])) - dy))
        if out.ndim == 3:
            a = a[:, :, None]
        src = img[py1:py2, px1:px2].astype(np.float32)
        dst = out[dy:dy + ph, dx:dx + pw].astype(np.float32)
        out[dy:dy + ph, dx:dx + pw] = np.clip(a * src + (1 - a) * dst + 0.5, 0, 255).astype(np.uint8)
        new_cls.append(cls.reshape(-1, 1)[k:k + 1])
        new_boxes.append(core[None, :])
        taken = np.concatenate([taken, spot[None, :]], axis=0)
    return out, np.concatenate(new_cls, axis=0), np.concatenate(new_boxes, axis=0).astype(np.float32)


def install(dataset, p: float, seed: int, stats: dict | None = None) -> None:
    """Wrap ``dataset.get_image_and_label`` (an Ultralytics YOLODataset used for training) so that with
    probability ``p`` an image with defects gets one copy of each (``paste_defects``). ``stats`` (optional)
    counts ``paste_images`` and ``paste_defects`` as samples are drawn.

    Polygon labels (Ultralytics' segment rows) are reduced to their boxes: with polygons present, Ultralytics'
    mosaic and affine rebuild each sample's boxes from its polygons, and a pasted copy has a box but no polygon
    (IndexError in ``Instances``). The boxes are the polygons' boxes already; they only come out looser after a
    rotation or shear (``degrees``/``shear``, 0 in the default config)."""
    from ultralytics.utils.instance import Instances

    if p <= 0 or getattr(dataset, "_vsuite_paste", False):
        return
    for lb in dataset.labels:
        lb["segments"] = []
    rng = np.random.default_rng(seed)
    stats = {} if stats is None else stats
    original = dataset.get_image_and_label

    def get_image_and_label(index: int) -> dict:
        label = original(index)
        inst = label["instances"]
        if len(inst) == 0 or rng.random() >= p:
            return label
        img = label["img"]
        h, w = img.shape[:2]
        inst.convert_bbox("xyxy")
        boxes = inst.bboxes.copy()
        if inst.normalized:
            boxes *= np.array([w, h, w, h], np.float32)
        n = len(boxes)
        img, cls, boxes = paste_defects(img, np.asarray(label["cls"]), boxes, rng)
        stats["paste_images"] = stats.get("paste_images", 0) + 1
        stats["paste_defects"] = stats.get("paste_defects", 0) + len(boxes) - n
        if inst.normalized:
            boxes /= np.array([w, h, w, h], np.float32)
        label["img"], label["cls"] = img, cls.astype(np.asarray(label["cls"]).dtype)
        label["instances"] = Instances(boxes, inst.segments, None, bbox_format="xyxy", normalized=inst.normalized)
        return label

    dataset.get_image_and_label = get_image_and_label
    dataset._vsuite_paste = True
