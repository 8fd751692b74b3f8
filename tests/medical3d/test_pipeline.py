"""One study in, one record out (``medical3d.pipeline.StudyScorer``), through the batch scorer: a run whose
metadata cannot be judged by refuses to load, naming the key; a model answer that is not finite is REVIEW, never a
call; a model that fails at run time is each study's error record."""

from __future__ import annotations

import pytest

from common.errors import InputError
from tests.medical3d.helpers import META, PREPROCESSING, make_run, phantom, run_score, write


@pytest.mark.parametrize("change,message", [
    ({"threshold": float("nan")}, "threshold nan must be a finite number in [0, 1]"),
    ({"threshold": 1.5}, "threshold 1.5 must be a finite number in [0, 1]"),
    ({"threshold": "0.5"}, "threshold '0.5' must be a finite number in [0, 1]"),
    ({"review_band": -0.1}, "review_band -0.1 must be a finite number in [0, 1]"),
    ({"temperature": 0.0}, "temperature 0.0 must be a finite number > 0"),
    ({"temperature": float("inf")}, "temperature inf must be a finite number > 0"),
    ({"review_low": 0.6}, "the REVIEW band [0.6, 0.55] (review_low, review_high) must hold the threshold 0.5"),
    ({"review_high": float("nan")}, "review_high nan must be a finite number in [0, 1]"),
    ({"bias": [0.0, float("nan")]}, "bias [0.0, nan] must be 2 finite numbers, one per label"),
    ({"bias": [0.0]}, "bias [0.0] must be 2 finite numbers, one per label"),
    ({"labels": ["normal", "normal"]}, "labels ['normal', 'normal'] must be a list of at least 2 unique"),
    ({"labels": ["a", "b", "lesion"], "bias": None}, "names 3 classes but the model outputs 2"),
    ({"positive_label": "tumour"}, "positive_label 'tumour' is not one of the labels"),
    ({"preprocessing": {**PREPROCESSING, "resample": {"spacing": [float("nan"), 2, 2]}}}, "Input should be a finite"),
    ({"preprocessing": {**PREPROCESSING, "crop": {"size": [8, 8, 8]}}},
     "input shape ['batch', 1, 16, 16, 16] does not fit the preprocessing"),
])
def test_run_with_bad_metadata_refuses_to_load_naming_the_key(tmp_path, change, message):
    bad = make_run(tmp_path / "bad", {**META, **change})
    study = write(phantom(), tmp_path / "study.nii.gz")
    with pytest.raises(InputError) as err:
        run_score(bad, [study], tmp_path / "out.csv")
    assert str(err.value).startswith(str(bad / "model.onnx")) and message in str(err.value), str(err.value)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("weights", [(float("nan"), 0.0), (float("inf"), 0.0), (float("-inf"), 0.0),
                                     (float("-inf"), float("inf"))])
def test_non_finite_logits_are_review_never_a_call(tmp_path, weights):
    nan_run = make_run(tmp_path / "nan", weights=weights)
    study = write(phantom(), tmp_path / "study.nii.gz")
    (rec,) = run_score(nan_run, [study], tmp_path / "out.jsonl")
    assert rec["status"] == "ok" and rec["verdict"] == "REVIEW"
    assert rec["label"] is None and rec["score"] is None and rec["probabilities"] is None
    assert "not finite" in rec["reason"]


def test_a_model_failing_at_run_time_is_each_study_s_error_record(tmp_path):
    broken = make_run(tmp_path / "broken", reshape_to=5)  # 16^3 voxels do not reshape to (-1, 5)
    studies = [write(phantom(seed=i), tmp_path / f"s{i}.nii.gz") for i in range(2)]
    records = run_score(broken, studies, tmp_path / "out.csv")
    assert [r["status"] for r in records] == ["error", "error"]
    for rec, study in zip(records, studies, strict=True):
        assert rec["reason"].startswith(f"{study}: inference failed (") and "Reshape" in rec["reason"], rec["reason"]
