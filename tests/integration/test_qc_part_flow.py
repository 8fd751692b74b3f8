"""A part-classifier run end to end, for both image-level dataset forms (class folders, CSV manifest): generated
parts -> ``vsuite qc train`` -> ``qc eval`` -> ``qc inspect`` (the line: heatmaps for FAIL / REVIEW parts, a restart
that redoes no part) -> ``vsuite score`` -> the QC review page. Tiny: 64 px, one epoch (configs/.../tiny.yaml)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from common.config import CONFIG_DIR
from common.results import read_records
from industrial_qc.parts import load_parts
from industrial_qc.synth import SynthConfig
from industrial_qc.synth_parts import synthesize_parts
from tests.integration.qc_line_helpers import inspect_cli, strict_json_lines

TINY = CONFIG_DIR / "industrial_qc" / "tiny.yaml"
NOT_PASSED = ("FAIL", "REVIEW")


@pytest.fixture(scope="module", params=["folders", "csv"])
def part_run(request, tmp_path_factory) -> dict:
    """Generated parts in ``layout`` and a run trained on them by the ``qc train`` command."""
    from industrial_qc.cli import app

    root = tmp_path_factory.mktemp(f"part_{request.param}")
    rep = synthesize_parts(root / "data", SynthConfig(images=60, size=64, seed=3, image_format="png"),
                           request.param)
    res = CliRunner().invoke(app, ["train", str(rep.data), "--config", str(TINY), "--out", str(root / "run")])
    assert res.exit_code == 0, res.output
    return {"root": root, "data": rep.data, "run": root / "run", "layout": request.param}


def _test_images(case: dict) -> list[Path]:
    run = json.loads((case["run"] / "run.json").read_text())
    cfg = run["config"]
    ds = load_parts(case["data"], cfg["part"]["good_labels"], cfg["part"]["split_fractions"], cfg["seed"])
    return ds.paths("test")


def test_train_writes_a_part_run(part_run):
    run = json.loads((part_run["run"] / "run.json").read_text())
    assert run["mode"] == "part" and run["good_label"] == "good" and run["labels"][0] == "good"
    assert (part_run["run"] / run["models"]["line"]).is_file()


def test_eval_reports_the_part_metrics(part_run):
    from industrial_qc.cli import app

    res = CliRunner().invoke(app, ["eval", str(part_run["run"]), str(part_run["data"]), "--split", "test"])
    assert res.exit_code == 0, res.output
    assert "escape_rate" in res.output and "defect_auroc" in res.output
    m = json.loads((part_run["run"] / "metrics.json").read_text())["eval"]["test"]
    assert m["mode"] == "part" and m["images"] == len(_test_images(part_run)) and m["errors"] == []
    cls = m["classification"]
    assert 0.0 <= cls["accuracy"] <= 1.0 and set(cls["per_class"]) == {"good", "scratch", "pit", "stain", "crack"}
    assert sum(map(sum, cls["confusion_matrix"])) == m["images"]
    assert m["defect_auroc"] is None or 0.0 <= m["defect_auroc"] <= 1.0
    assert sum(m["parts"]["verdicts"].values()) == m["images"]
    assert {"escape_rate", "false_reject_rate"} <= set(m["parts"]) and m["review_rate"] is not None
    for p in m["plots"]:
        assert cv2.imread(p) is not None
    summary = json.loads((part_run["run"] / "run.json").read_text())["metrics"]["eval_test"]
    assert summary["accuracy"] == cls["accuracy"] and summary["escape_rate"] == m["parts"]["escape_rate"]


def test_line_heatmaps_and_restart_then_score_then_app(part_run, monkeypatch):
    root, run = part_run["root"], part_run["run"]
    images = _test_images(part_run)
    hot, out = root / "hot", root / "line"
    hot.mkdir()
    for p in images[:-2]:
        shutil.copy2(p, hot / p.name)
    proc = inspect_cli(run, str(hot), out, "--settle-seconds", "0")
    assert proc.returncode == 0, proc.stderr
    first = strict_json_lines(out / "results.jsonl")
    assert len(first) == len(images) - 2 and all(r["status"] == "ok" and r["mode"] == "part" for r in first)
    _check_heatmaps(first, out / "heatmaps")

    for p in images[-2:]:  # two more parts arrive while the line is down; a restart takes only those
        shutil.copy2(p, hot / p.name)
    proc = inspect_cli(run, str(hot), out, "--settle-seconds", "0")
    assert proc.returncode == 0, proc.stderr
    records = strict_json_lines(out / "results.jsonl")
    assert [r["file"] for r in records[: len(first)]] == [r["file"] for r in first]
    assert sorted(Path(r["file"]).name for r in records) == sorted(p.name for p in images)  # each once
    _check_heatmaps(records, out / "heatmaps")

    scores = _score(run, hot, root / "scores" / "parts.parquet")
    assert {Path(r["file"]).name: r["verdict"] for r in scores} == {Path(r["file"]).name: r["verdict"]
                                                                   for r in records}  # same model, same verdicts
    _check_heatmaps(scores, root / "scores" / "parts_heatmaps")
    _review_in_app(run, out / "results.jsonl", hot, records, monkeypatch)


def _check_heatmaps(records: list[dict], folder: Path) -> None:
    """A readable heatmap PNG of the part's size for each FAIL / REVIEW record, none for PASS ones."""
    maps = [r.get("heatmap") for r in records if r["verdict"] in NOT_PASSED]
    assert all(m and Path(m).parent == folder for m in maps), maps
    for r in records:
        if r["verdict"] in NOT_PASSED:
            assert cv2.imread(r["heatmap"]).shape[:2] == (r["height"], r["width"])
        else:
            assert not r.get("heatmap")
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(Path(m).name for m in maps) if maps \
        else not folder.exists()


