"""Image-level labelled parts: a folder per class (optionally under train/ val/ test/) or a CSV manifest
``path,label[,split]``, and the whole-part preprocessing training and inference share (torch-free).

    DATA/good/*.png  DATA/scratch/*.png ...              splits made here (stratified per class, seeded)
    DATA/train/good/*.png  DATA/val/good/*.png ...       splits as given (no val/: val and test made from train)
    labels.csv: path,label[,split]                       paths relative to the CSV; an empty split is made here

The good class is the first of ``part.good_labels`` among the classes (case-insensitive); it is label 0, the
others follow in sorted order. Loading lists every problem in one InputError, each naming its file or class.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from common.errors import InputError
from industrial_qc.crops import IMAGENET_MEAN, IMAGENET_STD, to_tensor_batch
from industrial_qc.images import decode_image, read_image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
PAD_VALUE = 114  # the grey a non-square part is padded with (Ultralytics' letterbox grey)
MAX_REPORTED = 30

DataKind = Literal["detect", "csv", "folders"]


@dataclass
class PartSet:
    """A loaded image-level dataset: ``splits[name]`` = [(image path, label index)], label 0 = ``good_label``."""

    source: Path  # the folder or the CSV file
    labels: list[str]
    good_label: str
    splits: dict[str, list[tuple[Path, int]]]
    made_splits: list[str] = field(default_factory=list)  # the splits drawn here rather than given

    def split(self, name: str) -> list[tuple[Path, int]]:
        return self.splits.get(name, [])

    def paths(self, name: str) -> list[Path]:
        return [p for p, _ in self.split(name)]

    def targets(self, name: str) -> np.ndarray:
        return np.array([y for _, y in self.split(name)], np.int64)

    def counts(self, name: str) -> dict[str, int]:
        """Images per class in split ``name``."""
        n = np.bincount(self.targets(name), minlength=len(self.labels))
        return {lbl: int(k) for lbl, k in zip(self.labels, n, strict=True)}

    def summary(self) -> dict[str, dict[str, int]]:
        return {s: self.counts(s) for s in SPLITS if self.split(s)}

    def fingerprint(self) -> str:
        """Short sha256 over each image's split, label, relative name and size (image bytes are not hashed)."""
        h = hashlib.sha256()
        root = self.source if self.source.is_dir() else self.source.parent
        for name in SPLITS:
            for p, y in self.split(name):
                rel = os.path.relpath(p, root)
                h.update(f"{name}/{self.labels[y]}/{rel}:{p.stat().st_size}".encode())
        return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ loading
