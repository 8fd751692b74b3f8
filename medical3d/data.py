"""Datasets of studies: manifests, splits, and the content-hashed preprocessing cache.

A dataset is a manifest CSV (``path,label[,split]``, paths relative to the CSV) or a folder with one
sub-folder per class. Without a split column, studies are split per class by seed (stratified).
Preprocessed volumes are cached under a key made of the study's content and the preprocessing config, so N4
runs once per study and config, whichever run or command asks for it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import config_snapshot
from common.errors import InputError
from medical3d.config import DataConfig, PreprocessConfig
from medical3d.io import content_hash, find_studies

SPLITS = ("train", "val", "test")
CACHE_VERSION = "medical3d-preprocess-1"  # bump when preprocessing code changes its output


@dataclass
class Case:
    path: Path
    label: str
    split: str | None = None
    where: str = ""  # manifest line or folder, for error messages


def load_cases(source: str | Path) -> list[Case]:
    """Cases of a manifest CSV or a folder-per-class tree; InputError names the file and line."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such manifest or folder")
    if source.is_dir():
        return _cases_from_folders(source)
    return _cases_from_csv(source)


def _cases_from_csv(path: Path) -> list[Case]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in fields or "label" not in fields:
            raise InputError(f"{path}:1: header must name the columns path,label[,split]; got {','.join(fields)}")
        cases = []
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if not row.get("path"):
                continue
            if not row.get("label"):
                raise InputError(f"{path}:{line}: empty label for {row['path']}")
            split = row.get("split") or None
            if split is not None and split not in SPLITS:
                raise InputError(f"{path}:{line}: split {split!r} is not one of {', '.join(SPLITS)}")
            study = Path(row["path"])
            study = study if study.is_absolute() else path.parent / study
            cases.append(Case(path=study, label=row["label"], split=split, where=f"{path}:{line}"))
    if not cases:
        raise InputError(f"{path}: manifest lists no studies")
    return cases


def _cases_from_folders(root: Path) -> list[Case]:
    cases = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cases += [Case(path=s, label=class_dir.name, where=str(class_dir)) for s in find_studies([class_dir])]
    if not cases:
        raise InputError(f"{root}: expected one sub-folder per class holding studies, found none")
    return cases


def label_order(cases: list[Case], cfg: DataConfig) -> list[str]:
    """Class order: ``cfg.labels`` when given (every manifest label must be in it), else sorted labels."""
    present = sorted({c.label for c in cases})
    if cfg.labels is None:
        return present
    unknown = [lab for lab in present if lab not in cfg.labels]
    if unknown:
        raise InputError(f"labels {unknown} in the data are not in data.labels {cfg.labels}")
    return list(cfg.labels)


def assign_splits(cases: list[Case], fractions: tuple[float, float, float], seed: int) -> list[Case]:
    """Give every case without a split one, per class (stratified), deterministically for ``seed``.

    With a split column present the given splits are kept. Per class of n studies: round(n * val) go to val and
    round(n * test) to test (at least one each when n >= 3 and the fraction is > 0), the rest train.
    """
    if all(c.split for c in cases):
        return cases
    out = list(cases)
    by_label: dict[str, list[int]] = {}
    for i, c in enumerate(out):
        if not c.split:
            by_label.setdefault(c.label, []).append(i)
    for label in sorted(by_label):
        idx = by_label[label]
        digest = int(hashlib.sha256(f"{seed}:{label}".encode()).hexdigest()[:8], 16)
        order = np.random.default_rng([seed, digest]).permutation(len(idx))
        n = len(idx)
        n_val = round(n * fractions[1])
        n_test = round(n * fractions[2])
        if n >= 3:
            n_val = max(n_val, 1 if fractions[1] > 0 else 0)
            n_test = max(n_test, 1 if fractions[2] > 0 else 0)
        n_val = min(n_val, max(n - 1, 0))
        n_test = min(n_test, max(n - 1 - n_val, 0))
        for rank, j in enumerate(order):
            split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            out[idx[j]] = Case(path=out[idx[j]].path, label=label, split=split, where=out[idx[j]].where)
    return out


