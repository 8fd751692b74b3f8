"""In-image defect copy-paste for the detector's training samples (industrial_qc/paste.py)."""

from __future__ import annotations

import numpy as np

from industrial_qc.paste import paste_defects


def _grown(b: np.ndarray, margin: float = 0.25) -> np.ndarray:
    g = max(3.0, margin * max(b[2] - b[0], b[3] - b[1]))
    return np.array([b[0] - g, b[1] - g, b[2] + g, b[3] + g])


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(a[0] < b[2] and a[2] > b[0] and a[1] < b[3] and a[3] > b[1])


def test_each_defect_is_copied_once_with_its_pixels_to_a_free_place_of_the_same_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    before = img.copy()
    cls = np.array([[2.0], [0.0]], np.float32)
    boxes = np.array([[10, 12, 22, 20], [70, 80, 110, 86]], np.float32)
    for seed in range(20):
        out, c, b = paste_defects(img, cls, boxes, np.random.default_rng(seed))
        assert np.array_equal(img, before)  # the input is not modified
        assert len(b) == len(c) and len(b) > 2  # 128 px leave room for at least one copy
        assert np.array_equal(b[:2], boxes) and np.array_equal(c[:2], cls)
        for k in range(2, len(b)):
            src = int(np.flatnonzero((boxes[:, 2] - boxes[:, 0] == b[k, 2] - b[k, 0])
                                     & (boxes[:, 3] - boxes[:, 1] == b[k, 3] - b[k, 1]))[0])
            assert c[k, 0] == cls[src, 0]  # the copy keeps its class and size
            x1, y1, x2, y2 = b[k].astype(int)
            sx1, sy1, sx2, sy2 = boxes[src].astype(int)
            assert np.array_equal(out[y1:y2, x1:x2], img[sy1:sy2, sx1:sx2])  # the defect's own pixels
            assert min(x1, y1) >= 0 and max(x2, y2) <= 128
            # it lands on no other box, and its margin is clear of theirs
            for j in range(len(b)):
                if j != k:
                    assert not _overlap(b[k], _grown(b[j]))
        outside = np.ones((128, 128), bool)  # pixels away from every copy's patch are unchanged
        for k in range(2, len(b)):
            x1, y1, x2, y2 = _grown(b[k]).astype(int)
            outside[max(0, y1 - 1):y2 + 2, max(0, x1 - 1):x2 + 2] = False
        assert np.array_equal(out[outside], img[outside])


def test_a_defect_with_no_free_place_is_not_copied():
    img = np.full((40, 40), 100, np.uint8)
    cls = np.array([[1.0]], np.float32)
    boxes = np.array([[5, 5, 35, 35]], np.float32)  # its grown patch fills the image
    out, c, b = paste_defects(img, cls, boxes, np.random.default_rng(0))
    assert len(c) == 1
    assert len(b) == 1 and np.array_equal(out, img)


def test_a_defect_next_to_another_is_not_copied_with_a_piece_of_it():
    """Two pits 2 px apart: each one's patch (box + 3 px) holds part of the other, which the copy would carry
    without a label; only the lone defect is copied."""
    img = np.random.default_rng(1).integers(0, 256, (160, 160), dtype=np.uint8)
    cls = np.array([[1.0], [1.0], [3.0]], np.float32)
    boxes = np.array([[20, 20, 28, 28], [30, 20, 38, 28], [100, 100, 130, 110]], np.float32)
    for seed in range(10):
        _, c, b = paste_defects(img, cls, boxes, np.random.default_rng(seed))
        assert len(b) == 4 and c[3, 0] == 3.0
        assert b[3, 2] - b[3, 0] == 30 and b[3, 3] - b[3, 1] == 10


def test_training_with_paste_copies_defects_into_the_samples(tmp_path, tiny_data):
    """``detector.paste: 1.0`` on the tiny set: every drawn image with defects gets copies, and metrics.json
    counts them; training runs through Ultralytics' mosaic with the added labels."""
    from industrial_qc.config import load_qc_config
    from industrial_qc.detector import train_detector
    from tests.conftest import TINY_CONFIG

    cfg = load_qc_config(TINY_CONFIG, ["detector.epochs=1", "detector.paste=1.0"]).detector
    res = train_detector(cfg, tiny_data, tmp_path, threads=2)
    assert res.epochs_run == 1
    assert res.metrics["paste_images"] > 0
    assert res.metrics["paste_defects"] >= res.metrics["paste_images"]


def test_training_with_paste_on_polygon_labels(tmp_path, tiny_data):
    """A dataset labelled with polygons (Ultralytics' segment rows) trains with ``detector.paste: 1.0``: the copies
    get boxes, and no polygon is left without its box (Ultralytics' mosaic and affine would rebuild the boxes from
    the polygons and drop the copies' labels, or fail on the mismatch)."""
    import shutil

    from industrial_qc.config import load_qc_config
    from industrial_qc.detector import train_detector
    from tests.conftest import TINY_CONFIG

    data = tmp_path / "poly"
    shutil.copytree(tiny_data.parent, data)
    yaml_text = (data / "data.yaml").read_text().replace(f"path: {tiny_data.parent}", f"path: {data}")
    assert f"path: {data}" in yaml_text  # the copy's own labels are read, not the original boxes
    (data / "data.yaml").write_text(yaml_text)
    rows = 0
    for lbl in data.glob("labels/*/*.txt"):
        out = []
        for line in lbl.read_text().split("\n"):
            if line.strip():
                c, cx, cy, w, h = (float(v) for v in line.split())
                diamond = [cx, cy - h / 2, cx + w / 2, cy, cx, cy + h / 2, cx - w / 2, cy]
                out.append(" ".join([str(int(c))] + [f"{v:.6f}" for v in diamond]))
                rows += 1
        lbl.write_text("\n".join(out) + "\n" if out else "")
    assert rows > 0
    cfg = load_qc_config(TINY_CONFIG, ["detector.epochs=1", "detector.paste=1.0"]).detector
    res = train_detector(cfg, data / "data.yaml", tmp_path / "work", threads=2)
    assert res.epochs_run == 1
    assert res.metrics["paste_defects"] >= res.metrics["paste_images"] > 0
