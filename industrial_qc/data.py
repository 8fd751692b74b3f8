"""Load and validate an Ultralytics detection dataset (``data.yaml`` + ``images/<split>`` + ``labels/<split>``).

Validation says exactly what is wrong, naming the file and line: a malformed label line, a class id outside
``names``, coordinates outside [0, 1], an unreadable image, an empty split. An image without a label file is a
good (defect-free) part. Label rows are boxes (``class cx cy w h``) or polygons (``class x1 y1 x2 y2 x3 y3 ...``,
Ultralytics' segment rows, read as the box around the points, as Ultralytics reads them for detection).
Torch-free: the eval and scoring paths use it too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from common.errors import InputError
from industrial_qc.images import STRETCH_RANGE as STRETCH_RANGE  # decoding lives in images.py
from industrial_qc.images import decode_image, image_size
from industrial_qc.images import read_image as read_image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
MAX_REPORTED = 20
MIN_DEFECT_PX = 6.0  # a defect's longer side at the detector's input below which it is easily missed (stride 8)


@dataclass
class Sample:
    """One part: its image, its label file (None = good part) and boxes (K, 5) [class, cx, cy, w, h] in [0, 1]."""

    image: Path
    label: Path | None
    boxes: np.ndarray
    _size: tuple[int, int] | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) upright, from the image header (``image_size``): read on first use, then kept, so
        the steps that need it share one read (loading does not read it: most uses of a dataset never do)."""
        if self._size is None:
            self._size = image_size(self.image)
        return self._size

    @property
    def defective(self) -> bool:
        return len(self.boxes) > 0

    def boxes_xyxy(self, width: int, height: int) -> np.ndarray:
        """(K, 4) pixel boxes [x1, y1, x2, y2] for an image of the given size."""
        b = self.boxes
        if len(b) == 0:
            return np.zeros((0, 4), np.float32)
        cx, cy, w, h = b[:, 1] * width, b[:, 2] * height, b[:, 3] * width, b[:, 4] * height
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)

    @property
    def classes(self) -> np.ndarray:
        return self.boxes[:, 0].astype(np.int64)


@dataclass
class Dataset:
    yaml_path: Path
    root: Path
    names: list[str]
    splits: dict[str, list[Sample]] = field(default_factory=dict)

    def split(self, name: str) -> list[Sample]:
        if name not in self.splits:
            raise InputError(f"{self.yaml_path}: no '{name}' split (has: {', '.join(self.splits) or 'none'})")
        return self.splits[name]

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            name: {"images": len(s), "good": sum(not x.defective for x in s), "boxes": sum(len(x.boxes) for x in s)}
            for name, s in self.splits.items()
        }


