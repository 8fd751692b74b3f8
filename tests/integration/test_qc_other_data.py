"""Data unlike the generator's: one class, grayscale, non-square images, polygon labels. A user's own Ultralytics
dataset looks like this more often than like ``vsuite qc synth``; train -> eval -> inspect must take it as it is."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from typer.testing import CliRunner

from common.rundir import read_run_json
from industrial_qc.cli import app
from industrial_qc.data import load_dataset
from tests.conftest import TINY_CONFIG

runner = CliRunner()
W, H = 96, 72  # the tiny set's 96-px parts, cut to 72 rows


def _one_class_gray_polygons(src_yaml: Path, dst: Path) -> Path:
    """The tiny set as 96 x 72 grayscale PNGs, every defect class merged into ``defect``, each box written as
    the polygon of its corners (clipped to the cut image)."""
    src = src_yaml.parent
    for img in sorted(src.glob("images/*/*.png")):
        split = img.parent.name
        (dst / "images" / split).mkdir(parents=True, exist_ok=True)
        (dst / "labels" / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dst / "images" / split / img.name), cv2.imread(str(img), cv2.IMREAD_GRAYSCALE)[:H])
        lbl = src / "labels" / split / f"{img.stem}.txt"
        rows = []
        for line in (lbl.read_text().split("\n") if lbl.exists() else []):
            if not line.strip():
                continue
            _, cx, cy, w, h = (float(v) for v in line.split())
            x1, x2 = (cx - w / 2) * W, (cx + w / 2) * W
            y1, y2 = (cy - h / 2) * W, min((cy + h / 2) * W, H)
            if y2 - y1 >= 3:
                pts = [x1 / W, y1 / H, x2 / W, y1 / H, x2 / W, y2 / H, x1 / W, y2 / H]
                rows.append("0 " + " ".join(f"{min(max(v, 0.0), 1.0):.6f}" for v in pts))
        if rows:
            (dst / "labels" / split / f"{img.stem}.txt").write_text("\n".join(rows) + "\n")
    yaml_path = dst / "data.yaml"
    yaml_path.write_text(f"path: {dst}\ntrain: images/train\nval: images/val\ntest: images/test\n"
                         "names: {0: defect}\n")
    return yaml_path


def test_one_class_grayscale_non_square_polygon_dataset_trains_evaluates_and_inspects(tmp_path, tiny_data):
    data = _one_class_gray_polygons(tiny_data, tmp_path / "ds")
    ds = load_dataset(data)
    assert all(len(s.boxes) == 0 or s.boxes[:, 0].max() == 0 for split in ds.splits.values() for s in split)
    assert sum(len(s.boxes) for s in ds.split("val")) > 0

    run = tmp_path / "run"
    # at imgsz 64 the parts are shrunk 1.5x and the smallest defects fall under 6 px: training says so
    result = runner.invoke(app, ["train", str(data), "--config", str(TINY_CONFIG), "--out", str(run),
                                 "--set", "detector.imgsz=64"])
    assert result.exit_code == 0, result.output
    meta = read_run_json(run)
    assert meta["labels"] == ["background", "defect"]
    scale = json.loads((run / "metrics.json").read_text())["train"]["defect_scale"]
    assert scale["imgsz"] == 64 and scale["defects"] == sum(len(s.boxes) for s in ds.split("train"))
    assert scale["p10"] < 6 and scale["suggested_imgsz"] == 96  # never more than the images' own 96 px
    said = " ".join(result.output.split())
    assert "a tenth of the train defects are under" in said and "--set detector.imgsz=96" in said

    result = runner.invoke(app, ["eval", str(run), str(data), "--split", "test"])
    assert result.exit_code == 0, result.output
    ev = json.loads((run / "metrics.json").read_text())["eval"]["test"]
    assert ev["images"] == len(ds.split("test")) and ev["pipeline"]["parts"]["parts"] == ev["images"]

    out = tmp_path / "line"
    result = runner.invoke(app, ["inspect", str(run), str(data.parent / "images" / "test"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == len(ds.split("test")) and all(r["status"] == "ok" for r in records)
    boxes = np.array([d["box"] for r in records for d in r["defects"]]).reshape(-1, 4)
    assert len(boxes) > 0  # every part sends at least its best candidate to stage 2 (min_candidates)
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= W).all() and (boxes[:, [1, 3]] <= H).all()
    assert {d["class"] for r in records for d in r["defects"]} == {"defect"}
