"""The radiology worklist from results rows (no streamlit): priority and row formats."""

from __future__ import annotations

from apps import med_data
from common.results import write_records


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
