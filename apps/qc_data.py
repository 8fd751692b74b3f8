"""Factory review data, without streamlit: results records -> parts table, filters, KPIs, rates against
reviewed truth, and the YOLO export of reviewed parts.

A qc record (``industrial_qc.line`` / ``industrial_qc.score``) holds ``file`` (or ``source``), ``timestamp``,
``verdict``, ``defects`` (each: ``box`` xyxy px, ``det_class``, ``det_conf``, ``cls_class``, ``cls_prob``,
``class`` / ``class_prob`` (the name from both stages, shown to the reviewer; older records: the classifier's),
``defect_prob``, ``defect_score`` (what the verdict read), ``level``: fail | review), ``latency_ms``, ``run_id``,
``status``, ``reason`` and optionally ``width``/``height``, ``max_defect_prob``, ``max_defect_score``. A part
classifier's record (``mode: part``) has no defects; it names the part's top defect class (``class``,
``class_prob``), every class's ``probabilities`` and, when FAIL or REVIEW, its ``heatmap`` PNG.
Readers here accept missing optional fields and a few spellings of each.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from apps.roots import Roots
from apps.safe_export import plan_folder, staged_folder
from common.errors import InputError
from common.results import decode_nested, read_records

TRUTH_VERDICTS = ("PASS", "FAIL")
ReviewFilter = Literal["all", "reviewed", "not reviewed"]


def _first(d: dict, *keys: str, default=None):
    for k in keys:
        v = d.get(k)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return v
    return default


def norm_defect(d: dict) -> dict:
    """One defect with the canonical keys; class and probability fall back between the two stages."""
    box = decode_nested(_first(d, "box", "xyxy", "bbox", default=[0, 0, 0, 0]))
    det_class = _first(d, "det_class", "detector_class", "class", "label")
    cls_class = _first(d, "cls_class", "classifier_class", "class_name", "label", default=det_class)
    det_conf = _first(d, "det_conf", "detector_confidence", "confidence", "conf")
    cls_prob = _first(d, "cls_prob", "classifier_prob", "probability", "prob")
    defect_prob = _first(d, "defect_prob", default=cls_prob if cls_prob is not None else det_conf)
    name = _first(d, "class", default=cls_class)  # the line's name from both stages; older records: the classifier's
    name_prob = _first(d, "class_prob", default=cls_prob)
    return {
        "box": [float(v) for v in (box if isinstance(box, list | tuple) and len(box) == 4 else [0, 0, 0, 0])],
        "det_class": None if det_class is None else str(det_class),
        "det_conf": None if det_conf is None else float(det_conf),
        "cls_class": str(cls_class if cls_class is not None else "defect"),
        "cls_prob": None if cls_prob is None else float(cls_prob),
        "class": str(name if name is not None else "defect"),
        "class_prob": None if name_prob is None else float(name_prob),
        "defect_prob": float(defect_prob) if defect_prob is not None else 0.0,
        # what the verdict compared with the thresholds; records from before it was written: the probability
        "defect_score": float(_first(d, "defect_score", default=defect_prob if defect_prob is not None else 0.0)),
        "probs": decode_nested(d.get("probs") or d.get("probabilities")),
        "level": None if _first(d, "level") is None else str(_first(d, "level")).lower(),
    }


def norm_record(rec: dict, index: int) -> dict:
    """A qc record with the canonical keys the app uses (the original stays under ``raw``)."""
    file = str(_first(rec, "file", "source", "path", "image", default=f"record {index}"))
    status = str(_first(rec, "status", default="ok")).lower()
    defects = decode_nested(rec.get("defects")) or []
    defects = [norm_defect(d) for d in defects if isinstance(d, dict)] if isinstance(defects, list) else []
    verdict = _first(rec, "verdict")
    verdict = str(verdict).upper() if verdict is not None else ("ERROR" if status != "ok" else "PASS")
    if status != "ok":
        verdict = "ERROR"
    top = _first(rec, "max_defect_prob", default=max((d["defect_prob"] for d in defects), default=0.0))
    probs = decode_nested(rec.get("probabilities"))
    return {
        "index": index,
        "mode": str(_first(rec, "mode", default="detect")),
        "class": _first(rec, "class"),  # a part run's top defect class (detection records: per defect)
        "class_prob": _first(rec, "class_prob"),
        "probabilities": probs if isinstance(probs, dict) else {},
        "heatmap": _first(rec, "heatmap"),
        "item": file,
        "file": file,
        "timestamp": _first(rec, "timestamp", "time"),
        "verdict": verdict,
        "status": status,
        "reason": _first(rec, "reason"),
        "defects": defects,
        "max_defect_prob": float(top),
        "max_defect_score": float(_first(rec, "max_defect_score",
                                         default=max((d["defect_score"] for d in defects), default=top))),
        "latency_ms": _first(rec, "latency_ms", "latency"),
        "run_id": _first(rec, "run_id"),
        "width": _first(rec, "width"),
        "height": _first(rec, "height"),
        "raw": rec,
    }


def part_classes(part: dict) -> list[str]:
    """The defect classes a part is reported with: its defects' (detection), or a part run's class when the
    part is not passed."""
    if part["mode"] == "part":
        return [str(part["class"])] if part["class"] is not None and part["verdict"] in ("FAIL", "REVIEW") else []
    return sorted({d["class"] for d in part["defects"]})


def load_parts(path: Path | str) -> list[dict]:
    """Normalised records of a qc results file (.jsonl, .csv or .parquet); InputError when it is missing."""
    return [norm_record(r, i) for i, r in enumerate(read_records(path))]


def parts_frame(parts: list[dict], latest: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per part: item, time (UTC), verdict, classes, top probability, latency, review status."""
    latest = latest or {}
    rows = []
    for p in parts:
        rev = latest.get(p["item"])
        rows.append({
            "index": p["index"],
            "item": p["item"],
            "name": Path(p["file"]).name,
            "time": p["timestamp"],
            "verdict": p["verdict"],
            "defects": len(p["defects"]),
            "classes": part_classes(p),
            "top_prob": round(p["max_defect_prob"], 4),
            "latency_ms": p["latency_ms"],
            "reviewed": rev["decision"] if rev else "",
            "reason": p["reason"] or "",
        })
    df = pd.DataFrame(rows, columns=["index", "item", "name", "time", "verdict", "defects", "classes", "top_prob",
                                     "latency_ms", "reviewed", "reason"])
    df["time"] = pd.to_datetime(df["time"], utc=True, errors="coerce", format="ISO8601")
    return df


