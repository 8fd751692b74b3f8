"""The radiology worklist from results rows (no streamlit): priority and row formats; the run's operating point
and trade-off views from run.json."""

from __future__ import annotations

import numpy as np

from apps import med_data
from common.results import write_records
from medical3d.operating import Evidence, choose_operating_point, rule_tradeoff
from medical3d.verdict import DecisionRule


def operating_fields() -> dict:
    """run.json fields as `vsuite med train` (metrics: the validation operating point and trade-off) and
    `vsuite med eval` (eval.test.tradeoff) write them, from medical3d.operating on small score sets."""
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(7, bool), np.zeros(20, bool)]
    p = np.clip(np.where(y, rng.normal(0.75, 0.15, 27), rng.normal(0.25, 0.15, 27)), 0.01, 0.99)
    op = choose_operating_point(Evidence(y, p, "val"), target=0.95, confidence=0.95, review_band=0.1,
                                review_error=0.1, positive_label="lesion", negative_label="normal")
    rule = DecisionRule(labels=["normal", "lesion"], positive_label="lesion", threshold=op.threshold, review_band=0.1,
                        temperature=1.0, review_low=op.review_low, review_high=op.review_high, review_error=0.1)
    yt = np.r_[np.ones(5, np.int64), np.zeros(9, np.int64)]
    pt = np.clip(np.where(yt == 1, rng.normal(0.6, 0.2, 14), rng.normal(0.35, 0.2, 14)), 0.01, 0.99)
    return {"metrics": {"val": {}, "operating_point": op.report, "tradeoff": op.tradeoff},
            "eval": {"test": {"tradeoff": rule_tradeoff(yt, np.c_[1 - pt, pt], rule)}}}


def test_worklist_priority_and_row_formats(tmp_path):
    rows = [
        {"source": "s/neg.nii.gz", "label": "normal", "verdict": "negative", "score": 0.1,
         "probabilities": {"normal": 0.9, "lesion": 0.1}},
        {"source": "s/rev.nii.gz", "label": "lesion", "verdict": "REVIEW", "score": 0.5,
         "probabilities": {"normal": 0.5, "lesion": 0.5}},
        {"source": "s/bad", "status": "error", "reason": "missing slice"},
        {"source": "s/pos.nii.gz", "label": "lesion", "verdict": "positive", "p_normal": 0.2, "p_lesion": 0.8},
        {"source": "s/pos2.nii.gz", "label": "lesion", "verdict": "positive", "score": 0.99},
    ]
    path = write_records(rows, tmp_path / "results.csv")
    run = {"labels": ["normal", "lesion"], "decision": {"positive_label": "lesion"}}
    studies = med_data.load_studies(path, run)
    assert studies[3]["probabilities"] == {"normal": 0.2, "lesion": 0.8}  # eval's p_<label> columns
    assert studies[0]["qa"] == {} and studies[1]["study"] == "rev"
    wl = med_data.worklist(studies, {"s/rev.nii.gz": {"decision": "agree", "reviewer": "dr a"}})
    assert wl["study"].tolist() == ["pos2", "pos", "rev", "neg", "bad"]
    assert wl["status"].tolist() == ["not reviewed", "not reviewed", "reviewed", "not reviewed", "not reviewed"]
    assert med_data.positive_label({}, ["benign", "malignant"]) == "malignant"


def test_tradeoff_views_from_run_json():
    fields = operating_fields()
    threshold = fields["metrics"]["operating_point"]["threshold"]
    views = med_data.tradeoff_views({"vertical": "medical3d", **fields})
    assert [v["name"] for v in views] == ["training evidence (validation)", "eval: test"]
    train, test = views
    assert train["threshold"] == test["threshold"] == threshold
    assert train["point"]["message"].startswith("cannot support target sensitivity 0.95: 7 val lesion studies")
    assert test["point"] is None
    table = med_data.tradeoff_table(train["rows"])
    assert len(table) == 20 and table["run's threshold"].tolist().count("◀") == 1  # the 0.05 grid and the run's
    marked = table[table["run's threshold"] == "◀"].iloc[0]
    at = next(r for r in fields["metrics"]["tradeoff"] if r["chosen"])
    assert marked["threshold"] == threshold and marked["sensitivity"] == at["sensitivity"]
    assert marked["REVIEW share"] == at["review"] and marked["errors in REVIEW"] == at["errors_in_review"]
    spec = med_data.tradeoff_chart_spec(train["rows"], threshold)
    lines, rule = spec["layer"]
    assert {v["measure"] for v in lines["data"]["values"]} == set(med_data.TRADEOFF_MEASURES.values())
    assert rule["mark"]["type"] == "rule" and rule["data"]["values"][0]["threshold"] == threshold


def test_tradeoff_views_of_older_or_damaged_runs():
    assert med_data.tradeoff_views(None) == [] and med_data.tradeoff_views({"metrics": {"val": {}}}) == []
    damaged = {"metrics": {"tradeoff": [{"threshold": "x"}, None, {"threshold": 0.5, "sensitivity": float("nan"),
                                                                    "errors": "2", "chosen": True}]},
               "eval": {"test": "not a dict"}}
    (view,) = med_data.tradeoff_views(damaged)
    assert view["rows"] == [{"threshold": 0.5, "sensitivity": None, "specificity": None, "review": None,
                             "errors_in_review": None, "errors": None, "grid": False, "chosen": True}]
    assert view["threshold"] == 0.5 and view["point"] is None
