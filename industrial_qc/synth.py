"""Synthetic defect dataset in Ultralytics detection format, for the demo, the tests and the benchmarks.

Each part is drawn by ``synth_draw.make_part`` (surfaces, defects, lighting). About a quarter of the parts are
defect-free and have no label file (the Ultralytics convention for a background image).

Everything is drawn from ``numpy.random.default_rng([seed, index])``: the same seed gives the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import yaml

from industrial_qc.synth_draw import DEFECT_CLASSES as DEFECT_CLASSES  # the class names the dataset declares
from industrial_qc.synth_draw import make_part


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. ``images`` is the total over the three splits."""

    images: int = 700
    size: int = 320
    seed: int = 0
    val_frac: float = 1 / 7
    test_frac: float = 2 / 7
    good_frac: float = 0.25
    image_format: Literal["jpg", "png"] = "jpg"
    contrast: tuple[float, float] = (0.05, 0.22)  # defect amplitude, fraction of the [0, 1] intensity range
    min_snr: float = 6.0  # visibility floor (defect_visibility): matched-filter signal / (surface clutter + noise)
    min_core_cnr: float = 2.0  # ... and the mean change over its core / (texture at its scale + noise), per pixel
    max_defects: int = 3
    # share of scratches drawn along an image axis (+-1 deg), as machining, handling and conveyor marks run on a
    # fixtured part; the rest take any angle
    axis_scratches: float = 0.3


@dataclass
class SynthReport:
    data_yaml: Path
    counts: dict[str, int]
    good: dict[str, int]
    defects: dict[str, int]


def split_counts(n: int, val_frac: float, test_frac: float) -> dict[str, int]:
    """Images per split; val and test get at least one image each when n >= 3."""
    if n < 3:
        raise ValueError(f"--images {n}: need at least 3 images (one per split)")
    if not (0 < val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"split fractions val={val_frac}, test={test_frac}: each in (0, 1) with a sum below 1")
    n_val = max(1, round(n * val_frac))
    n_test = max(1, round(n * test_frac)) if test_frac > 0 else 0
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def synthesize(out: Path, cfg: SynthConfig, progress=None) -> SynthReport:
    """Write ``out/images/{split}``, ``out/labels/{split}`` and ``out/data.yaml``; returns counts per split.

    ``progress``: optional callable(n_done, n_total) for a progress bar.
    """
    out = Path(out)
    counts = split_counts(cfg.images, cfg.val_frac, cfg.test_frac)
    order: list[str] = [name for name, k in counts.items() for _ in range(k)]
    good = {k: 0 for k in counts}
    defects = {c: 0 for c in DEFECT_CLASSES}
    seen = {k: 0 for k in counts}
    for split in counts:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(order):
        rng = np.random.default_rng([cfg.seed, i])
        j = seen[split]
        seen[split] += 1
        # Exactly every 1/good_frac-th part of a split is good, so small splits still hold good parts.
        period = max(1, round(1 / cfg.good_frac)) if cfg.good_frac > 0 else 0
        is_good = period > 0 and j % period == 0
        part = make_part(rng, cfg.size, not is_good, cfg)
        if len(part.boxes) == 0:
            is_good = True
        stem = f"part_{i:05d}"
        img_path = out / "images" / split / f"{stem}.{cfg.image_format}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if cfg.image_format == "jpg" else []
        cv2.imwrite(str(img_path), part.image, params)
        lbl = out / "labels" / split / f"{stem}.txt"
        if is_good:
            good[split] += 1
            lbl.unlink(missing_ok=True)  # no label file: a good part
        else:
            lines = [f"{int(b[0])} {b[1]:.6f} {b[2]:.6f} {b[3]:.6f} {b[4]:.6f}" for b in part.boxes]
            lbl.write_text("\n".join(lines) + "\n")
            for b in part.boxes:
                defects[DEFECT_CLASSES[int(b[0])]] += 1
        if progress is not None:
            progress(i + 1, len(order))
    data = {
        "path": str(out.resolve()),
        "train": "images/train",
        "val": "images/val",
        **({"test": "images/test"} if counts["test"] else {}),
        "nc": len(DEFECT_CLASSES),
        "names": list(DEFECT_CLASSES),
    }
    yaml_path = out / "data.yaml"
    header = f"# vsuite qc synth: {cfg.images} images, {cfg.size} px, seed {cfg.seed}\n"
    yaml_path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return SynthReport(data_yaml=yaml_path, counts=counts, good=good, defects=defects)


def synthesize_shown(out: Path, cfg: SynthConfig, console, description: str = "synth") -> SynthReport:
    """``synthesize`` with a progress bar on ``console`` (a rich Console)."""
    from common.progress import add_task, make_progress

    with make_progress(console) as progress:
        task = add_task(progress, description, total=cfg.images)
        return synthesize(out, cfg, progress=lambda done, _n: progress.update(task, completed=done))
