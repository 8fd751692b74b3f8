"""Synthetic image-level parts: one part per image, labelled ``good`` or by its one defect's class, for the demo,
the tests and the benchmarks of the part classifier (``vsuite qc synth OUT --layout folders|csv``).

    folders:  OUT/{train,val,test}/{good,scratch,pit,stain,crack}/part_00000.png   (or OUT/{class}/... unsplit)
    csv:      OUT/images/part_00000.png + OUT/labels.csv (path,label[,split])

The parts come from ``synth_draw.make_part`` with one defect each, from seeded generators (``_Parts``): the
same seed gives the same files.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from industrial_qc.synth import SynthConfig, split_counts
from industrial_qc.synth_draw import DEFECT_CLASSES, make_part

GOOD = "good"
PartLayout = Literal["folders", "csv"]


@dataclass
class PartSynthReport:
    data: Path  # what `qc train` takes: the folder (folders) or the manifest (csv)
    counts: dict[str, dict[str, int]]  # split ("all" when unsplit) -> class -> images


class _Parts:
    """Parts by label: good parts drawn from ``default_rng([seed, 1, n])``, defective ones (one defect each) from
    ``default_rng([seed, 0, k])`` in turn, each kept for the next request of its class, so every class can be
    asked for in turn (each split holds every class) at about one drawing per image."""

    def __init__(self, cfg: SynthConfig) -> None:
        self.cfg = replace(cfg, max_defects=1)
        self.good = self.defective = 0
        self.waiting: dict[str, list[np.ndarray]] = {c: [] for c in DEFECT_CLASSES}

    def take(self, label: str) -> np.ndarray:
        if label == GOOD:
            self.good += 1
            return make_part(np.random.default_rng([self.cfg.seed, 1, self.good - 1]), self.cfg.size, False,
                             self.cfg).image
        while not self.waiting[label]:
            rng = np.random.default_rng([self.cfg.seed, 0, self.defective])
            self.defective += 1
            part = make_part(rng, self.cfg.size, True, self.cfg)
            if len(part.boxes):  # a defect that fell off the part leaves an unlabelled one: not kept
                self.waiting[DEFECT_CLASSES[int(part.boxes[0, 0])]].append(part.image)
        return self.waiting[label].pop(0)


def _label(j: int, period: int) -> str:
    """The class of a split's ``j``-th part: every ``period``-th is good, the defect classes take turns."""
    if period and j % period == 0:
        return GOOD
    d = j - (j // period + 1 if period else 0)
    return DEFECT_CLASSES[d % len(DEFECT_CLASSES)]


def _image_path(out: Path, layout: PartLayout, split: str | None, label: str, stem: str, fmt: str) -> Path:
    if layout == "csv":
        return out / "images" / f"{stem}.{fmt}"
    return (out / split if split else out) / label / f"{stem}.{fmt}"


def synthesize_parts(out: Path, cfg: SynthConfig, layout: PartLayout = "folders", splits: bool = True,
                     progress=None) -> PartSynthReport:
    """Write ``cfg.images`` labelled parts into ``out`` in ``layout``; with ``splits`` they are divided into
    train/val/test by ``cfg.val_frac`` and ``cfg.test_frac`` (else ``qc train`` draws the splits). Every
    ``1 / cfg.good_frac``-th part of a split is good, the defect classes take turns in the rest.
    ``progress``: optional callable(n_done, n_total)."""
    out = Path(out)
    sizes = split_counts(cfg.images, cfg.val_frac, cfg.test_frac) if splits else {"all": cfg.images}
    order = [s for s, k in sizes.items() for _ in range(k)]
    period = max(1, round(1 / cfg.good_frac)) if cfg.good_frac > 0 else 0
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys((GOOD, *DEFECT_CLASSES), 0) for s in sizes if sizes[s]}
    rows: list[tuple[str, str, str]] = []
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if cfg.image_format == "jpg" else []
    parts = _Parts(cfg)
    for i, split in enumerate(order):
        label = _label(sum(counts[split].values()), period)
        image = parts.take(label)
        path = _image_path(out, layout, split if splits else None, label, f"part_{i:05d}", cfg.image_format)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image, params)
        counts[split][label] += 1
        rows.append((path.relative_to(out).as_posix(), label, split))
        if progress is not None:
            progress(i + 1, len(order))
    if layout == "folders":
        return PartSynthReport(out, counts)
    manifest = out / "labels.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"] if splits else ["path", "label"])
        w.writerows(r if splits else r[:2] for r in rows)
    return PartSynthReport(manifest, counts)


def synthesize_parts_shown(out: Path, cfg: SynthConfig, layout: PartLayout, splits: bool, console
                           ) -> PartSynthReport:
    """``synthesize_parts`` with a progress bar on ``console`` (a rich Console)."""
    from common.progress import add_task, make_progress

    with make_progress(console) as progress:
        task = add_task(progress, "synth parts", total=cfg.images)
        return synthesize_parts(out, cfg, layout, splits,
                                progress=lambda done, _n: progress.update(task, completed=done))
