"""Issue 28, medical3d: bad studies and bad runs through the real batch scorer (``vsuite score``).

Every input is answered by exactly one record (a study by one record, an input holding none by an error row naming
it); incomplete or blank volumes and impossible resampling grids are errors; a run whose metadata cannot be judged
by refuses to load; a model answer that is not finite is REVIEW, never a call. Volumes are 16-24 voxels a side and
the model is a 3-node ONNX graph written here, so the whole file runs in seconds without training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import SimpleITK as sitk
from onnx import TensorProto, helper
from rich.console import Console

from common.errors import InputError
from common.rundir import read_run_json, write_run_json
from medical3d.io import write_dicom_series
from medical3d.score import score
from medical3d.verdict import DecisionRule

LABELS = ["normal", "lesion"]
PREPROCESSING = {"modality": "ct", "resample": {"spacing": [2.0, 2.0, 2.0]}, "crop": {"size": [16, 16, 16]}}
META = {"labels": LABELS, "positive_label": "lesion", "threshold": 0.5, "review_band": 0.1, "temperature": 1.0,
        "bias": [0.0, 0.0], "review_low": 0.45, "review_high": 0.55, "preprocessing": PREPROCESSING}
QUIET = Console(quiet=True)


# ------------------------------------------------------------------------------------------------ builders
def make_run(folder: Path, meta: dict | None = None, weights: tuple[float, float] = (1.0, -1.0), *,
             reshape_to: int | None = None) -> Path:
    """A medical3d run: (B, 1, 16, 16, 16) -> mean -> linear -> (B, 2) logits, with ``meta`` as its metadata.
    ``reshape_to``: the graph reshapes its input to (-1, reshape_to) first, which fails at run time unless it
    divides 16^3. run.json is written after the model, as training does (it records the model's hash)."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [1, 2], np.asarray(weights, np.float32))
    b = helper.make_tensor("B", TensorProto.FLOAT, [2], np.zeros(2, np.float32))
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])]
    inits = [w, b]
    if reshape_to is not None:
        inits.append(helper.make_tensor("shape", TensorProto.INT64, [2], [-1, reshape_to]))
        nodes.insert(0, helper.make_node("Reshape", ["x", "shape"], ["bad"]))
        nodes[-1] = helper.make_node("Gemm", ["flat", "W", "B"], ["pre"])
        nodes += [helper.make_node("ReduceSum", ["bad"], ["total"], keepdims=0),
                  helper.make_node("Add", ["pre", "total"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny_med", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 16, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (META if meta is None else meta).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v)  # NaN goes in as the token NaN, as a careless writer would
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    write_run_json(folder, vertical="medical3d", labels=LABELS, config={}, data_fingerprint="test", metrics={},
                   model="model.onnx")
    return folder


def phantom(size: int = 20, dtype=np.int16, seed: int = 0) -> np.ndarray:
    z, y, x = np.mgrid[:size, :size, :size].astype(np.float32)
    c = (size - 1) / 2
    vol = np.where((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2 < (size * 0.4) ** 2, 120.0, -100.0)
    return (vol + np.random.default_rng(seed).normal(0, 10, vol.shape)).astype(dtype)


def write(arr: np.ndarray, path: Path | bytes, spacing: float = 1.5, compress: bool = True) -> Path:
    """Write a volume; a bytes path (a name that is not UTF-8) is written under a plain name and renamed."""
    target = Path(os.fsdecode(path))
    plain = target.with_name("plain_tmp" + "".join(target.suffixes[-2:]))
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((spacing,) * 3)
    sitk.WriteImage(img, str(plain), compress)
    os.rename(plain, target)
    return target


def cut(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def run_score(run: Path, inputs: list, out: Path) -> list[dict]:
    return score(run, [os.fsdecode(i) for i in inputs], out, console=QUIET, run=read_run_json(run))


def by_name(records: list[dict]) -> dict[str, dict]:
    return {os.path.basename(r["source"]): r for r in records}


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run")


# ------------------------------------------------------------------------------------------------ incomplete data
def test_nifti_cut_in_half_is_one_error_record_each_and_the_batch_goes_on(run, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    write(phantom(), studies / "good.nii.gz")
    cut(write(phantom(dtype=np.int16, seed=1), studies / "half_int16.nii.gz"))
    cut(write(phantom(dtype=np.float32, seed=2), studies / "half_float32.nii.gz"))
    cut(write(phantom(seed=3), studies / "half_raw.nii", compress=False))
    records = run_score(run, [studies], tmp_path / "out.jsonl")
    assert len(records) == 4
    rows = by_name(records)
    assert rows["good.nii.gz"]["status"] == "ok" and rows["good.nii.gz"]["verdict"] in ("positive", "negative")
    for name in ("half_int16.nii.gz", "half_float32.nii.gz", "half_raw.nii"):
        rec = rows[name]
        assert rec["status"] == "error", rec
        assert rec["reason"].startswith(f"{studies / name}: truncated: header declares "), rec["reason"]
        assert "bytes of voxel data, file holds" in rec["reason"]
        assert os.path.isabs(rec["source"]) and rec["source"] == str(studies / name)


@pytest.mark.parametrize("suffix,compress", [(".nrrd", False), (".nrrd", True), (".nhdr", False), (".nhdr", True),
                                             (".mha", False), (".mha", True), (".mhd", False), (".mhd", True)])
def test_nrrd_and_metaimage_cut_short_are_refused_as_truncated(run, tmp_path, suffix, compress):
    studies = tmp_path / "studies"
    studies.mkdir()
    header = write(phantom(dtype=np.float32), studies / f"study{suffix}", compress=compress)
    data = next((p for p in studies.iterdir() if p != header), header)  # the detached data file, if any
    cut(data, 0.7)
    write(phantom(seed=4), studies / "good.nii.gz")
    rows = by_name(run_score(run, [studies], tmp_path / "out.csv"))
    assert len(rows) == 2 and rows["good.nii.gz"]["status"] == "ok"
    reason = rows[header.name]["reason"]
    assert rows[header.name]["status"] == "error" and reason.startswith(f"{header}: truncated: header declares ")


# ------------------------------------------------------------------------------------------------ one row per input
def test_dicom_folder_without_series_next_to_a_study_is_its_own_error_row(run, tmp_path):
    empty = tmp_path / "dicom_empty"
    empty.mkdir()
    (empty / "DICOMDIR.txt").write_text("no images here")
    study = write(phantom(), tmp_path / "study.nii.gz")
    records = run_score(run, [empty, study], tmp_path / "out.csv")
    assert [r["status"] for r in records] == ["error", "ok"]
    assert records[0]["source"] == str(empty) and records[0]["reason"].startswith(f"{empty}: folder holds no studies")


def test_globs_missing_paths_and_symlink_loops_each_answered(run, tmp_path, monkeypatch):
    studies = tmp_path / "studies"
    (studies / "sub").mkdir(parents=True)
    write(phantom(), studies / "a.nii.gz")
    write(phantom(seed=1), studies / "sub" / "b.nii.gz")
    (studies / "sub" / "loop").symlink_to(studies, target_is_directory=True)  # os.walk(followlinks) would loop
    write_dicom_series(sitk.GetImageFromArray(phantom(16)), studies / "sub" / "series")
    monkeypatch.chdir(tmp_path)
    records = run_score(run, [studies, "studies/*.nii.gz", "studies/*.nrrd", "absent.nii.gz"], tmp_path / "o.csv")
    rows = by_name(records)
    # the folder: three studies once each (the glob's a.nii.gz is the same study); then one row per empty input
    assert len(records) == 5, [r["source"] for r in records]
    assert {n for n, r in rows.items() if r["status"] == "ok"} == {"a.nii.gz", "b.nii.gz", "series"}
    assert rows["series"]["format"] == "dicom"
    assert rows["*.nrrd"]["reason"] == f"{tmp_path / 'studies' / '*.nrrd'}: pattern matches no study"
    assert rows["absent.nii.gz"]["reason"] == f"{tmp_path / 'absent.nii.gz'}: no such file or folder"
    assert all(os.path.isabs(r["source"]) for r in records)


def test_a_model_failing_at_run_time_is_each_study_s_error_record(tmp_path):
    broken = make_run(tmp_path / "broken", reshape_to=5)  # 16^3 voxels do not reshape to (-1, 5)
    studies = [write(phantom(seed=i), tmp_path / f"s{i}.nii.gz") for i in range(2)]
    records = run_score(broken, studies, tmp_path / "out.csv")
    assert [r["status"] for r in records] == ["error", "error"]
    for rec, study in zip(records, studies, strict=True):
        assert rec["reason"].startswith(f"{study}: inference failed (") and "Reshape" in rec["reason"], rec["reason"]


def _vsuite() -> list[str]:
    exe = Path(sys.executable).with_name("vsuite")
    return [str(exe)] if exe.is_file() else [sys.executable, "-c", "from common.cli import main; main()"]


def test_non_utf8_names_are_scored_in_a_subprocess_and_round_trip(run, tmp_path):
    """SimpleITK aborts the process on such a name: the exit code shows it. File, detached header and DICOM folder."""
    root = os.fsencode(tmp_path / "studies")
    os.mkdir(root)
    nifti = write(phantom(), root + b"/b_\xff.nii.gz")
    mhd = write(phantom(seed=1), root + b"/c_\xfe.mhd", compress=False)  # data file: plain_tmp.raw
    series = tmp_path / "series_tmp"
    write_dicom_series(sitk.GetImageFromArray(phantom(16, seed=2)), series)
    os.rename(series, root + b"/d_\xfd")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([*_vsuite(), "score", os.fsencode(run), root, "--out", os.fsencode(out)],
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 3
    assert {os.fsencode(r["source"]) for r in records} == {os.fsencode(nifti), os.fsencode(mhd), root + b"/d_\xfd"}
    assert all(r["status"] == "ok" for r in records), [r["reason"] for r in records]


# ------------------------------------------------------------------------------------------------ resource limits
def test_huge_resample_grid_is_an_error_naming_max_voxels(run, tmp_path):
    big = write(phantom(16, dtype=np.float32), tmp_path / "coarse.nii.gz", spacing=400.0)
    good = write(phantom(), tmp_path / "good.nii.gz")
    rows = by_name(run_score(run, [big, good], tmp_path / "out.csv"))
    reason = rows["coarse.nii.gz"]["reason"]
    assert rows["coarse.nii.gz"]["status"] == "error" and rows["good.nii.gz"]["status"] == "ok"
    assert reason.startswith(f"{big}: resampling 16x16x16 voxels at 400x400x400 mm to 2x2x2 mm needs a "
                             "3200x3200x3200 grid"), reason
    assert reason.endswith("over resample.max_voxels 134217728")


@pytest.mark.parametrize("value", [0.0, 700.0])
def test_blank_volume_is_an_error(run, tmp_path, value):
    blank = write(np.full((20, 20, 20), value, np.float32), tmp_path / "blank.nii.gz")
    (rec,) = run_score(run, [blank], tmp_path / "out.csv")
    assert rec["status"] == "error" and rec["reason"] == f"{blank}: blank volume: every voxel is {value:g}; " \
                                                         "nothing to classify"


# ------------------------------------------------------------------------------------------------ fail safe
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


def test_nan_threshold_refuses_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from common.cli import app

    bad = make_run(tmp_path / "bad", {**META, "threshold": float("nan")})
    study = write(phantom(), tmp_path / "study.nii.gz")
    result = CliRunner().invoke(app, ["score", str(bad), str(study), "--out", str(tmp_path / "o.csv")])
    assert result.exit_code != 0 and isinstance(result.exception, InputError)
    assert "threshold nan must be a finite number" in str(result.exception)


@pytest.mark.parametrize("weights", [(float("nan"), 0.0), (float("inf"), 0.0), (float("-inf"), 0.0),
                                     (float("-inf"), float("inf"))])
def test_non_finite_logits_are_review_never_a_call(tmp_path, weights):
    nan_run = make_run(tmp_path / "nan", weights=weights)
    study = write(phantom(), tmp_path / "study.nii.gz")
    (rec,) = run_score(nan_run, [study], tmp_path / "out.jsonl")
    assert rec["status"] == "ok" and rec["verdict"] == "REVIEW"
    assert rec["label"] is None and rec["score"] is None and rec["probabilities"] is None
    assert "not finite" in rec["reason"]


def test_decision_rule_never_calls_a_non_finite_row():
    binary = DecisionRule.from_metadata(META)
    probs = np.array([[np.nan, np.nan], [0.1, 0.9], [0.9, 0.1], [np.inf, 0.0]])
    assert binary.verdicts(probs) == ["REVIEW", "positive", "negative", "REVIEW"]
    assert binary.predicted_labels(probs) == [None, "lesion", "normal", None]
    p = binary.probabilities(np.array([[-np.inf, 0.0], [np.nan, 1.0], [0.0, 3.0]]))
    assert np.isnan(p[:2]).all() and binary.verdicts(p) == ["REVIEW", "REVIEW", "positive"]
    multi = DecisionRule(labels=["a", "b", "c"], positive_label="c", threshold=0.5, review_band=0.2, temperature=1.0)
    probs3 = np.array([[np.nan, 0.5, 0.5], [0.05, 0.05, 0.9]])
    assert multi.verdicts(probs3) == ["REVIEW", "c"] and multi.predicted_labels(probs3) == [None, "c"]


def test_decision_rule_keeps_old_runs_defaults():
    rule = DecisionRule.from_metadata({"labels": LABELS})  # metadata from before thresholds were stored
    assert (rule.positive_label, rule.threshold, rule.review_band, rule.temperature) == ("lesion", 0.5, 0.0, 1.0)