@dataclass
class Filters:
    verdicts: list[str] = field(default_factory=list)  # empty = all
    classes: list[str] = field(default_factory=list)  # part has a defect of any of them; empty = all
    prob_range: tuple[float, float] = (0.0, 1.0)  # on the part's top defect probability
    time_range: tuple[pd.Timestamp, pd.Timestamp] | None = None
    reviewed: ReviewFilter = "all"


# review status filter -> which parts it keeps, from the parts table's ``reviewed`` column (decision or "")
REVIEW_FILTERS: dict[ReviewFilter, Callable[[pd.Series], pd.Series | bool]] = {
    "all": lambda reviewed: True,
    "reviewed": lambda reviewed: reviewed != "",
    "not reviewed": lambda reviewed: reviewed == "",
}


def filter_parts(df: pd.DataFrame, f: Filters) -> pd.DataFrame:
    m = pd.Series(True, index=df.index)
    if f.verdicts:
        m &= df["verdict"].isin(f.verdicts)
    if f.classes:
        wanted = set(f.classes)
        m &= df["classes"].map(lambda cs: bool(wanted.intersection(cs)))
    lo, hi = f.prob_range
    m &= (df["top_prob"] >= lo - 1e-9) & (df["top_prob"] <= hi + 1e-9)
    if f.time_range is not None:
        t0, t1 = f.time_range
        m &= df["time"].isna() | ((df["time"] >= t0) & (df["time"] <= t1))
    m &= REVIEW_FILTERS[f.reviewed](df["reviewed"])
    return df[m]


