"""The fast PNG path (libdeflate + libpng on the distinct rows) decodes exactly like OpenCV."""

import io
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from panoptic_ext.data import panoptic_io
from panoptic_ext.data.panoptic_io import (
    UnsupportedPanopticPngError,
    bgr_to_id32,
    decode_png_rows,
    read_panoptic_png,
    read_panoptic_rows,
)
from panoptic_ext.structures.panoptic_ids import id_to_rgb, rgb_to_id

pytest.importorskip("deflate")


def _label_map(rng, h, w):
    """Rectangles (many repeated rows) plus a noisy blob (rows all different) of 24-bit ids."""
    ids = np.zeros((h, w), np.int64)
    for _ in range(8):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        ids[y0 : y0 + rng.integers(2, h // 2), x0 : x0 + rng.integers(2, w // 2)] = rng.integers(
            1, 1 << 24
        )
    yy, xx = np.mgrid[:h, :w]
    blob = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2 + rng.normal(0, 20, (h, w))
    ids[blob] = rng.integers(1, 1 << 24)
    ids[: rng.integers(0, 3)] = 0
    return ids


def _encodings(rgb):
    """The same image as PNG bytes from PIL (adaptive filters), OpenCV and PIL RGBA."""
    out = []
    for mode in ("RGB", "RGBA"):
        buf = io.BytesIO()
        img = Image.fromarray(rgb)
        (img if mode == "RGB" else img.convert("RGBA")).save(buf, format="PNG")
        out.append(buf.getvalue())
    for level in (1, 9):
        ok, enc = cv2.imencode(".png", rgb[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, level])
        assert ok
        out.append(enc.tobytes())
    return out


def test_decoded_rows_equal_opencv_for_every_encoder():
    rng = np.random.default_rng(0)
    kept = []
    for h, w in ((1, 7), (37, 53), (96, 128)):
        ids = _label_map(rng, h, w) if h > 4 else rng.integers(0, 1 << 24, (h, w))
        rgb = id_to_rgb(ids)
        for data in _encodings(rgb):
            decoded = decode_png_rows(data)
            assert decoded is not None
            rows, row_index = decoded
            ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(rows[row_index], ref)
            np.testing.assert_array_equal(bgr_to_id32(rows)[row_index], ids)
            kept.append(len(rows) / h)
    assert min(kept) < 0.8  # repeated rows were really left out on the rectangle images


def test_read_panoptic_png_equals_rgb_to_id_and_falls_back(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    ids = _label_map(rng, 40, 60)
    path = str(tmp_path / "a.png")
    Image.fromarray(id_to_rgb(ids)).save(path)
    rows, row_index = read_panoptic_rows(path)
    assert rows.dtype == np.uint32 and row_index.shape == (40,) and len(rows) < 40
    np.testing.assert_array_equal(read_panoptic_png(path), rgb_to_id(np.asarray(Image.open(path))))
    # Without libdeflate, and for PNG kinds it does not handle (palette), OpenCV decodes.
    monkeypatch.setattr(panoptic_io, "_libdeflate", None)
    np.testing.assert_array_equal(read_panoptic_png(path), ids)
    monkeypatch.undo()
    Image.fromarray(id_to_rgb(ids)).convert("P").save(path)
    assert decode_png_rows(open(path, "rb").read()) is None
    palette = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(read_panoptic_png(path), rgb_to_id(palette))


def test_missing_and_corrupt_png_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_panoptic_rows(str(tmp_path / "missing.png"))
    path = tmp_path / "bad.png"
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[:-30])  # IDAT cut short
    with pytest.raises(FileNotFoundError, match="bad.png"):
        read_panoptic_png(str(path))


def test_stored_zlib_stream_round_trips():
    rng = np.random.default_rng(2)
    for n in (0, 1, 65535, 65536, 200_001):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert zlib.decompress(panoptic_io._stored_zlib(data)) == data


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda ids, p: cv2.imwrite(p, id_to_rgb(ids).astype(np.uint16) * 257), "16-bit RGB PNG"),
        (lambda ids, p: Image.fromarray(id_to_rgb(ids)).convert("LA").save(p), "gray \\+ alpha"),
        (lambda ids, p: Image.fromarray(id_to_rgb(ids)).save(p, format="JPEG"), "JPEG file"),
    ],
    ids=["16bit", "gray_alpha", "jpeg_named_png"],
)
def test_label_files_that_lost_the_ids_are_refused(tmp_path, write, message):
    ids = _label_map(np.random.default_rng(4), 16, 16)
    path = str(tmp_path / "lossy.png")
    write(ids, path)
    with pytest.raises(UnsupportedPanopticPngError, match=f"lossy.png: is a {message}"):
        read_panoptic_rows(path)
