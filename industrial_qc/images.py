"""Decoding part images as the line sees them, and refusing what it cannot judge (torch-free).

``read_image`` is what training, evaluation, scoring and the line read: BGR uint8 (H, W, 3), upright by its EXIF
orientation, 16-bit and float images stretched to 8 bits. With ``ImageLimits`` (the line and batch scoring) it
also refuses, naming the file, an image whose header declares more than ``max_pixels`` (before any pixel is
decoded: a 261 KB PNG can declare 16384 x 16384), one smaller than ``min_side`` on a side, one with NaN or
infinite pixels, and a blank one (every pixel the same): a part nobody can judge is an error, never a PASS.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import InputError

# OpenCV's own ceiling for one decoded image, below its 2^30 default: a backstop for headers Pillow cannot read.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 28))

import cv2  # after the ceiling above: OpenCV reads it when it first decodes

STRETCH_RANGE = (16.0, 240.0)  # where a 16-bit or float image's 0.01-99.99th percentiles land in 8 bits


@dataclass(frozen=True)
class ImageLimits:
    """What the line accepts as a part image (config ``input``)."""

    max_pixels: int = 100_000_000
    min_side: int = 32

    @classmethod
    def from_config(cls, cfg: dict | None) -> ImageLimits:
        """From a run's config snapshot section ``input`` (runs made before it existed: the defaults)."""
        cfg = cfg or {}
        return cls(**{k: int(cfg[k]) for k in ("max_pixels", "min_side") if cfg.get(k) is not None})


def read_image(path: Path | str, limits: ImageLimits | None = None) -> np.ndarray:
    """BGR uint8 (H, W, 3); InputError naming the file when it cannot be decoded (see ``decode_image``) or, with
    ``limits``, when it is not a part the line can judge (see the module docstring)."""
    path = Path(path)
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if buf.size == 0:
        raise InputError(f"{path}: empty file")
    if limits is None:
        img = decode_image(buf)
        if img is None:
            raise InputError(f"{path}: cannot decode image (corrupt or unsupported format)")
        return img
    declared = header_size(buf)
    if declared is not None and declared[0] > limits.max_pixels:
        raise InputError(f"{path}: header declares {declared[1]} ({declared[0] / 1e6:.0f} MP), over the "
                         f"{limits.max_pixels / 1e6:g} MP limit (input.max_pixels); not decoded")
    raw = _imdecode(buf)
    if raw is None:
        raise InputError(f"{path}: cannot decode image (corrupt, truncated or unsupported format)")
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        n = int(raw.size - np.count_nonzero(np.isfinite(raw)))
        raise InputError(f"{path}: {n} of {raw.size} pixel values are NaN or infinite")
    img = _to_bgr8(raw)
    check_image(img, limits, str(path))
    return img


def check_image(img: np.ndarray, limits: ImageLimits, where: str) -> None:
    """Refuse a decoded image (file or video frame) the line cannot judge: too small or blank."""
    h, w = img.shape[:2]
    if min(h, w) < limits.min_side:
        raise InputError(f"{where}: {w}x{h} pixels is smaller than the {limits.min_side}-px side the detector "
                         "needs (input.min_side)")
    if h * w > limits.max_pixels:
        raise InputError(f"{where}: {w}x{h} pixels is over the {limits.max_pixels / 1e6:g} MP limit "
                         "(input.max_pixels)")
    lo, hi = int(img.min()), int(img.max())
    if lo == hi:
        raise InputError(f"{where}: blank image (every pixel is {lo}); camera or lighting fault?")


def header_size(buf: np.ndarray) -> tuple[int, str] | None:
    """(pixels, "WxH pixels") the encoded image's header declares, without decoding pixels; None when Pillow cannot read
    the header (then OpenCV's own ceiling applies)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(buf.tobytes())) as im:
            w, h = im.size
            return w * h, f"{w}x{h} pixels"
    except Image.DecompressionBombError as exc:  # over Pillow's own ceiling: its message has the pixel count
        m = re.search(r"\((\d+) pixels\)", str(exc))
        return (int(m.group(1)), f"{m.group(1)} pixels") if m else (1 << 40, "more pixels than Pillow's limit")
    except Exception:
        return None


def decode_image(buf: np.ndarray) -> np.ndarray | None:
    """Encoded bytes -> BGR uint8 (H, W, 3), turned upright by its EXIF orientation; None if undecodable.

    Grayscale is expanded and alpha dropped. A 16-bit or float image (a 12- or 16-bit line camera, a float TIFF)
    is mapped linearly from its 0.01st-99.99th percentile to ``STRETCH_RANGE`` (16-240). OpenCV's default (and
    Ultralytics') keeps the high byte instead, which leaves a 12-bit image 16 grey levels and a faint defect
    none; a float TIFF it does not decode at all. Both stages look at each image only up to a linear map (the
    detector's flat-field, the classifier's per-crop standardisation); the margin to 0 and 255 is what an 8-bit
    camera image usually has (benchmarks/RESULTS.md)."""
    raw = _imdecode(buf)
    return None if raw is None else _to_bgr8(raw)


def _imdecode(buf: np.ndarray) -> np.ndarray | None:
    # native channels and depth (IMREAD_COLOR alone cannot read a 1-channel float TIFF), EXIF orientation applied
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error:  # e.g. over OPENCV_IO_MAX_IMAGE_PIXELS
        return None
    if img is None or img.size == 0:
        return None
    return img


def _to_bgr8(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] in (2, 4):  # gray + alpha, BGR + alpha
        img = img[..., :1] if img.shape[2] == 2 else img[..., :3]
    if img.dtype != np.uint8:
        img = _stretch_to_uint8(img)
    if img.ndim == 2 or img.shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img)


def _stretch_to_uint8(img: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(img.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    step_y, step_x = max(1, x.shape[0] // 512), max(1, x.shape[1] // 512)  # the percentiles from <= 512^2 pixels
    lo, hi = np.percentile(x[::step_y, ::step_x], [0.01, 99.99])
    out_lo, out_hi = STRETCH_RANGE
    scale = (out_hi - out_lo) / (hi - lo) if hi > lo else 0.0
    return np.clip((x - lo) * scale + out_lo + 0.5, 0, 255).astype(np.uint8)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels; swapped when the EXIF orientation
    turns the image a quarter (OpenCV and Ultralytics decode it upright). What Pillow cannot open is decoded
    (``read_image``: InputError naming the file if that fails too)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                turned = im.getexif().get(0x0112) in (5, 6, 7, 8)
            except Exception:  # a broken EXIF block: OpenCV ignores it too
                turned = False
    except Exception:  # a format or size Pillow refuses (its decompression-bomb limit), not OpenCV
        h, w = read_image(path).shape[:2]
        return w, h
    return (h, w) if turned else (w, h)


def write_image(path: Path, img: np.ndarray) -> Path:
    """Encode ``img`` (BGR uint8) by ``path``'s suffix and write it through a temporary name in the same folder,
    so a reader (a sorter, the app) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, img)
    if not ok:
        raise OSError(f"{path}: cannot encode the image")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.tobytes())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return path