def kpis(df: pd.DataFrame) -> dict:
    """Parts inspected (ok records), errors, FAIL and REVIEW rates, reviewed count."""
    ok = df[df["verdict"] != "ERROR"]
    n = len(ok)
    return {
        "parts": n,
        "errors": int((df["verdict"] == "ERROR").sum()),
        "fail_rate": float((ok["verdict"] == "FAIL").mean()) if n else None,
        "review_rate": float((ok["verdict"] == "REVIEW").mean()) if n else None,
        "pass_rate": float((ok["verdict"] == "PASS").mean()) if n else None,
        "reviewed": int((df["reviewed"] != "").sum()),
    }


_FREQS = ("1s", "10s", "1min", "5min", "15min", "1h", "6h", "1D", "7D")


def time_bin(df: pd.DataFrame, target_bins: int = 20) -> str:
    """A readable bin width giving about ``target_bins`` bins over the span of ``df['time']``."""
    t = df["time"].dropna()
    if len(t) < 2:
        return "1h"
    span = (t.max() - t.min()) / target_bins
    for f in _FREQS:
        if pd.Timedelta(f) >= span:
            return f
    return _FREQS[-1]


def fail_rate_by_class(df: pd.DataFrame, freq: str | None = None) -> pd.DataFrame:
    """Per time bin (index) and defect class (columns): share of the bin's parts that FAILed with that class."""
    ok = df[(df["verdict"] != "ERROR") & df["time"].notna()]
    if ok.empty:
        return pd.DataFrame()
    freq = freq or time_bin(ok)
    bins = ok["time"].dt.floor(freq)
    total = ok.groupby(bins).size()
    fails = ok[ok["verdict"] == "FAIL"].explode("classes").dropna(subset=["classes"])
    if fails.empty:
        return pd.DataFrame(0.0, index=total.index, columns=["FAIL (any class)"])
    counts = fails.groupby([fails["time"].dt.floor(freq), "classes"]).size().unstack(fill_value=0)
    rate = counts.reindex(total.index, fill_value=0).div(total, axis=0)
    rate.index.name = "time"
    rate.columns.name = None
    return rate


def measured_rates(df: pd.DataFrame) -> dict:
    """Model verdicts against reviewed truth (latest decision FAIL = defective part, PASS = good part).

    escape rate: reviewed-defective parts the model PASSed; false-reject rate: reviewed-good parts it FAILed.
    REVIEW counts as neither (a person saw it), as in ``industrial_qc.verdict.part_rates``.
    """
    rev = df[df["reviewed"].isin(TRUTH_VERDICTS) & (df["verdict"] != "ERROR")]
    bad = rev[rev["reviewed"] == "FAIL"]
    good = rev[rev["reviewed"] == "PASS"]
    return {
        "reviewed": len(rev),
        "defective": len(bad),
        "good": len(good),
        "escape_rate": float((bad["verdict"] == "PASS").mean()) if len(bad) else None,
        "false_reject_rate": float((good["verdict"] == "FAIL").mean()) if len(good) else None,
        "agreement": float((rev["verdict"] == rev["reviewed"]).mean()) if len(rev) else None,
    }


def resolve_file(file: str, results_dir: Path | None) -> Path:
    """A record's file as a path: absolute, else relative to the working folder, else to the results folder."""
    p = Path(file.split("#", 1)[0]).expanduser()
    if p.is_absolute() or p.exists() or results_dir is None:
        return p
    alt = results_dir / p
    return alt if alt.exists() else p


def reviewed_boxes(review: dict) -> list[tuple[str, list[float]]]:
    """(class, xyxy) of the defects a review confirmed (with their relabelled class)."""
    out = []
    for d in (review.get("details") or {}).get("defects", []):
        if d.get("action") == "confirm":
            out.append((str(d.get("label") or d.get("model_class")), [float(v) for v in d["box"]]))
    return out


@dataclass
class YoloExport:
    out_dir: Path
    images: int = 0
    boxes: int = 0
    good: int = 0
    skipped: list[str] = field(default_factory=list)  # "file: why"
    names: list[str] = field(default_factory=list)
    replaced: bool = False  # a previous export of the suite was replaced


