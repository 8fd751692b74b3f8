"""Image-level datasets (industrial_qc.parts): class folders with and without split folders, CSV manifests, the good
class, drawn splits (stratified, seeded), every problem named by file or class; the whole-part preprocessing."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.errors import InputError
from industrial_qc.parts import data_kind, fit_square, load_parts, load_pixels, to_input
from industrial_qc.synth import SynthConfig, split_counts
from industrial_qc.synth_parts import synthesize_parts

GOOD = ["good", "ok"]
FRACTIONS = (0.7, 0.15, 0.15)


def load(path, seed: int = 0, good=GOOD):
    return load_parts(path, good, FRACTIONS, seed)


def write_image(path: Path, value: int = 100, size: tuple[int, int] = (40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((*size, 3), value, np.uint8)
    img[5:9, 5:9] = 255 - value
    cv2.imwrite(str(path), img)
    return path


def class_tree(root: Path, counts: dict[str, int]) -> Path:
    for cls, n in counts.items():
        for i in range(n):
            write_image(root / cls / f"{cls}_{i}.png", 20 + 10 * i)
    return root


@pytest.fixture(scope="module")
def unsplit(tmp_path_factory) -> Path:
    """Generated parts in class folders without split folders (every class 8 or more images)."""
    out = tmp_path_factory.mktemp("parts_unsplit")
    return synthesize_parts(out, SynthConfig(images=40, size=64, seed=1, image_format="png"), "folders",
                            splits=False).data


def test_data_kind(tmp_path):
    assert data_kind(tmp_path / "data.yaml") == "detect"  # detection checks its own file
    (tmp_path / "m.csv").write_text("path,label\n")
    assert data_kind(tmp_path / "m.csv") == "csv" and data_kind(tmp_path) == "folders"
    with pytest.raises(InputError, match="not found"):
        data_kind(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="notes.txt: expected a data.yaml"):
        data_kind(tmp_path / "notes.txt")


def test_class_folders_without_splits_are_split_stratified_and_seeded(unsplit):
    ds = load(unsplit)
    assert ds.labels == ["good", "crack", "pit", "scratch", "stain"] and ds.good_label == "good"
    assert ds.made_splits == ["train", "val", "test"]
    total = {c: sum(ds.counts(s)[c] for s in ("train", "val", "test")) for c in ds.labels}
    for cls, n in total.items():  # per class: 70 / 15 / 15 %, every split holds every class
        assert ds.counts("val")[cls] == ds.counts("test")[cls] == max(1, round(n * 0.15))
        assert ds.counts("train")[cls] == n - 2 * ds.counts("val")[cls]
    assert sum(len(ds.split(s)) for s in ("train", "val", "test")) == 40
    again, other = load(unsplit), load(unsplit, seed=5)
    assert again.splits == ds.splits and other.splits != ds.splits
    assert again.fingerprint() == ds.fingerprint() != other.fingerprint()


def test_split_folders_are_kept_and_train_only_is_split(tmp_path):
    synthesize_parts(tmp_path / "d", SynthConfig(images=50, size=64, seed=2, image_format="png"), "folders")
    ds = load(tmp_path / "d")
    assert ds.made_splits == [] and {s: len(ds.split(s)) for s in ds.splits} == split_counts(50, 1 / 7, 2 / 7)
    assert all(p.parent.parent.name == "val" for p in ds.paths("val"))
    shutil.rmtree(tmp_path / "d" / "val")
    ds = load(tmp_path / "d")  # no val/: val drawn from train/, test/ as given
    assert ds.made_splits == ["train", "val"] and len(ds.split("test")) == 14
    assert all(p.parent.parent.name == "train" for p in ds.paths("val"))


def test_csv_manifest_with_and_without_splits(tmp_path):
    rep = synthesize_parts(tmp_path / "c", SynthConfig(images=40, size=64, seed=2, image_format="png"), "csv")
    assert rep.data == tmp_path / "c" / "labels.csv"
    ds = load(rep.data)
    assert ds.made_splits == [] and len(ds.split("val")) == 6 and all(p.is_file() for p in ds.paths("train"))
    rows = rep.data.read_text().splitlines()
    assert rows[0] == "path,label,split" and rows[1].startswith("images/")
    # no header, no split column: paths relative to the CSV, splits drawn
    (tmp_path / "c" / "plain.csv").write_text("\n".join(",".join(r.split(",")[:2]) for r in rows[1:]) + "\n")
    plain = load(tmp_path / "c" / "plain.csv")
    assert plain.made_splits == ["train", "val", "test"] and sum(map(len, plain.splits.values())) == 40
    # rows without a split among rows with one: drawn into train and the splits nobody gave
    mixed = [rows[0], *(r if r.endswith("val") else r.rsplit(",", 1)[0] + "," for r in rows[1:])]
    (tmp_path / "c" / "mixed.csv").write_text("\n".join(mixed) + "\n")
    ds = load(tmp_path / "c" / "mixed.csv")
    assert ds.made_splits == ["train", "test"] and len(ds.split("val")) == 6


def test_the_good_class_is_the_first_good_label_present(tmp_path):
    class_tree(tmp_path / "a", {"OK": 3, "dent": 3})
    ds = load(tmp_path / "a")
    assert ds.good_label == "OK" and ds.labels == ["OK", "dent"]
    class_tree(tmp_path / "b", {"pass": 3, "dent": 3, "scratch": 3})
    with pytest.raises(InputError) as err:
        load(tmp_path / "b")
    assert "['dent', 'pass', 'scratch']" in str(err.value) and "part.good_labels" in str(err.value)
    assert load(tmp_path / "b", good=["pass"]).labels == ["pass", "dent", "scratch"]


def test_folder_errors_name_every_file_and_class(tmp_path):
    root = class_tree(tmp_path / "d", {"good": 4, "crack": 4})
    (root / "empty").mkdir()
    (root / "crack" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError) as err:
        load(root)
    msg = str(err.value)
    assert "class 'empty' has no images" in msg and f"{root / 'crack' / 'broken.png'}: unreadable" in msg
    class_tree(tmp_path / "one", {"good": 4})
    with pytest.raises(InputError, match=r"1 class \['good'\]; a part classifier needs at least two"):
        load(tmp_path / "one")


def test_a_class_in_one_split_only_is_named(tmp_path):
    class_tree(tmp_path / "s" / "train", {"good": 3, "crack": 3, "pit": 2})
    class_tree(tmp_path / "s" / "val", {"good": 2, "crack": 2})
    with pytest.raises(InputError) as err:
        load(tmp_path / "s")
    assert "class 'pit' has images only in split 'train', none in val" in str(err.value)
    class_tree(tmp_path / "u", {"good": 4, "crack": 1})  # one image: it cannot be in train and val
    with pytest.raises(InputError, match="class 'crack' has images only in split 'train', none in val"):
        load(tmp_path / "u")


def test_csv_errors_name_the_line(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\na.png,good,train\nmissing.png,good,val\nb.png,crack,holdout\n"
                        "a.png\n")
    with pytest.raises(InputError) as err:
        load(manifest)
    msg = str(err.value)
    assert f"{manifest}:3: image missing.png not found" in msg
    assert f"{manifest}:4: unknown split 'holdout'" in msg and f"{manifest}:5: expected path,label[,split]" in msg


def test_fit_square_keeps_the_aspect_and_pads():
    img = np.full((30, 60, 3), 200, np.uint8)
    sq = fit_square(img, 32)
    assert sq.shape == (32, 32, 3) and sq.dtype == np.uint8
    assert (sq[8:24] == 200).all() and (sq[:8] == 114).all() and (sq[24:] == 114).all()
    assert fit_square(np.zeros((64, 64, 3), np.uint8), 64).shape == (64, 64, 3)
    x = to_input(np.stack([sq, sq]), "imagenet")
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    per = to_input(sq[None], "per_image")
    assert abs(float(per[0, 0].mean())) < 1e-4 and abs(float(per[0, 0].std()) - 1) < 1e-3


def test_load_pixels_decodes_once_and_names_bad_files(tmp_path):
    good = write_image(tmp_path / "g.png", size=(20, 40))
    arr = load_pixels([good, good], 16)
    assert arr.shape == (2, 16, 16, 3) and arr.dtype == np.uint8
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match="bad.png"):
        load_pixels([good, bad], 16)

