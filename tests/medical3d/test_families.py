"""Phantom families: the registry, how the families differ, what they promise about lesions and fit, the table
that lists them, and ``vsuite med synth --family`` / ``--list-families`` through typer's runner."""

from __future__ import annotations

import json
import re
from itertools import combinations

import numpy as np
import pytest
from typer.testing import CliRunner

from common.errors import InputError
from medical3d.cli import app
from medical3d.families import FAMILIES, FORMATS, describe_families, family_names, get_family, resolve_modality
from medical3d.synth_anatomy import draw, draw_lesion, head_layers, torso_layers

runner = CliRunner()
SECTIONS = ("anatomy", "lesion", "acquisition", "storage")


def test_registry_names_and_modalities():
    names = family_names()
    assert names[0] == "classic" and all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names)
    mri_only = [n for n in names if FAMILIES[n].acquisition.modalities == ("mri",)]
    ct_only = [n for n in names if FAMILIES[n].acquisition.modalities == ("ct",)]
    assert len(mri_only) >= 4 and len(ct_only) >= 2
    assert FAMILIES["classic"].acquisition.modalities == ("mri", "ct")
    assert get_family("ct_head") is FAMILIES["ct_head"] and get_family(FAMILIES["subtle"]) is FAMILIES["subtle"]


def test_unknown_family_names_the_known_ones():
    with pytest.raises(InputError) as err:
        get_family("brain")
    assert "'brain'" in str(err.value) and all(n in str(err.value) for n in FAMILIES)


def test_modality_must_be_one_the_family_renders():
    assert resolve_modality(FAMILIES["classic"], None) == "mri"
    assert resolve_modality(FAMILIES["classic"], "ct") == "ct"
    assert resolve_modality(FAMILIES["ct_liver"], None) == "ct" == FAMILIES["ct_liver"].modality
    with pytest.raises(InputError, match="ct_liver.*'mri'"):
        resolve_modality(FAMILIES["ct_liver"], "mri")


def test_families_differ_from_each_other_along_several_axes():
    for a, b in combinations(FAMILIES.values(), 2):
        differing = [s for s in SECTIONS if getattr(a, s) != getattr(b, s)]
        assert len(differing) >= 2, (a.name, b.name, differing)
    signs = {f.lesion.sign for f in FAMILIES.values()}
    shapes = {s for f in FAMILIES.values() for s in f.lesion.shapes}
    assert signs == {"bright", "dark", "either"} and shapes == {"sphere", "ellipsoid", "lobulated"}
    assert any(f.acquisition.slice_mm[0] >= 4.0 for f in FAMILIES.values())  # a thick-slice family
    assert {f.anatomy.torso.target for f in FAMILIES.values() if "torso" in f.anatomy.kinds} > {"liver"}


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "classic"])
def test_new_family_lesions_stay_detectable_inside_the_host_and_the_crop(name):
    """Radius >= 2 voxels at the 2 mm working spacing; every drawn lesion sits inside its host organ; the body
    fits the 192 mm crop; storage weights are a distribution over the known formats."""
    fam = FAMILIES[name]
    assert fam.lesion.radius_mm[0] >= 4.0 and fam.lesion.contained and fam.paired and fam.salt > 0
    assert len(fam.storage.weights) == len(FORMATS) and abs(sum(fam.storage.weights) - 1.0) < 1e-9
    modality = fam.acquisition.modalities[0]
    for kind in fam.anatomy.kinds:
        for i in range(20):
            rng = np.random.default_rng([i, 1])
            scale = draw(rng, fam.anatomy.scale)
            layers, parts = (head_layers(rng, scale, fam.anatomy.head) if kind == "head"
                             else torso_layers(rng, scale, fam.anatomy.torso, modality))
            assert max(float(np.max(np.abs(c) + r)) for _, c, r, _ in layers) < 96.0
            lesion = draw_lesion(rng, fam.lesion, parts, {"wm": 1.0, "liver": 1.0, "spleen": 1.0}, "mri",
                                 fam.lesion.radius_mm)
            _, centre, radii = parts["organ"]
            rho = np.linalg.norm((lesion.centre - centre) / radii)
            assert (1 - rho) * radii.min() >= lesion.extent, (kind, i)  # the whole lesion is in the organ


def test_describe_families_has_one_row_in_words_per_family():
    rows = describe_families()
    assert [r["name"] for r in rows] == family_names()
    for r in rows:
        assert all(isinstance(r[k], str) and r[k] for k in ("modality", "anatomy", "lesion", "acquisition",
                                                            "storage"))
    by_name = {r["name"]: r for r in rows}
    assert "dark" in by_name["ct_liver"]["lesion"] and "HU" in by_name["ct_liver"]["lesion"]
    assert "spleen" in by_name["abdomen_mri"]["anatomy"] and "dicom" in by_name["ct_head"]["storage"]


def test_cli_lists_the_families_without_an_output_folder():
    res = runner.invoke(app, ["synth", "--list-families"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert all(name in res.output for name in FAMILIES)


def test_cli_synth_family_defaults_to_its_modality(tmp_path):
    res = runner.invoke(app, ["synth", str(tmp_path / "d"), "--family", "ct_head", "--cases", "2", "--size", "24"])
    assert res.exit_code == 0, res.output
    specs = [json.loads(line) for line in (tmp_path / "d" / "cases.jsonl").read_text().splitlines()]
    assert [(s["family"], s["modality"], s["kind"]) for s in specs] == [("ct_head", "ct", "head")] * 2
    assert "2 ct_head ct studies" in res.output


def test_cli_synth_family_errors(tmp_path):
    res = runner.invoke(app, ["synth", str(tmp_path / "d"), "--family", "brain"])
    assert res.exit_code == 2 and "brain_mixed" in res.output  # the closed set shows its choices
    res = runner.invoke(app, ["synth", str(tmp_path / "d"), "--family", "brain_mixed", "--modality", "ct"])
    assert isinstance(res.exception, InputError) and "brain_mixed" in str(res.exception)
    assert "'ct'" in str(res.exception) and not (tmp_path / "d").exists()
    res = runner.invoke(app, ["synth", str(tmp_path / "d"), "--family", "subtle", "--lesion-max", "3"])
    assert isinstance(res.exception, InputError) and "--lesion-min 4.0" in str(res.exception)


def test_cli_lesion_min_alone_overrides_the_family_range(tmp_path):
    res = runner.invoke(app, ["synth", str(tmp_path / "d"), "--cases", "2", "--size", "24", "--lesion-min", "6"])
    assert res.exit_code == 0, res.output
    specs = [json.loads(line) for line in (tmp_path / "d" / "cases.jsonl").read_text().splitlines()]
    assert [s["lesion_radius_mm"] for s in specs if s["label"] == "lesion"] == [6.0]  # classic max is 6
    assert all(s["family"] == "classic" and s["modality"] == "mri" for s in specs)