def export_yolo(parts: list[dict], latest: dict[str, dict], class_names: list[str], out_dir: Path | str,
                results_dir: Path | None = None, val_every: int = 5, *, replace: bool = False,
                roots: Roots | None = None, meta: dict | None = None) -> YoloExport:
    """Reviewed parts as an Ultralytics dataset: ``images/{train,val}``, ``labels/{train,val}``, ``data.yaml``.

    A part FAILed with confirmed defects gets their (relabelled) boxes; a part reviewed PASS with no confirmed
    defect is a good part (image, no label file). A part reviewed FAIL whose defects were all rejected has a
    defect nobody boxed: it is skipped and listed, since exporting it as good would teach the model to miss it.
    Every ``val_every``-th exported image goes to val (at least one when there are two or more).

    ``out_dir`` is new, empty, or the suite's own previous YOLO export, which is replaced only with ``replace``
    (``apps.safe_export``: anything else is refused with an InputError before a file is touched). The dataset is
    built next to it and moved into place. ``roots``: images outside its read roots are skipped and listed.
    ``meta`` goes into the export's marker (app, run, who).
    """
    out = YoloExport(Path(out_dir))
    plan = plan_folder(out.out_dir, kind="yolo", replace=replace)
    out.replaced = plan.mode == "replace"
    with staged_folder(plan, kind="yolo", meta=meta) as stage:
        _write_yolo(out, stage, parts, latest, class_names, results_dir, val_every, roots)
    return out


def exportable_image(file: str, results_dir: Path | None, roots: Roots | None, skipped: list[str]) -> Path | None:
    """The image of a record's ``file`` when this app may read it and it exists; else None, the reason appended to
    ``skipped``."""
    src = resolve_file(file, results_dir)
    try:
        src = roots.readable(src) if roots is not None else src
    except InputError:
        skipped.append(f"{file}: outside the folders this app may read (--data-root)")
        return None
    if not src.is_file():
        skipped.append(f"{file}: image not found")
        return None
    return src


def _write_yolo(out: YoloExport, stage: Path, parts: list[dict], latest: dict[str, dict], class_names: list[str],
                results_dir: Path | None, val_every: int, roots: Roots | None) -> None:
    import yaml

    from industrial_qc.data import image_size

    names = [n for n in class_names if n != "background"]
    chosen = []
    newest = {p["item"]: p for p in parts}  # a file inspected twice: its latest record
    for p in newest.values():
        rev = latest.get(p["item"])
        if rev is None or p["status"] != "ok":
            continue
        boxes = reviewed_boxes(rev)
        if rev["decision"] == "FAIL" and not boxes:
            out.skipped.append(f"{p['file']}: reviewed FAIL but no confirmed box (needs annotation)")
            continue
        src = exportable_image(p["file"], results_dir, roots, out.skipped)
        if src is not None:
            chosen.append((p, src, boxes))
    for _, _, boxes in chosen:
        for cls, _ in boxes:
            if cls not in names:
                names.append(cls)
    for i, (p, src, boxes) in enumerate(chosen):
        split = "val" if len(chosen) > 1 and (i % val_every == val_every - 1 or (i == len(chosen) - 1
                                                                                 and len(chosen) < val_every)) \
            else "train"
        w, h = p["width"], p["height"]
        if not w or not h:
            try:
                w, h = image_size(src)  # the header, upright as the line decodes it (EXIF)
            except InputError:
                out.skipped.append(f"{p['file']}: unreadable image")
                continue
        stem = f"{i:05d}_{src.stem}"
        img_dir, lbl_dir = stage / "images" / split, stage / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, img_dir / f"{stem}{src.suffix.lower()}")
        if boxes:
            lines = []
            for cls, (x1, y1, x2, y2) in boxes:
                cx, cy = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h
                bw, bh = (x2 - x1) / w, (y2 - y1) / h
                vals = [min(max(v, 0.0), 1.0) for v in (cx, cy, bw, bh)]
                lines.append(f"{names.index(cls)} " + " ".join(f"{v:.6f}" for v in vals))
            (lbl_dir / f"{stem}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
            out.boxes += len(boxes)
        else:
            out.good += 1
        out.images += 1
    out.names = names
    has_val = (stage / "images" / "val").is_dir()
    data = {"path": str(out.out_dir.resolve()), "train": "images/train",
            "val": "images/val" if has_val else "images/train", "names": dict(enumerate(names))}
    (stage / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
