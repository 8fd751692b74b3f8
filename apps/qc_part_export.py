"""Reviewed parts of a part-classifier run as an image-level dataset, without streamlit: one folder per class the
reviewer gave (``OUT/<class>/<nnnnn>_<name>``), which ``vsuite qc train OUT`` takes back as training data.

The folder rules are ``apps.safe_export``'s: new, empty, or the suite's own previous export of this kind (replaced
only when asked); built beside the target and moved into place.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from apps.qc_data import exportable_image
from apps.roots import Roots
from apps.safe_export import plan_folder, staged_folder

KIND = "class-folders"


@dataclass
class FolderExport:
    out_dir: Path
    images: int = 0
    classes: dict[str, int] = field(default_factory=dict)  # class -> images
    skipped: list[str] = field(default_factory=list)  # "file: why"
    replaced: bool = False


def reviewed_class(review: dict) -> str | None:
    """The class a part review gave (``apps.qc_part.part_decision_form``); None for a review without one."""
    label = (review.get("details") or {}).get("label")
    return str(label) if label else None


def export_class_folders(parts: list[dict], latest: dict[str, dict], out_dir: Path | str,
                         results_dir: Path | None = None, *, replace: bool = False, roots: Roots | None = None,
                         meta: dict | None = None) -> FolderExport:
    """Every reviewed part (its latest review) copied into the folder of the class the reviewer gave. A part
    without a class in its review, outside the readable folders, or whose image is gone is skipped and listed."""
    out = FolderExport(Path(out_dir))
    plan = plan_folder(out.out_dir, kind=KIND, replace=replace)
    out.replaced = plan.mode == "replace"
    chosen = _chosen(out, parts, latest, results_dir, roots)
    with staged_folder(plan, kind=KIND, meta=meta) as stage:
        for i, (src, label) in enumerate(chosen):
            (stage / label).mkdir(exist_ok=True)
            shutil.copy2(src, stage / label / f"{i:05d}_{src.name}")
            out.classes[label] = out.classes.get(label, 0) + 1
            out.images += 1
    return out


def _chosen(out: FolderExport, parts: list[dict], latest: dict[str, dict], results_dir: Path | None,
            roots: Roots | None) -> list[tuple[Path, str]]:
    chosen = []
    for p in {p["item"]: p for p in parts}.values():  # a file inspected twice: its latest record
        rev = latest.get(p["item"])
        if rev is None or p["status"] != "ok":
            continue
        label = reviewed_class(rev)
        if label is None or label.startswith(".") or "/" in label or "\\" in label:
            out.skipped.append(f"{p['file']}: the review names no class usable as a folder name")
            continue
        src = exportable_image(p["file"], results_dir, roots, out.skipped)
        if src is not None:
            chosen.append((src, label))
    return chosen
