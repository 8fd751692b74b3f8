"""Synthetic studies: deterministic per seed, balanced labels, lesion specs that match the labels."""

from __future__ import annotations

import csv
import json

import numpy as np
import SimpleITK as sitk

from medical3d.io import read_study
from medical3d.synth import synth_dataset


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_synth_is_deterministic_and_balanced(tmp_path):
    a = synth_dataset(tmp_path / "a", cases=6, modality="ct", seed=4, size=24)
    b = synth_dataset(tmp_path / "b", cases=6, modality="ct", seed=4, size=24)
    rows = _rows(a)
    assert [r["label"] for r in rows].count("lesion") == 3
    assert rows == _rows(b)
    for r in rows:
        img_a, _ = read_study(a.parent / r["path"])
        img_b, _ = read_study(b.parent / r["path"])
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img_a), sitk.GetArrayFromImage(img_b))
        assert img_a.GetDirection() == img_b.GetDirection()
    specs = [json.loads(line) for line in (a.parent / "cases.jsonl").read_text().splitlines()]
    assert all((s["lesion_radius_mm"] is not None) == (s["label"] == "lesion") for s in specs)
    other = synth_dataset(tmp_path / "c", cases=6, modality="ct", seed=5, size=24)
    first = _rows(other)[0]["path"]
    assert not np.array_equal(sitk.GetArrayFromImage(read_study(other.parent / first)[0]),
                              sitk.GetArrayFromImage(read_study(a.parent / rows[0]["path"])[0]))
