"""The part-classifier line model (industrial_qc.part_pipeline) on a hand-built ONNX whose behaviour is known: the
records it makes, verdicts from its thresholds, NaN never PASSed, heatmaps only for FAIL / REVIEW parts and hot
where the defect is, and models whose metadata cannot judge refusing to load, naming the file."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from common.errors import InputError
from common.results import read_jsonl
from common.rundir import read_run_json
from industrial_qc.part_pipeline import PartPipeline, Placement, cam_heat, run_mode
from industrial_qc.parts import fit_square
from industrial_qc.pipeline import Pipeline, load_pipeline, part_record
from industrial_qc.score import score, score_files
from tests.industrial_qc.part_helpers import SIZE, make_part_run, part_image, write_part_image

BIG_SPOT = (30, 8, 20)  # x, y, side: a defect the model fails


def _pipe(tmp_path, **changes) -> PartPipeline:
    return PartPipeline.from_run(make_part_run(tmp_path / "run", **changes))


def test_record_of_a_failed_part(tmp_path):
    pipe = _pipe(tmp_path)
    rec = part_record(pipe, part_image(BIG_SPOT), "a.png", 1.5, heatmap=lambda: tmp_path / "h" / "a.png",
                      ledger_key="k")
    assert rec["status"] == "ok" and rec["verdict"] == "FAIL" and rec["mode"] == "part"
    assert rec["file"] == "a.png" and rec["ledger_key"] == "k" and rec["run_id"] == pipe.run_id
    assert rec["defects"] == [] and rec["n_candidates"] == 0 and (rec["width"], rec["height"]) == (SIZE, SIZE)
    probs = rec["probabilities"]
    assert list(probs) == ["good", "scratch", "pit"] and sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert rec["max_defect_score"] == pytest.approx(1.0 - probs["good"], abs=1e-4)
    assert rec["max_defect_prob"] == rec["max_defect_score"]
    assert rec["class"] == "scratch" and rec["class_prob"] == probs["scratch"]  # the top non-good class
    assert rec["heatmap"] == str(tmp_path / "h" / "a.png")
    assert cv2.imread(rec["heatmap"]).shape == (SIZE, SIZE, 3)
    for key in ("decode_ms", "latency_ms", "classify_ms", "timestamp"):
        assert key in rec


def test_verdicts_follow_the_model_thresholds(tmp_path):
    img = part_image((20, 20, 12))
    s = float(1.0 - _pipe(tmp_path / "probe").analyse(img).probs[0])  # 1 - P(good)
    assert 0.05 < s < 0.95
    cases = {"PASS": (min(1.0, s + 0.02), s + 0.01), "REVIEW": (s + 0.01, s - 0.01), "FAIL": (s - 0.001, s - 0.01),
             "FAIL at fail": (s, 0.0), "REVIEW at review": (s + 0.01, s)}  # >= a threshold: its verdict
    for want, (fail, review) in cases.items():
        pipe = _pipe(tmp_path / want, thresholds={"fail": fail, "review": review, "score": "part"})
        assert pipe.inspect(img)["verdict"] == want.split()[0], (want, s, fail, review)


def test_nan_from_the_model_is_review_never_pass(tmp_path):
    pipe = _pipe(tmp_path, nan=True)
    res = pipe.inspect(part_image(), heatmap=lambda: tmp_path / "h.png")
    assert res["verdict"] == "REVIEW" and "non-finite" in res["verdict_note"]
    assert res["max_defect_score"] == 0.0
    assert res["heatmap"] == str(tmp_path / "h.png")  # REVIEW parts get their (empty) map too


def test_heatmaps_only_for_fail_and_review(tmp_path):
    run = make_part_run(tmp_path / "run", thresholds={"fail": 0.8, "review": 0.5, "score": "part"})
    parts = tmp_path / "parts"
    write_part_image(parts / "clean.png")
    write_part_image(parts / "fail.png", spot=BIG_SPOT)
    write_part_image(parts / "sub" / "fail.png", spot=(4, 40, 16))  # same stem, other folder: its own picture
    out = tmp_path / "scores" / "run1.jsonl"
    records = score(run, [str(parts)], out, console=_console(), run=read_run_json(run))
    by = {(r["file"].split("/")[-2], r["verdict"]): r for r in records}
    assert set(by) == {("parts", "PASS"), ("parts", "FAIL"), ("sub", "FAIL")}
    assert "heatmap" not in by[("parts", "PASS")]
    maps = sorted(p.name for p in (tmp_path / "scores" / "run1_heatmaps").iterdir())
    assert len(maps) == 2 and "fail.png" in maps
    assert {by[k]["heatmap"] for k in by if k[1] == "FAIL"} == {str(tmp_path / "scores" / "run1_heatmaps" / m)
                                                                for m in maps}
    assert [r["heatmap"] for r in read_jsonl(out) if "heatmap" in r] == [r["heatmap"] for r in records
                                                                         if "heatmap" in r]
    again = score(run, [str(parts)], out, console=_console(), run=read_run_json(run))  # a rerun: same names
    assert sorted(p.name for p in (tmp_path / "scores" / "run1_heatmaps").iterdir()) == maps
    assert [r.get("heatmap") for r in again] == [r.get("heatmap") for r in records]


def test_heatmap_is_hot_where_the_defect_is(tmp_path):
    pipe = _pipe(tmp_path)
    img = part_image((70, 20, 16), hw=(64, 100))  # wider than high: padded above and below in the square
    an = pipe.analyse(img)
    heat = cam_heat(an.cam[pipe.labels.index("scratch")], pipe.classifier.size, img.shape[:2])
    assert heat.shape == (64, 100) and heat.max() == pytest.approx(1.0, abs=0.05)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 66 <= x <= 90 and 16 <= y <= 40, (x, y)
    assert heat[:, :40].max() < 0.2  # far from the spot: cold
    picture = pipe.heatmap(img, an)
    assert picture.shape == img.shape and picture.dtype == np.uint8


def test_placement_is_where_fit_square_puts_the_image():
    for h, w in ((64, 100), (100, 64), (33, 200), (64, 64)):
        sq = fit_square(np.full((h, w, 3), 7, np.uint8), SIZE)
        p = Placement.of(h, w, SIZE)
        inside = np.zeros((SIZE, SIZE), bool)
        inside[p.top : p.top + p.height, p.left : p.left + p.width] = True
        assert (sq[..., 0] == 7).tolist() == inside.tolist(), (h, w)


def test_a_failed_heatmap_write_keeps_the_record(tmp_path):
    def nowhere():
        raise OSError("disk full")

    res = _pipe(tmp_path).inspect(part_image(BIG_SPOT), heatmap=nowhere)
    assert res["verdict"] == "FAIL" and res["heatmap"] is None and "disk full" in res["heatmap_error"]


def test_score_files_without_a_folder_writes_no_heatmap(tmp_path):
    pipe = _pipe(tmp_path)
    f = write_part_image(tmp_path / "p.png", spot=BIG_SPOT)
    (rec,) = score_files(pipe, [f])
    assert rec["verdict"] == "FAIL" and "heatmap" not in rec


BAD_METADATA = {
    "no thresholds": ({"thresholds": None}, "no verdict thresholds"),
    "threshold NaN": ({"thresholds": {"fail": float("nan"), "review": 0.3, "score": "part"}}, "fail=nan"),
    "fail below review": ({"thresholds": {"fail": 0.2, "review": 0.3, "score": "part"}}, "below review"),
    "other score": ({"thresholds": {"fail": 0.8, "review": 0.3, "score": "both"}}, "not the part's"),
    "no labels": ({"labels": None}, "metadata labels=None"),
    "labels twice": ({"labels": ["good", "pit", "pit"]}, "name a class twice"),
    "labels vs outputs": ({"labels": ["good", "pit"], "outputs": 3}, "outputs 3"),
    "no good label": ({"good_label": None}, "good_label=None"),
    "unknown good label": ({"good_label": "ok"}, "good_label='ok' is not one of the labels"),
    "not a part model": ({"mode": None}, "not a part classifier"),
    "normalize": ({"normalize": "zscore"}, "normalize='zscore'"),
    "input size": ({"input_size": 96}, "does not take 96-px parts"),
    "temperature": ({"temperature": 0}, "temperature=0"),
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_a_model_that_cannot_judge_refuses_to_load_naming_the_file(tmp_path, case):
    changes, message = BAD_METADATA[case]
    run = make_part_run(tmp_path / "run", **changes)
    with pytest.raises(InputError) as err:
        PartPipeline.from_run(run)
    assert "part_classifier.onnx" in str(err.value) and message in str(err.value), str(err.value)


def test_run_json_must_agree_with_the_model(tmp_path):
    run = make_part_run(tmp_path / "a", run_fields={"labels": ["ok", "scratch", "pit"]})
    with pytest.raises(InputError, match="differ from run.json"):
        PartPipeline.from_run(run)
    run = make_part_run(tmp_path / "b")
    (run / "part_classifier.onnx").write_bytes((run / "part_classifier.onnx").read_bytes() + b"\0")
    with pytest.raises(InputError, match="changed since training"):
        PartPipeline.from_run(run)


def test_load_pipeline_dispatches_on_the_run_mode(tmp_path):
    from tests.apps.helpers import make_qc_case

    assert isinstance(load_pipeline(make_part_run(tmp_path / "part")), PartPipeline)
    detect = make_qc_case(tmp_path / "qc")["run_dir"]  # a detection run: no mode in run.json
    assert isinstance(load_pipeline(detect), Pipeline)
    run = make_part_run(tmp_path / "odd", run_fields={"mode": "segment"})
    with pytest.raises(InputError, match="unknown mode 'segment'"):
        load_pipeline(run)
    assert run_mode(json.loads((run / "run.json").read_text()) | {"mode": None}, run) == "detect"


def _console():
    from rich.console import Console

    return Console(quiet=True)
