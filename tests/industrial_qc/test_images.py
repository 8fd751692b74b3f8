"""Decoding part images as the line does: the header size upright (EXIF), high bit depths stretched to 8 bits."""

from __future__ import annotations

import numpy as np

from industrial_qc.images import decode_image, image_size, read_image


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

