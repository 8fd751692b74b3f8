"""Manifests, folder-per-class datasets, stratified splits and the preprocessing cache."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from common.config import config_section
from common.errors import InputError
from medical3d.config import DEFAULT_CONFIG, PreprocessConfig
from medical3d.data import PreprocessCache, assign_splits, load_cases, prepare_cases


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_stratified_split_by_seed(tmp_path):
    lines = ["path,label"] + [f"s{i}.nii.gz,{'lesion' if i % 2 else 'normal'}" for i in range(40)]
    (tmp_path / "m.csv").write_text("\n".join(lines))
    cases = assign_splits(load_cases(tmp_path / "m.csv"), (0.6, 0.15, 0.25), seed=1)
    for label in ("lesion", "normal"):
        splits = [c.split for c in cases if c.label == label]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (12, 3, 5)
    again = assign_splits(load_cases(tmp_path / "m.csv"), (0.6, 0.15, 0.25), seed=1)
    assert [c.split for c in cases] == [c.split for c in again]
    assert [c.split for c in cases] != [c.split for c in assign_splits(load_cases(tmp_path / "m.csv"),
                                                                       (0.6, 0.15, 0.25), seed=2)]


def test_manifest_errors_name_file_and_line(tmp_path):
    (tmp_path / "bad.csv").write_text("path,label,split\na.nii.gz,lesion,train\nb.nii.gz,normal,holdout\n")
    with pytest.raises(InputError, match=r"bad\.csv:3: split 'holdout'"):
        load_cases(tmp_path / "bad.csv")
    (tmp_path / "nohdr.csv").write_text("file,class\na,b\n")
    with pytest.raises(InputError, match=r"nohdr\.csv:1: header"):
        load_cases(tmp_path / "nohdr.csv")


def test_folder_per_class(med_tiny_data):
    root = med_tiny_data.parent
    classes = root / "by_class"
    for row in _rows(med_tiny_data):
        (classes / row["label"]).mkdir(parents=True, exist_ok=True)
        src = root / row["path"]
        (classes / row["label"] / src.name).symlink_to(src, target_is_directory=src.is_dir())
    cases = load_cases(classes)
    assert len(cases) == 12 and {c.label for c in cases} == {"lesion", "normal"}


def test_cache_runs_preprocessing_once_per_study_and_config(med_tiny_data, tmp_path):
    cases = load_cases(med_tiny_data)[:3]
    cfg = config_section(PreprocessConfig, DEFAULT_CONFIG, "preprocess", n4={"shrink_factor": 2, "iterations": [10]},
                         resample={"spacing": [6.0, 6.0, 6.0]}, crop={"size": [32, 32, 32]})
    cache = PreprocessCache(tmp_path / "cache")
    first = prepare_cases(cases, cfg, cache)
    assert cache.misses == 3 and cache.hits == 0 and not first.failures
    again = prepare_cases(cases, cfg, PreprocessCache(tmp_path / "cache"))
    np.testing.assert_array_equal(first.arrays[0], again.arrays[0])
    other = PreprocessCache(tmp_path / "cache")
    prepare_cases(cases[:1], cfg.model_copy(update={"modality": "ct"}), other)
    assert other.misses == 1  # another config is another key
    second = PreprocessCache(tmp_path / "cache")
    prepare_cases(cases, cfg, second)
    assert second.hits == 3 and second.misses == 0
