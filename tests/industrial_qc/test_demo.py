"""The image-level part of ``vsuite demo`` (industrial_qc.demo.run_part_demo) on a tiny plan: it trains a part run,
inspects held-out parts with heatmaps, evaluates, and says how to open the app on its results."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from industrial_qc import demo


def test_part_demo_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "part_demo_plan", lambda minutes: {"images": 60, "size": 64, "minutes": 0.1,
                                                                 "contrast": (0.3, 0.5)})
    console = Console(record=True, width=200)
    out = demo.run_part_demo(tmp_path, console=console, minutes=3)
    run = json.loads((Path(out["run_dir"]) / "run.json").read_text())
    assert run["mode"] == "part" and set(out["metrics"]) >= {"accuracy", "escape_rate", "review_rate"}
    records = [json.loads(line) for line in Path(out["results"]).read_text().splitlines()]
    assert len(records) == out["line"]["parts"] > 0 and all(r["mode"] == "part" for r in records)
    assert all(Path(r["heatmap"]).is_file() for r in records if r["verdict"] != "PASS")
    text = console.export_text()
    assert f"vsuite app qc {out['run_dir']} --results {out['results']}" in text
    assert "part classifier eval (test split)" in text