def data_kind(path: Path | str) -> DataKind:
    """What ``qc train DATA`` was given: a detection ``data.yaml``, a CSV manifest or a class-folder tree."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return "detect"
    if not path.exists():
        raise InputError(f"{path}: not found (expected a data.yaml, a CSV manifest or a folder of class folders)")
    if path.is_dir():
        return "folders"
    if path.suffix.lower() == ".csv":
        return "csv"
    raise InputError(f"{path}: expected a data.yaml (detection), a .csv manifest (path,label[,split]) or a folder "
                     "with one sub-folder per class")


Item = tuple[Path, str, str | None]  # (image, class name, split or None = to be drawn)


def load_parts(path: Path | str, good_labels: Sequence[str], split_fractions: Sequence[float], seed: int,
               check_images: bool = True) -> PartSet:
    """Read and check an image-level dataset (``data_kind`` "csv" or "folders"); draw the missing splits."""
    path = Path(path)
    problems: list[str] = []
    items = _csv_items(path, problems) if data_kind(path) == "csv" else _folder_items(path, problems)
    if check_images:
        problems += [f"{p}: unreadable or undecodable image" for p, _, _ in items if not _decodes(p)]
    if problems:
        _raise(problems)
    classes = sorted({c for _, c, _ in items})
    good = _good_label(classes, good_labels, path)
    labels = [good, *(c for c in classes if c != good)]
    splits, made = _assign_splits(items, labels, split_fractions, seed)
    problems += _split_problems(splits, labels, path)
    if problems:
        _raise(problems)
    return PartSet(path, labels, good, splits, made)


def _raise(problems: list[str]) -> None:
    more = f"\n... and {len(problems) - MAX_REPORTED} more problems" if len(problems) > MAX_REPORTED else ""
    raise InputError("\n".join(problems[:MAX_REPORTED]) + more)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(folder: Path, split: str | None, problems: list[str]) -> list[Item]:
    """Each sub-folder of ``folder`` is a class; one without images is a problem."""
    items: list[Item] = []
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        problems.append(f"{folder}: no class folders (expected one sub-folder of images per class)")
    for d in subdirs:
        images = _images_in(d)
        if not images:
            problems.append(f"{d}: class {d.name!r} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        items += [(p, d.name, split) for p in images]
    return items


def _folder_items(root: Path, problems: list[str]) -> list[Item]:
    """Class folders, or train/ val/ test/ each holding class folders. Without val/, train/ is split here."""
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    if not split_dirs:
        return _class_folders(root, None, problems)
    others = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name not in SPLITS
                    and not d.name.startswith("."))
    if others:
        problems.append(f"{root}: folders {others} beside {split_dirs}: put class folders inside train/ val/ test/")
    if "train" not in split_dirs:
        problems.append(f"{root}: has {split_dirs} but no train/ folder")
    items: list[Item] = []
    for s in split_dirs:
        given = s if "val" in split_dirs else None if s == "train" else s  # no val/: train/ is drawn from
        items += _class_folders(root / s, given, problems)
    return items


def _csv_items(path: Path, problems: list[str]) -> list[Item]:
    """Rows ``path,label[,split]`` (an optional header row names the columns); paths relative to the CSV."""
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the CSV manifest ({exc})") from None
    start = 1 if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"] else 0
    items: list[Item] = []
    for n, row in enumerate(rows[start:], start + 1):
        if not any(c.strip() for c in row):
            continue
        item = _csv_row(path, n, [c.strip() for c in row], problems)
        if item is not None:
            items.append(item)
    if not items and not problems:
        problems.append(f"{path}: no rows (expected path,label[,split])")
    return items


def _csv_row(csv_path: Path, n: int, row: list[str], problems: list[str]) -> Item | None:
    where = f"{csv_path}:{n}"
    if len(row) not in (2, 3) or not row[0] or not row[1]:
        problems.append(f"{where}: expected path,label[,split], got {','.join(row)!r}")
        return None
    image = (csv_path.parent / row[0]).resolve()
    split = (row[2].lower() or None) if len(row) == 3 else None
    bad = []
    if split is not None and split not in SPLITS:
        bad.append(f"unknown split {row[2]!r} (expected {', '.join(SPLITS)} or empty)")
    if not image.is_file():
        bad.append(f"image {row[0]} not found")
    elif image.suffix.lower() not in IMAGE_SUFFIXES:
        bad.append(f"{row[0]} is not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
    problems += [f"{where}: {b}" for b in bad]
    return None if bad else (image, row[1], split)


def _decodes(path: Path) -> bool:
    """Whether ``path`` decodes (at a quarter of its size where the format allows: a quick check)."""
    try:
        if path.stat().st_size == 0:
            return False
        img = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_4 | cv2.IMREAD_ANYDEPTH)
        if img is not None and img.size > 0:
            return True
        return decode_image(np.fromfile(str(path), dtype=np.uint8)) is not None
    except (OSError, cv2.error):
        return False


def _good_label(classes: list[str], good_labels: Sequence[str], source: Path) -> str:
    if len(classes) < 2:
        raise InputError(f"{source}: {len(classes)} class{'' if len(classes) == 1 else 'es'} {classes}; a part "
                         "classifier needs at least two (the good class and one defect class)")
    by_lower = {c.lower(): c for c in classes}
    for g in good_labels:
        if g.lower() in by_lower:
            return by_lower[g.lower()]
    raise InputError(f"{source}: none of the classes {classes} is a good class named in part.good_labels "
                     f"{list(good_labels)}; name yours with --set part.good_labels=[NAME]")


def _assign_splits(items: list[Item], labels: list[str], fractions: Sequence[float], seed: int
                   ) -> tuple[dict[str, list[tuple[Path, int]]], list[str]]:
    """Given splits as they are; images without one are divided, per class and seeded, among train and the
    splits nobody gave, in proportion to ``fractions`` (train, val, test)."""
    index = {c: i for i, c in enumerate(labels)}
    splits: dict[str, list[tuple[Path, int]]] = {s: [] for s in SPLITS}
    for p, c, s in items:
        if s is not None:
            splits[s].append((p, index[c]))
    pool = [(p, index[c]) for p, c, s in items if s is None]
    made = [s for s in SPLITS if s == "train" or not splits[s]] if pool else []
    weights = np.array([f for s, f in zip(SPLITS, fractions, strict=True) if s in made], np.float64)
    rng = np.random.default_rng(seed)
    for y in range(len(labels)):
        mine = sorted(p for p, t in pool if t == y)
        if not mine:
            continue
        order = rng.permutation(len(mine))
        for s, chunk in zip(made, _stratum_cuts(len(mine), weights / weights.sum()), strict=True):
            splits[s] += [(mine[i], y) for i in order[chunk]]
    made = [s for s in made if splits[s]]
    return {s: sorted(v, key=lambda t: str(t[0])) for s, v in splits.items() if v}, made


def _stratum_cuts(n: int, weights: np.ndarray) -> list[slice]:
    """Consecutive slices of ``n`` shuffled images, one per split, sized by ``weights`` (train first); every split
    after train gets at least one image while train keeps one."""
    sizes = [round(float(n * w)) for w in weights[1:]]
    for i, k in enumerate(sizes):
        if k == 0 and weights[i + 1] > 0 and n - sum(sizes) > 1:
            sizes[i] = 1
    while sum(sizes) > n - 1 and any(sizes):  # train keeps at least one image
        sizes[int(np.argmax(sizes))] -= 1
    cuts, start = [slice(0, n - sum(sizes))], n - sum(sizes)
    for k in sizes:
        cuts.append(slice(start, start + k))
        start += k
    return cuts


def _split_problems(splits: dict[str, list[tuple[Path, int]]], labels: list[str], source: Path) -> list[str]:
    """Every class must have images in train and in val; a class in one split alone is named with it."""
    out = []
    if "val" not in splits:
        out.append(f"{source}: no val images (add a val split or leave the splits to be drawn)")
    for y, name in enumerate(labels):
        present = [s for s in SPLITS if any(t == y for _, t in splits.get(s, []))]
        missing = [s for s in ("train", "val") if s not in present]
        if missing:
            only = f"only in split {present[0]!r}" if len(present) == 1 else f"in {present}"
            out.append(f"{source}: class {name!r} has images {only}, none in {' or '.join(missing)} "
                       "(each class needs train and val images)")
    return out


# ------------------------------------------------------------------------------------------------ pixels
def fit_square(img: np.ndarray, size: int, pad_value: int = PAD_VALUE) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: the whole part resized with its aspect kept (area-averaged when
    it shrinks, bilinear when it grows) and centred on ``pad_value`` grey."""
    h, w = img.shape[:2]
    r = size / max(h, w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    if (nw, nh) == (size, size):
        return np.ascontiguousarray(img)
    top, left = (size - nh) // 2, (size - nw) // 2
    return cv2.copyMakeBorder(img, top, size - nh - top, left, size - nw - left, cv2.BORDER_CONSTANT,
                              value=(pad_value,) * 3)


def to_input(batch: np.ndarray, normalize: str) -> np.ndarray:
    """(B, S, S, 3) uint8 BGR -> (B, 3, S, S) float32 RGB: ImageNet mean/std (``imagenet``) or each image and
    channel standardised (``per_image``). What the part classifier's ONNX input expects."""
    kind = "per_crop" if normalize == "per_image" else "imagenet"
    return to_tensor_batch(batch, IMAGENET_MEAN, IMAGENET_STD, normalize=kind)


def load_pixels(paths: Iterable[Path], size: int, threads: int = 2) -> np.ndarray:
    """Every image decoded once (as the line decodes it) and fitted to ``size``: (N, size, size, 3) uint8 BGR,
    size * size * 3 bytes per image (150 MB per 1000 images at 224 px, 49 MB at 128). An InputError lists every
    image that does not decode."""
    paths = list(paths)
    out = np.empty((len(paths), size, size, 3), np.uint8)
    problems: list[str] = []

    def one(i: int) -> None:
        try:
            out[i] = fit_square(read_image(paths[i]), size)
        except InputError as exc:
            problems.append(str(exc))

    with ThreadPoolExecutor(max(1, threads)) as pool:  # OpenCV decodes and resizes outside the GIL
        list(pool.map(one, range(len(paths))))
    if problems:
        _raise(sorted(problems))
    return out