def _score(run: Path, hot: Path, out: Path) -> list[dict]:
    from common import cli

    cli._register_groups()
    res = CliRunner().invoke(cli.app, ["score", str(run), str(hot), "--out", str(out)])
    assert res.exit_code == 0, res.output
    records = read_records(out)
    assert all(r["status"] == "ok" for r in records)
    return records


def _review_in_app(run: Path, results: Path, hot: Path, records: list[dict], monkeypatch) -> None:
    """The review page on the line's results: a part, its heatmap when not passed, a decision saved."""
    import sys

    from common.store import default_db_path, open_store
    from tests.apps.helpers import app_test, errors, no_exception, served_on

    monkeypatch.delenv("VSUITE_APP_PASSWORD", raising=False)
    monkeypatch.setattr(sys, "argv", ["qc_review.py", str(run), "--results", str(results), "--data-root", str(hot)])
    shown = next((r for r in records if r["verdict"] in NOT_PASSED), records[0])
    with served_on("127.0.0.1"):
        at = app_test("qc_review.py")
        at.selectbox(key="qc_part").set_value(shown["file"]).run()
        no_exception(at)
        assert errors(at) == []
        assert len(at.image) == (2 if shown["verdict"] in NOT_PASSED else 1)
        at.sidebar.text_input(key="qc_reviewer").set_value("ann")
        i = next(i for i, r in enumerate(records) if r["file"] == shown["file"])
        at.button(key=f"FormSubmitter:qc_form_{i}-Save decision").click().run()
        no_exception(at)
    run_id = json.loads((run / "run.json").read_text())["run_id"]
    row = open_store(str(default_db_path(results))).latest_decisions(app="qc", run_id=run_id)[shown["file"]]
    assert row["record"]["mode"] == "part" and row["details"]["label"] in row["record"]["probabilities"]


def test_scoring_and_the_line_import_neither_torch_nor_sklearn(part_run, tmp_path):
    from tests.integration.test_light_imports import HEAVY_NONE, QC_RUN, _heavy_loaded

    images = tmp_path / "parts"
    images.mkdir()
    for p in _test_images(part_run)[:4]:
        shutil.copy2(p, images / p.name)
    assert _heavy_loaded(QC_RUN, str(part_run["run"]), str(images), str(tmp_path)) == HEAVY_NONE
