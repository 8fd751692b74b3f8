"""Batch scoring (``medical3d.score.score``, what ``vsuite score`` runs): bad studies through the real scorer.

Every input is answered by exactly one record (a study by one record, an input holding none by an error row naming
it); incomplete or blank volumes and impossible resampling grids are errors and the batch goes on. The model is a
3-node ONNX graph (``tests/medical3d/helpers.py``), so the whole file runs in seconds without training.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medical3d.writers import write_dicom_series
from tests.medical3d.helpers import by_name, cut, make_run, phantom, run_score, write


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
