"""Synthetic studies: deterministic per seed, balanced labels, lesion specs that match the labels, every phantom
family readable and preprocessable, and lesion specs that say where and which way the lesion really is."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from common.config import config_section
from common.errors import InputError
from medical3d.config import DEFAULT_CONFIG, PreprocessConfig
from medical3d.families import FAMILIES, get_family
from medical3d.io import read_study
from medical3d.preprocess import preprocess_study
from medical3d.synth import render_case, synth_dataset

SIZE = 32
SEED = 2


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _specs(manifest) -> list[dict]:
    return [json.loads(line) for line in (manifest.parent / "cases.jsonl").read_text().splitlines()]


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


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


def _check_specs(specs: list[dict], fam, modality: str) -> None:
    """Balanced labels, body kinds cycling within each label, lesion fields present exactly for lesions."""
    labels = [s["label"] for s in specs]
    assert labels.count("lesion") == labels.count("normal") == len(specs) // 2
    for lab in ("lesion", "normal"):
        kinds = [s["kind"] for s in specs if s["label"] == lab]
        assert sorted(set(kinds)) == sorted(fam.anatomy.kinds)  # 2 studies per label cover every kind
    for s in specs:
        assert s["family"] == fam.name and s["modality"] == modality
        lesion_keys = ("lesion_center_mm", "lesion_radius_mm", "lesion_shape", "lesion_sign", "lesion_contrast",
                       "host_tissue")
        assert all((s[k] is not None) == (s["label"] == "lesion") for k in lesion_keys), s
        if s["label"] == "lesion":
            assert fam.lesion.radius_mm[0] <= s["lesion_radius_mm"] <= fam.lesion.radius_mm[1]
            assert s["lesion_shape"] in fam.lesion.shapes
            assert s["lesion_sign"] in (("bright", "dark") if fam.lesion.sign == "either" else (fam.lesion.sign,))
            brighter = s["lesion_contrast"] > (1.0 if modality == "mri" else 0.0)
            assert brighter == (s["lesion_sign"] == "bright")


def _inside(image: sitk.Image, point: list[float]) -> bool:
    idx = np.asarray(image.TransformPhysicalPointToContinuousIndex(point))
    return bool(np.all(idx >= -0.5) and np.all(idx <= np.asarray(image.GetSize()) - 0.5))


def _check_lesion_is_where_the_spec_says(image: sitk.Image, spec: dict, fam, size: int) -> None:
    """Render the study's normal twin (a paired family draws the lesion from its own stream, so nothing else
    differs): at the recorded centre the stored study departs from it in the recorded direction, and nowhere
    far from the lesion does it differ at all."""
    twin, _ = render_case(spec["index"], SEED, "normal", spec["modality"], kind=spec["kind"], size=size,
                          dicom=spec["format"] == "dicom", family=fam)
    np.testing.assert_allclose(twin.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(twin.GetOrigin(), image.GetOrigin(), atol=1e-3)
    diff = _array(image).astype(np.int32) - _array(twin).astype(np.int32)
    x, y, z = image.TransformPhysicalPointToIndex(spec["lesion_center_mm"])
    assert diff[z, y, x] > 0 if spec["lesion_sign"] == "bright" else diff[z, y, x] < 0, spec
    # A change of 1 is a rounding flip from the far tail of the logistic edge; anything more is lesion. The edge
    # scale is the partial-volume ramp or margin / 4.4, and the tail falls below 1 / 1000 within 7 scales.
    changed = np.argwhere(np.abs(diff) > 1)  # (n, 3) z, y, x
    pts = np.array([image.TransformIndexToPhysicalPoint([int(v) for v in idx[::-1]]) for idx in changed])
    dist = np.linalg.norm(pts - np.asarray(spec["lesion_center_mm"]), axis=1)
    edge = max(0.3 * float(np.mean(image.GetSpacing())), spec["lesion_margin_mm"] / 4.4)
    reach = spec["lesion_extent_mm"] + 7 * edge + 0.87 * max(image.GetSpacing())
    assert dist.max() <= reach, (dist.max(), reach)


def _check_bright_lesion_against_its_shell(image: sitk.Image, spec: dict) -> None:
    """Classic lesions are bright: the centre voxel is above the median of a shell of host tissue around it."""
    arr = _array(image).astype(np.float64)
    k, j, i = np.meshgrid(*(np.arange(n) for n in arr.shape), indexing="ij")
    idx = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)
    pts = idx @ (np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())).T
    dist = np.linalg.norm(pts + np.asarray(image.GetOrigin()) - np.asarray(spec["lesion_center_mm"]), axis=1)
    r = spec["lesion_radius_mm"]
    shell = arr.ravel()[(dist > r + 8.0) & (dist < r + 16.0)]
    x, y, z = image.TransformPhysicalPointToIndex(spec["lesion_center_mm"])
    assert arr[z, y, x] > np.median(shell), spec


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_generates_reads_back_and_preprocesses(tmp_path, name):
    fam = get_family(name)
    manifest = synth_dataset(tmp_path / name, 4, None, SEED, family=name, size=SIZE)
    modality = fam.acquisition.modalities[0]
    specs = _specs(manifest)
    _check_specs(specs, fam, modality)
    # N4 is slow; one MRI family keeps it to show the whole chain runs on the new phantoms.
    cfg = config_section(PreprocessConfig, DEFAULT_CONFIG, "preprocess", modality=modality,
                         n4={"enabled": name == "brain_mixed"}, crop={"size": [32, 32, 32]},
                         resample={"spacing": [6.0, 6.0, 6.0]})
    for spec in specs:
        path = manifest.parent / spec["path"]
        image, _ = read_study(path)
        assert list(image.GetSize()) == spec["size"]
        result = preprocess_study(path, cfg)
        arr = result.array()
        assert arr.shape == (1, 32, 32, 32) and np.isfinite(arr).all()
        if spec["label"] != "lesion":
            continue
        assert _inside(image, spec["lesion_center_mm"])
        assert _inside(result.image, spec["lesion_center_mm"]), "the crop around the body lost the lesion"
        if fam.paired:
            _check_lesion_is_where_the_spec_says(image, spec, fam, SIZE)
        else:
            _check_bright_lesion_against_its_shell(image, spec)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_is_deterministic_per_seed(name):
    a, spec_a = render_case(1, 3, "lesion", family=name, size=24)
    b, spec_b = render_case(1, 3, "lesion", family=name, size=24)
    c, _ = render_case(1, 4, "lesion", family=name, size=24)
    np.testing.assert_array_equal(_array(a), _array(b))
    assert spec_a == spec_b and a.GetDirection() == b.GetDirection()
    assert _array(a).shape != _array(c).shape or not np.array_equal(_array(a), _array(c))


def test_the_salt_makes_families_drawn_with_one_seed_independent():
    fam = get_family("brain_mixed")
    a, _ = render_case(0, 1, "lesion", family=fam, size=24)
    b, _ = render_case(0, 1, "lesion", family=replace(fam, salt=fam.salt + 100), size=24)
    assert _array(a).shape != _array(b).shape or not np.array_equal(_array(a), _array(b))


def test_lesion_radius_override_and_modality_conflict(tmp_path):
    manifest = synth_dataset(tmp_path / "r", 2, None, 0, family="ct_head", size=24, lesion_radius_mm=(7.0, 7.0))
    assert [s["lesion_radius_mm"] for s in _specs(manifest) if s["label"] == "lesion"] == [7.0]
    with pytest.raises(InputError, match="brain_mixed.*mri.*'ct'"):
        synth_dataset(tmp_path / "m", 2, "ct", 0, family="brain_mixed", size=24)
    assert not (tmp_path / "m").exists()
    with pytest.raises(InputError, match="need 0 < min <= max"):
        synth_dataset(tmp_path / "m", 2, None, 0, size=24, lesion_radius_mm=(5.0, 3.0))


def test_classic_family_by_name_or_object_is_the_default_generator():
    default, spec = render_case(2, 6, "lesion", "ct", size=24)
    named, spec_named = render_case(2, 6, "lesion", "ct", size=24, family="classic")
    obj, _ = render_case(2, 6, "lesion", "ct", size=24, family=replace(get_family("classic")))
    np.testing.assert_array_equal(_array(default), _array(named))
    np.testing.assert_array_equal(_array(default), _array(obj))
    assert spec == spec_named and spec.family == "classic" and spec.lesion_shape == "sphere"
