"""Dataset loading and validation: errors name file and line; polygons, repeats, float TIFFs, good parts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from common.errors import InputError
from industrial_qc.data import (
    Sample,
    defect_scale,
    label_path_for,
    load_dataset,
    read_image,
    small_defect_warning,
)
from industrial_qc.synth import SynthConfig, synthesize


@pytest.fixture
def small_ds(tmp_path) -> Path:
    rep = synthesize(tmp_path / "ds", SynthConfig(images=10, size=64, seed=1, image_format="png"))
    return rep.data_yaml


def _first_label(yaml_path: Path, split: str = "train") -> Path:
    return sorted((yaml_path.parent / "labels" / split).glob("*.txt"))[0]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("0 0.5 0.5 0.1", "expected 5 values"),
        ("0 0.5 zero 0.1 0.1", "non-numeric"),
        ("7 0.5 0.5 0.1 0.1", "class id 7 >= 4 classes in data.yaml"),
        ("-1 0.5 0.5 0.1 0.1", "not a non-negative integer"),
        ("1 1.5 0.5 0.1 0.1", "coordinates outside [0, 1]: cx=1.5"),
        ("2 0.5 0.5 0.1 -0.2", "coordinates outside [0, 1]: h=-0.2"),
        ("0 0.5 0.5 0.1 0.1 0.2", "expected 5 values"),
        ("0 0.1 0.1 0.2 0.1 0.2 0.2 0.3", "a polygon row needs class and x y pairs (an odd count), got 8"),
        ("1 0.1 0.1 0.2 0.1 1.2 0.2", "coordinates outside [0, 1]: point 3 (1.2, 0.2)"),
        ("5 0.1 0.1 0.2 0.1 0.2 0.2", "class id 5 >= 4 classes"),
    ],
)
def test_bad_label_line_names_file_and_line(small_ds, line, expected):
    lbl = _first_label(small_ds)
    n_lines = len(lbl.read_text().splitlines())
    with open(lbl, "a") as f:
        f.write(line + "\n")
    with pytest.raises(InputError) as err:
        load_dataset(small_ds)
    msg = str(err.value)
    assert f"{lbl}:{n_lines + 1}: " in msg
    assert expected in msg


def test_polygon_rows_become_the_box_around_their_points(small_ds):
    """Ultralytics' segment rows (class x1 y1 x2 y2 ...) are read as the box around the polygon, as Ultralytics
    reads them for detection; a file mixing box and polygon rows is refused, naming the file and line."""
    lbl = _first_label(small_ds)
    lbl.write_text("3 0.2 0.1 0.3 0.25 0.2 0.4 0.1 0.25\n1 0.6 0.6 0.7 0.6 0.65 0.7\n")
    sample = next(s for s in load_dataset(small_ds).split("train") if s.label == lbl)
    np.testing.assert_allclose(sample.boxes, [[3, 0.2, 0.25, 0.2, 0.3], [1, 0.65, 0.65, 0.1, 0.1]], atol=1e-9)
    with open(lbl, "a") as f:
        f.write("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(InputError, match=rf"{lbl}:3: mixes box rows .* and polygon rows \(from line 1\)"):
        load_dataset(small_ds)


def test_defect_scale_is_measured_at_the_detector_input(tmp_path):
    """Box sides as the detector sees them (image fitted into imgsz), and the imgsz at which the smallest tenth
    would reach 6 px, never above the largest image side."""
    import cv2

    wide = tmp_path / "wide.png"
    cv2.imwrite(str(wide), np.zeros((200, 400), np.uint8))  # 400 x 200: fitted into 100 it is shrunk 4x
    box = Sample(wide, wide, np.array([[0, 0.5, 0.5, 0.02, 0.01]]))  # 8 x 2 px -> 2 px long at imgsz 100
    good = Sample(wide, None, np.zeros((0, 5)))
    scale = defect_scale([box, good], 100)
    assert scale == {"defects": 1, "p10": 2.0, "median": 2.0, "imgsz": 100, "suggested_imgsz": 320}
    assert defect_scale([box], 400)["suggested_imgsz"] == 400  # 8 px already
    tiny = Sample(wide, wide, np.array([[0, 0.5, 0.5, 0.002, 0.004]]))  # under a pixel even at full size
    assert defect_scale([tiny], 100)["suggested_imgsz"] == 416  # capped at the image side (a multiple of 32)
    assert defect_scale([good], 100)["p10"] is None
    assert small_defect_warning(defect_scale([good], 100)) is None
    assert small_defect_warning(defect_scale([box], 400)) is None  # 8 px
    assert "--set detector.imgsz=320" in small_defect_warning(scale)
    assert small_defect_warning(defect_scale([tiny], 416)).endswith("The images are no larger than that.")


def test_a_float_tiff_dataset_validates(small_ds):
    """Dataset validation reads what the line reads: a float TIFF (which OpenCV's quick reduced read refuses)
    is a readable part, garbage is not."""
    import cv2

    img = sorted((small_ds.parent / "images" / "val").glob("*.png"))[0]
    pixels = cv2.imread(str(img), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    img.unlink()
    cv2.imwrite(str(img.with_suffix(".tiff")), pixels)
    assert any(s.image.suffix == ".tiff" for s in load_dataset(small_ds).split("val"))
    img.with_suffix(".tiff").write_bytes(b"garbage")
    with pytest.raises(InputError, match="unreadable or empty image"):
        load_dataset(small_ds)


def test_a_repeated_label_row_is_one_defect(small_ds):
    """As Ultralytics reads it: an exact repeat (box or polygon row) counts once; distinct polygons with the same
    box both count."""
    lbl = _first_label(small_ds)
    lbl.write_text("0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1\n0 0.50 0.5 0.1 0.1\n")
    sample = next(s for s in load_dataset(small_ds).split("train") if s.label == lbl)
    np.testing.assert_array_equal(sample.boxes[:, 0], [0, 1])
    lbl.write_text("2 0.1 0.1 0.3 0.1 0.3 0.3\n2 0.1 0.1 0.3 0.1 0.3 0.3\n2 0.1 0.1 0.3 0.3 0.1 0.3\n")
    sample = next(s for s in load_dataset(small_ds).split("train") if s.label == lbl)
    assert len(sample.boxes) == 2


def test_every_problem_is_reported(small_ds):
    labels = sorted((small_ds.parent / "labels" / "train").glob("*.txt"))[:2]
    for lbl in labels:
        lbl.write_text("0 0.5 0.5 0.1 0.1\n9 0.5 0.5 0.1 0.1\n")
    with pytest.raises(InputError) as err:
        load_dataset(small_ds)
    for lbl in labels:
        assert f"{lbl}:2: class id 9" in str(err.value)


def test_unreadable_image_is_named(small_ds):
    img = sorted((small_ds.parent / "images" / "val").glob("*.png"))[0]
    img.write_bytes(b"this is not a png")
    with pytest.raises(InputError, match=rf"{img}: unreadable or empty image"):
        load_dataset(small_ds)


def test_empty_split_is_named(small_ds):
    shutil.rmtree(small_ds.parent / "images" / "val")
    (small_ds.parent / "images" / "val").mkdir()
    with pytest.raises(InputError, match=r"split 'val' is empty"):
        load_dataset(small_ds)


def test_missing_split_and_bad_names(tmp_path, small_ds):
    data = yaml.safe_load(small_ds.read_text())
    del data["val"]
    bad = tmp_path / "no_val.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match="missing 'val' split"):
        load_dataset(bad)
    data = yaml.safe_load(small_ds.read_text())
    data["names"] = ["scratch", "background"]
    data.pop("nc")
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match="reserved"):
        load_dataset(bad)


def test_image_without_label_is_a_good_part(small_ds):
    lbl = _first_label(small_ds)
    img = next((small_ds.parent / "images" / "train").glob(lbl.stem + ".*"))
    lbl.unlink()
    ds = load_dataset(small_ds)
    sample = next(s for s in ds.split("train") if s.image == img)
    assert not sample.defective and sample.label is None


def test_relative_path_resolves_against_yaml(small_ds):
    data = yaml.safe_load(small_ds.read_text())
    data["path"] = "."
    small_ds.write_text(yaml.safe_dump(data))
    ds = load_dataset(small_ds)
    assert ds.root == small_ds.parent.resolve()
    assert label_path_for(ds.split("train")[0].image).parent.name == "train"


def test_a_sample_reads_its_size_from_the_header_once(small_ds, monkeypatch):
    """Training reads each part's size in several steps; the header is read on first use and kept."""
    import industrial_qc.data as data

    sample = load_dataset(small_ds).split("val")[0]
    h, w = read_image(sample.image).shape[:2]
    calls = []
    real = data.image_size
    monkeypatch.setattr(data, "image_size", lambda path: calls.append(path) or real(path))
    assert sample.size == (w, h) and sample.size == (w, h)
    assert calls == [sample.image]
    np.testing.assert_allclose(sample.boxes_xyxy(*sample.size), sample.boxes_xyxy(w, h))
