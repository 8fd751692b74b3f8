"""Flat-field and contrast normalisation: the detector's input transform (torch-free; the line uses it).

A faint defect is a small, local change of a few grey levels on a surface whose brightness, tint and blotches
vary far more from part to part and across one part (lighting gradients, a hot spot, cast-metal mottling). A
from-scratch detector on a CPU budget spends most of its steps learning to ignore that. Line cameras solve it
in front of the model with a flat-field correction; this does the same from the image alone:

    out = 128 + gain * (img - background) / rms(img - background)

``background`` is the image blurred at ``sigma`` of its side, per channel (computed on a ``grid`` x ``grid``
thumbnail, so it is cheap; gradients are extrapolated at the border), so illumination and tint drop out while
every defect smaller than the blur keeps its shape, polarity and colour. The RMS rescale makes a faint part as
contrasty as a strong one.

The same function prepares the detector's training copies and runs on the line, after the letterbox resize
and before the padding, so train and inference see identical pixels; its parameters travel in the detector's
ONNX metadata (``preprocessing.flatfield``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import yaml


def flatfield(img: np.ndarray, sigma: float = 0.125, gain: float = 40.0, grid: int = 32) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> (H, W, 3) uint8: the image minus its smooth background, rescaled to an RMS of
    ``gain`` grey levels around 128. ``sigma``: background blur as a fraction of each image side."""
    h, w = img.shape[:2]
    small = cv2.resize(img.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA).reshape(grid, grid, -1)
    # Odd reflection at the border (2 * edge - mirror) continues a lighting gradient instead of folding it back,
    # which would leave a dark or bright band along the edges that then dominates the RMS.
    p = int(np.ceil(3 * grid * sigma))
    padded = np.pad(small, ((p, p), (p, p), (0, 0)), mode="reflect", reflect_type="odd")
    small = cv2.GaussianBlur(padded, (0, 0), sigmaX=grid * sigma).reshape(padded.shape)[p:-p, p:-p]
    background = cv2.resize(np.ascontiguousarray(small), (w, h), interpolation=cv2.INTER_LINEAR)
    residual = cv2.subtract(img, background.reshape(img.shape), dtype=cv2.CV_32F)
    rms = cv2.norm(residual, cv2.NORM_L2) / np.sqrt(residual.size) + 1.0  # +1 level: a blank frame stays blank
    # scale, shift, round and saturate to uint8 in one pass
    return cv2.addWeighted(residual, gain / rms, residual, 0.0, 128.0, dtype=cv2.CV_8U).reshape(img.shape)


def fit_to(img: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio to fit ``size`` (h, w): the letterbox resize without the padding, shared
    by the line and the training copies so both feed the same pixels. Returns (image, scale)."""
    h, w = img.shape[:2]
    r = min(size[0] / h, size[1] / w)
    nw, nh = round(w * r), round(h * r)
    if (nw, nh) != (w, h):  # shrinking averages areas: linear sampling drops thin scratches and cracks
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    return img, r


def write_flatfield_dataset(ds, splits: tuple[str, ...], out: Path, imgsz: int, params: dict,
                            progress=None) -> Path:
    """An Ultralytics dataset under ``out`` holding ``splits`` of ``ds`` as the detector sees them (resized to
    ``imgsz``, flat-fielded, lossless PNG) with the same labels; returns its ``data.yaml``.

    ``ds``: an ``industrial_qc.data.Dataset``; ``params``: keyword arguments of ``flatfield``;
    ``progress``: optional callable(done, total) after each image."""
    from industrial_qc.data import read_image

    out = Path(out)
    total, done = sum(len(ds.split(split)) for split in splits), 0
    for split in splits:
        img_dir, lbl_dir = out / "images" / split, out / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(ds.split(split)):
            stem = f"{i:06d}_{s.image.stem}"  # the index keeps same-named files of sub-folders apart
            resized, _ = fit_to(read_image(s.image), (imgsz, imgsz))
            cv2.imwrite(str(img_dir / f"{stem}.png"), flatfield(resized, **params))
            if s.label is not None:  # validated already; a good part keeps having no label file
                shutil.copyfile(s.label, lbl_dir / f"{stem}.txt")
            done += 1
            if progress is not None:
                progress(done, total)
    entries = {split: f"images/{split}" for split in splits}
    for key in ("train", "val"):  # Ultralytics insists on both keys, even to validate one other split
        entries.setdefault(key, entries[splits[0]])
    data = {"path": str(out.resolve()), **entries, "names": list(ds.names)}
    yaml_path = out / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return yaml_path