def _names_from(data: dict, yaml_path: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise InputError(f"{yaml_path}: 'names' keys must be class ids 0..N-1") from None
        if keys != list(range(len(keys))):
            raise InputError(f"{yaml_path}: 'names' keys must be 0..{len(keys) - 1} without gaps, got {keys}")
        names = [str(names[k] if k in names else names[str(k)]) for k in keys]
    if not isinstance(names, list) or not names:
        raise InputError(f"{yaml_path}: 'names' must be a non-empty list (or id: name mapping) of class names")
    if "background" in names:
        raise InputError(f"{yaml_path}: 'background' is reserved for the classifier's no-defect class")
    nc = data.get("nc")
    if nc is not None and int(nc) != len(names):
        raise InputError(f"{yaml_path}: nc: {nc} but 'names' lists {len(names)} classes")
    return [str(n) for n in names]


def dataset_root(data: dict, yaml_path: Path) -> Path:
    """The dataset root: ``path`` from the yaml (relative = relative to the yaml's folder), else the yaml's folder."""
    base = yaml_path.resolve().parent
    p = data.get("path")
    if not p:
        return base
    root = Path(str(p)).expanduser()
    return root if root.is_absolute() else (base / root).resolve()


def _split_images(entry, root: Path, yaml_path: Path, split: str) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for e in entries:
        p = Path(str(e)).expanduser()
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            images += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text().splitlines():
                if line.strip():
                    q = Path(line.strip())
                    images.append(q if q.is_absolute() else (p.parent / q).resolve())
        else:
            raise InputError(f"{yaml_path}: {split}: {p} is neither a folder nor a .txt list of images")
    return images


def label_path_for(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` in the path becomes ``/labels/``, the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _label_row(fields: list[str], where: str, n_classes: int, yaml_name: str) -> tuple[list[float] | None, str | None]:
    """One label row -> ([class, cx, cy, w, h], None) or (None, problem). A box row has 5 values; a polygon row
    (Ultralytics' segment format: class x1 y1 x2 y2 x3 y3 ...) becomes the box around its points, as Ultralytics
    reads it for detection."""
    line = " ".join(fields)
    polygon = len(fields) > 6
    if polygon and len(fields) % 2 == 0:
        return None, f"{where}: a polygon row needs class and x y pairs (an odd count), got {len(fields)} values"
    if not polygon and len(fields) != 5:
        return None, (f"{where}: expected 5 values 'class cx cy w h' (or a polygon 'class x1 y1 x2 y2 x3 y3 ...'), "
                      f"got {len(fields)}: {line[:60]!r}")
    try:
        values = [float(v) for v in fields]
    except ValueError:
        return None, f"{where}: non-numeric value in {line[:60]!r}"
    cls = values[0]
    if cls != int(cls) or cls < 0:
        return None, f"{where}: class id {fields[0]} is not a non-negative integer"
    if int(cls) >= n_classes:
        return None, f"{where}: class id {int(cls)} >= {n_classes} classes in {yaml_name}"
    if polygon:
        xy = np.array(values[1:]).reshape(-1, 2)
        bad = [f"point {i + 1} ({x:g}, {y:g})" for i, (x, y) in enumerate(xy) if not (0 <= x <= 1 and 0 <= y <= 1)]
        if bad:
            return None, f"{where}: coordinates outside [0, 1]: {', '.join(bad[:3])}"
        (x1, y1), (x2, y2) = xy.min(axis=0), xy.max(axis=0)
        values = [cls, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        if values[3] <= 0 or values[4] <= 0:
            return None, f"{where}: polygon has zero width or height"
        return values, None
    bad = [f"{k}={v:g}" for k, v in zip(("cx", "cy", "w", "h"), values[1:], strict=True) if not 0.0 <= v <= 1.0]
    if bad:
        return None, f"{where}: coordinates outside [0, 1]: {', '.join(bad)}"
    if values[3] <= 0 or values[4] <= 0:
        return None, f"{where}: box has zero width or height"
    return values, None


def parse_label_file(path: Path, n_classes: int, yaml_name: str = "data.yaml") -> tuple[np.ndarray, list[str]]:
    """Boxes (K, 5) from a YOLO txt file and the problems found, each ``file:line: what``. Box rows and polygon
    rows are both read; a file that mixes them is refused, as Ultralytics refuses it. A row repeated exactly
    counts once, as Ultralytics counts it (else the pipeline's recall would miss the twin of every match)."""
    problems: list[str] = []
    rows: list[list[float]] = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return np.zeros((0, 5)), [f"{path}: unreadable label file ({exc})"]
    kinds: dict[bool, int] = {}  # polygon row? -> first line number of that kind
    seen: set[bytes] = set()
    for no, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        where = f"{path}:{no}"
        kinds.setdefault(len(fields) > 6, no)
        row, problem = _label_row(fields, where, n_classes, yaml_name)
        if problem:
            problems.append(problem)
            continue
        # a repeated row is one defect, as Ultralytics reads it (distinct polygons may share a box)
        key = np.array(fields, np.float32).tobytes()  # validated numbers; float32, as Ultralytics compares
        if key not in seen:
            seen.add(key)
            rows.append(row)
    if len(kinds) == 2:
        problems.append(f"{path}:{max(kinds.values())}: mixes box rows (5 values, from line {kinds[False]}) and "
                        f"polygon rows (from line {kinds[True]}); use one format per file")
    return np.array(rows, np.float64).reshape(-1, 5), problems


def load_dataset(
    yaml_path: Path | str,
    splits: tuple[str, ...] | None = None,
    *,
    check_images: bool = True,
    required: tuple[str, ...] = ("train", "val"),
) -> Dataset:
    """Read ``data.yaml`` and validate the chosen splits (default: all present). Raises one InputError that
    lists every problem found (the first ``MAX_REPORTED``), each naming its file and line."""
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise InputError(f"{yaml_path}: dataset yaml not found")
    try:
        data = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"{yaml_path}{f':{mark.line + 1}' if mark else ''}: invalid YAML") from None
    if not isinstance(data, dict):
        raise InputError(f"{yaml_path}: expected a mapping with path, train, val, test, names")
    names = _names_from(data, yaml_path)
    root = dataset_root(data, yaml_path)
    wanted = splits or tuple(s for s in SPLITS if data.get(s))
    for s in required:
        if (splits is None or s in splits) and not data.get(s):
            raise InputError(f"{yaml_path}: missing '{s}' split")
    ds = Dataset(yaml_path=yaml_path, root=root, names=names)
    problems: list[str] = []
    for split in wanted:
        if not data.get(split):
            raise InputError(f"{yaml_path}: no '{split}' split")
        images = _split_images(data[split], root, yaml_path, split)
        if not images:
            problems.append(f"{yaml_path}: split '{split}' is empty (no images under {data[split]})")
            continue
        samples = []
        for img in images:
            if check_images and not _readable(img):
                problems.append(f"{img}: unreadable or empty image")
                continue
            lbl = label_path_for(img)
            if lbl.is_file():
                boxes, errs = parse_label_file(lbl, len(names), yaml_path.name)
                problems += errs
                samples.append(Sample(img, lbl, boxes))
            else:
                samples.append(Sample(img, None, np.zeros((0, 5))))
        ds.splits[split] = samples
    if problems:
        more = f"\n... and {len(problems) - MAX_REPORTED} more problems" if len(problems) > MAX_REPORTED else ""
        raise InputError("\n".join(problems[:MAX_REPORTED]) + more)
    return ds


def _readable(path: Path) -> bool:
    try:
        if path.stat().st_size == 0:
            return False
    except OSError:
        return False
    img = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_4 | cv2.IMREAD_ANYDEPTH)  # a quarter: quick
    if img is not None and img.size > 0:
        return True
    try:  # what the reduced read cannot take (32-bit TIFF samples), decoded in full as the line will
        return decode_image(np.fromfile(str(path), dtype=np.uint8)) is not None
    except OSError:
        return False


def defect_scale(samples: list[Sample], imgsz: int) -> dict:
    """How big the labelled defects are as the detector sees them: each image fitted into ``imgsz`` x ``imgsz``
    (the letterbox resize), each box's longer side in pixels. Percentiles ``p10`` / ``median`` (None without
    defects) and ``defects``; ``suggested_imgsz``: the multiple of 32 at which the smallest tenth would reach
    ``MIN_DEFECT_PX`` (at most the largest image side, never below ``imgsz``)."""
    sides, largest = [], 0
    for s in samples:
        if not s.defective:
            continue
        w, h = s.size
        largest = max(largest, w, h)
        r = imgsz / max(w, h)
        sides += list(np.maximum(s.boxes[:, 3] * w, s.boxes[:, 4] * h) * r)
    if not sides:
        return {"defects": 0, "p10": None, "median": None, "imgsz": imgsz, "suggested_imgsz": imgsz}
    p10 = float(np.quantile(sides, 0.1))
    want = int(np.ceil(imgsz * MIN_DEFECT_PX / max(p10, 1e-6) / 32) * 32)
    suggested = max(imgsz, min(want, int(np.ceil(largest / 32) * 32)))
    return {"defects": len(sides), "p10": round(p10, 2), "median": round(float(np.median(sides)), 2),
            "imgsz": imgsz, "suggested_imgsz": suggested}


def small_defect_warning(scale: dict) -> str | None:
    """What to tell the user when a tenth of the train defects are under ``MIN_DEFECT_PX`` at the detector's input
    (``scale``: from ``defect_scale``), else None."""
    if scale["p10"] is None or scale["p10"] >= MIN_DEFECT_PX:
        return None
    said = (f"a tenth of the train defects are under {scale['p10']:.1f} px (longer side) at detector.imgsz "
            f"{scale['imgsz']}, where the detector's finest grid is 8 px: such small defects are easily missed. ")
    if scale["suggested_imgsz"] <= scale["imgsz"]:
        return said + "The images are no larger than that."
    return (said + f"--set detector.imgsz={scale['suggested_imgsz']} shows them larger, at about "
            f"{(scale['suggested_imgsz'] / scale['imgsz']) ** 2:.1f}x the time per epoch.")


def fingerprint(ds: Dataset, splits: tuple[str, ...] = ("train", "val")) -> str:
    """Short sha256 over image/label names, sizes and label contents (cheap: image bytes are not hashed)."""
    h = hashlib.sha256()
    for split in splits:
        for s in ds.splits.get(split, []):
            h.update(f"{split}/{s.image.name}:{s.image.stat().st_size}".encode())
            if s.label is not None:
                h.update(s.label.read_bytes())
    h.update(",".join(ds.names).encode())
    return h.hexdigest()[:16]


def write_resolved_yaml(ds: Dataset, out: Path) -> Path:
    """A copy of data.yaml with an absolute ``path``, which Ultralytics needs (it resolves a relative one
    against its own datasets folder, not against the yaml)."""
    data = yaml.safe_load(ds.yaml_path.read_text())
    data["path"] = str(ds.root)
    data["names"] = list(ds.names)
    data.pop("nc", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out
