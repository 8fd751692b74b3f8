"""Synthetic dataset writing: same seed, same files; the Ultralytics layout with good parts; split sizes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from industrial_qc.data import load_dataset
from industrial_qc.synth import DEFECT_CLASSES, SynthConfig, split_counts, synthesize


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "data.yaml":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_synth_is_deterministic_per_seed(tmp_path):
    cfg = SynthConfig(images=8, size=64, seed=11, image_format="png")
    a = synthesize(tmp_path / "a", cfg)
    b = synthesize(tmp_path / "b", cfg)
    synthesize(tmp_path / "c", SynthConfig(images=8, size=64, seed=12, image_format="png"))
    assert a.counts == b.counts
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_synth_layout_loads_and_has_good_parts(tmp_path):
    rep = synthesize(tmp_path / "ds", SynthConfig(images=40, size=160, seed=0))
    data = yaml.safe_load(rep.data_yaml.read_text())
    assert data["names"] == list(DEFECT_CLASSES)
    assert {"path", "train", "val", "test"} <= set(data)
    ds = load_dataset(rep.data_yaml)
    assert set(ds.splits) == {"train", "val", "test"}
    samples = [s for split in ds.splits.values() for s in split]
    assert len(samples) == 40
    good = [s for s in samples if not s.defective]
    assert 0.15 <= len(good) / len(samples) <= 0.35  # about a quarter defect-free
    assert all(s.label is None for s in good)  # good part = no label file
    boxes = np.concatenate([s.boxes for s in samples if s.defective])
    assert set(boxes[:, 0].astype(int)) <= set(range(len(DEFECT_CLASSES)))
    assert (boxes[:, 1:] >= 0).all() and (boxes[:, 1:] <= 1).all()
    assert boxes[:, 3:].max(axis=1).min() < 0.05  # small defects exist (down to a few % of the side)


def test_split_counts():
    assert split_counts(700, 1 / 7, 2 / 7) == {"train": 400, "val": 100, "test": 200}
    with pytest.raises(ValueError):
        split_counts(2, 0.2, 0.2)