# ---------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    root = os.environ.get("VSUITE_CACHE")
    return Path(root) / "medical3d" if root else Path.home() / ".cache" / "vision-suite" / "medical3d"


@dataclass
class CachedStudy:
    key: str
    image_path: Path  # preprocessed NIfTI (network grid)
    qa: dict

    def array(self) -> np.ndarray:
        """(1, D, H, W) float32."""
        import SimpleITK as sitk

        return sitk.GetArrayFromImage(sitk.ReadImage(str(self.image_path))).astype(np.float32)[None]


class PreprocessCache:
    """Preprocessed studies keyed by sha256(study content, preprocessing config, code version).

    Layout: ``<dir>/<key[:2]>/<key>/{image.nii.gz, qa.json}``, written to a temporary folder and renamed, so
    an interrupted run never leaves a half entry. Failed studies are not cached (the error is re-raised).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.dir = Path(directory) if directory is not None else default_cache_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.content_hashes: dict[Path, str] = {}  # study -> sha256 of its files (data fingerprints reuse it)

    def key(self, study: Path, cfg: PreprocessConfig) -> str:
        if study not in self.content_hashes:
            self.content_hashes[study] = content_hash(study)
        h = hashlib.sha256()
        h.update(CACHE_VERSION.encode())
        h.update(self.content_hashes[study].encode())
        h.update(json.dumps(config_snapshot(cfg), sort_keys=True).encode())
        return h.hexdigest()

    def get(self, study: Path, cfg: PreprocessConfig) -> CachedStudy:
        """The cached result for ``study``, preprocessing it first on a miss (InputError when unusable)."""
        import SimpleITK as sitk

        from medical3d.preprocess import preprocess_study

        if not study.exists():
            raise InputError(f"{study}: no such file or folder")
        key = self.key(study, cfg)
        entry = self.dir / key[:2] / key
        if (entry / "qa.json").is_file() and (entry / "image.nii.gz").is_file():
            self.hits += 1
            qa = json.loads((entry / "qa.json").read_text(encoding="utf-8"))
            return CachedStudy(key=key, image_path=entry / "image.nii.gz", qa=qa)
        self.misses += 1
        result = preprocess_study(study, cfg)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=entry.parent))
        try:
            sitk.WriteImage(result.image, str(tmp / "image.nii.gz"), True)
            (tmp / "qa.json").write_text(json.dumps(result.qa, indent=1), encoding="utf-8")
            try:
                tmp.rename(entry)
            except OSError:  # another process filled the entry first: theirs is as good as ours
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return CachedStudy(key=key, image_path=entry / "image.nii.gz", qa=result.qa)


def data_fingerprint(cases: list[Case], cache: PreprocessCache) -> str:
    """sha256 over (study name, label, split, content hash) of every case: the identity of a training set."""
    h = hashlib.sha256()
    for case in sorted(cases, key=lambda c: str(c.path)):
        digest = cache.content_hashes.get(case.path) or (content_hash(case.path) if case.path.exists() else "missing")
        h.update(os.fsencode(f"{case.path.name}|{case.label}|{case.split}|{digest}\n"))  # any file name
    return h.hexdigest()


@dataclass
class Prepared:
    cases: list[Case]  # the usable ones, in order
    arrays: list[np.ndarray]  # (1, D, H, W) float32 each
    qa: list[dict]
    failures: list[dict]  # {"source", "label", "reason"}
    keys: list[str]


def prepare_cases(cases: list[Case], cfg: PreprocessConfig, cache: PreprocessCache,
                  on_study: Callable[[Case, str | None], None] | None = None) -> Prepared:
    """Preprocess (or fetch from cache) every case; a study that fails becomes a failure row, not an exception."""
    out = Prepared([], [], [], [], [])
    for case in cases:
        try:
            cached = cache.get(case.path, cfg)
            arr = cached.array()
        except InputError as exc:
            out.failures.append({"source": str(case.path), "label": case.label, "split": case.split,
                                 "reason": str(exc)})
            if on_study is not None:
                on_study(case, str(exc))
            continue
        out.cases.append(case)
        out.arrays.append(arr)
        out.qa.append(cached.qa)
        out.keys.append(cached.key)
        if on_study is not None:
            on_study(case, None)
    return out
