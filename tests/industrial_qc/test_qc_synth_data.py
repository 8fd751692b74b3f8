"""Synthetic data generation and dataset validation (errors name file and line)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from common.errors import InputError
from industrial_qc.data import (
    Sample,
    decode_image,
    defect_scale,
    image_size,
    label_path_for,
    load_dataset,
    read_image,
    small_defect_warning,
)
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


def _axis_aligned_share(cfg: SynthConfig, n: int = 300) -> float:
    """Share of ``n`` drawn scratches whose long axis (from the mask's second moments) is within 2 deg of an
    image axis."""
    from industrial_qc.synth import _draw_scratch

    near = 0
    for i in range(n):
        mask = np.zeros((160, 160), np.float32)
        _draw_scratch(np.random.default_rng([5, i]), 160, mask, cfg.axis_scratches)
        ys, xs = np.nonzero(mask > 0.3)
        cov = np.cov(np.stack([xs, ys]).astype(np.float64), aweights=mask[ys, xs])
        ang = np.degrees(0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1])) % 90
        near += min(ang, 90 - ang) <= 2.0
    return near / n


def test_a_share_of_scratches_runs_along_an_image_axis():
    """Machining marks run along a fixtured part's axes: the default set draws a share of its scratches there
    (a detector learns that orientation only from examples of it); uniform angles put few of them there."""
    assert SynthConfig().axis_scratches == 0.3
    assert 0.22 <= _axis_aligned_share(SynthConfig()) <= 0.45  # 0.3 + 0.7 * 4 / 180 of the uniform rest
    assert _axis_aligned_share(SynthConfig(axis_scratches=1.0)) >= 0.95
    assert _axis_aligned_share(SynthConfig(axis_scratches=0.0)) <= 0.1  # uniform: ~ 4 / 180


@pytest.mark.parametrize("cls", DEFECT_CLASSES)
@pytest.mark.parametrize("surface", ["brushed_metal", "woven_fabric"])
def test_faint_defects_are_raised_to_the_visibility_floor(cls, surface):
    """Asked for almost no contrast, a defect is still drawn as strong as the floor needs on its surface, and
    the visibility measured independently on the result agrees."""
    from industrial_qc.synth import _SURFACE_FNS, _apply_defect, _draw_defect, defect_visibility

    cfg = SynthConfig(contrast=(0.001, 0.001))
    noise_sd = 0.02
    for i in range(3):
        rng = np.random.default_rng([7, i])
        clean = _SURFACE_FNS[surface](rng, 128).astype(np.float32)
        d = _draw_defect(128, cls, rng, cfg)
        assert d is not None
        img = clean.copy()
        snr, core = _apply_defect(img, d, cfg, noise_sd)
        assert snr >= 0.99 * cfg.min_snr and core >= 0.99 * cfg.min_core_cnr, (cls, surface, i, snr, core)
        cx, cy, w, h = (v * 128 for v in d.box)
        box = (int(cx - w / 2), int(cy - h / 2), int(np.ceil(cx + w / 2)), int(np.ceil(cy + h / 2)))
        again = defect_visibility(clean.mean(axis=2), img.mean(axis=2), box, noise_sd)
        assert again[0] >= 0.95 * cfg.min_snr and again[1] >= 0.95 * cfg.min_core_cnr
        assert float(np.abs(img - clean).max()) < 0.6  # raised to visible, not to glaring


def test_visibility_sees_texture_that_hides_a_defect():
    """The same faint blob is less visible on woven fabric than on a flat surface, and sensor noise hides it too."""
    from industrial_qc.synth import _woven_fabric, defect_visibility

    rng = np.random.default_rng(3)
    fabric = _woven_fabric(rng, 128).mean(axis=2).astype(np.float32)
    flat = np.full_like(fabric, float(fabric.mean()))
    yy, xx = np.mgrid[0:128, 0:128]
    blob = (0.03 * np.exp(-((xx - 64) ** 2 + (yy - 64) ** 2) / (2 * 6.0**2))).astype(np.float32)
    box = (52, 52, 77, 77)
    on_flat = defect_visibility(flat, flat - blob, box, 0.005)
    on_fabric = defect_visibility(fabric, fabric - blob, box, 0.005)
    noisy = defect_visibility(flat, flat - blob, box, 0.05)
    assert on_fabric[0] < on_flat[0] / 2 and on_fabric[1] < on_flat[1] / 2
    assert noisy[0] < on_flat[0] / 2 and noisy[1] < on_flat[1] / 2


def test_split_counts():
    assert split_counts(700, 1 / 7, 2 / 7) == {"train": 400, "val": 100, "test": 200}
    with pytest.raises(ValueError):
        split_counts(2, 0.2, 0.2)


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


def test_image_size_reads_the_header_as_opencv_decodes_the_image(tmp_path):
    """A JPEG whose EXIF orientation turns it a quarter is decoded upright by OpenCV (and Ultralytics), so its
    header size is swapped."""
    from PIL import Image

    im = Image.fromarray(np.zeros((40, 100, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "turned.jpg", exif=exif.tobytes())
    im.save(tmp_path / "plain.jpg")
    for name in ("turned.jpg", "plain.jpg"):
        h, w = read_image(tmp_path / name).shape[:2]
        assert image_size(tmp_path / name) == (w, h)
    assert image_size(tmp_path / "turned.jpg") == (40, 100)


def test_high_bit_depth_images_keep_their_faint_defects(tmp_path):
    """A 12-bit camera image in a 16-bit PNG or TIFF, and a float TIFF: a line 12 levels above a 1000-level
    surface (with two hot pixels) comes out plainly visible, where OpenCV's default (the high byte) erases it
    and cannot read the float file at all. 8-bit files decode exactly as before."""
    import cv2

    a = np.full((320, 320), 1000, np.uint16)
    a[150:154, 10:200] = 1012
    a[0, 0] = a[5, 5] = 4095
    files = {"u16.png": a, "u16.tiff": a, "float.tiff": a.astype(np.float32) / 4095}
    rgba = np.zeros((320, 320, 4), np.uint16)
    rgba[..., :3], rgba[..., 3] = a[..., None], 65535  # an opaque alpha must not set the stretch
    files["rgba16.png"] = rgba
    for name, pixels in files.items():
        cv2.imwrite(str(tmp_path / name), pixels)
        img = read_image(tmp_path / name)
        assert img.dtype == np.uint8 and img.shape == (320, 320, 3), name
        assert int(img[152, 20].min()) - int(img[100, 100].max()) > 200, name
        # surface and line land at 16 and 240: room at both ends, as an 8-bit camera leaves (hot pixels clip)
        assert abs(int(img[100, 100, 0]) - 16) <= 2 and abs(int(img[152, 20, 0]) - 240) <= 2, name
    old = cv2.imread(str(tmp_path / "u16.png"), cv2.IMREAD_COLOR)
    assert int(old[152, 20, 0]) == int(old[100, 100, 0])  # the high byte: the line is gone
    assert decode_image(np.frombuffer(b"not an image", np.uint8)) is None
    rng = np.random.default_rng(0)
    for ext in (".png", ".jpg"):
        _, buf = cv2.imencode(ext, rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
        assert np.array_equal(decode_image(buf), cv2.imdecode(buf, cv2.IMREAD_COLOR))
        _, buf = cv2.imencode(ext, rng.integers(0, 256, (40, 50), dtype=np.uint8))
        assert np.array_equal(decode_image(buf), cv2.imdecode(buf, cv2.IMREAD_COLOR))


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
