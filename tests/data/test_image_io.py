"""Input pixel formats: 8-bit RGB, gray, RGBA, palette are read as detectron2 reads them; 16-bit,
float and CMYK images are refused naming the file and the format (detectron2 alone turns them
into a white / black / recoloured image); the validator measures sizes after EXIF orientation."""

import numpy as np
import pytest
from detectron2.data import detection_utils
from helpers import TINY_OPTS, load_cfg
from PIL import Image

from panoptic_ext.data import PanopticDatasetMapper
from panoptic_ext.data.image_io import UnsupportedImageError, oriented_size, read_image
from panoptic_ext.data.validation import _check_image


def _rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)


WRITERS = {
    "RGB": lambda a: Image.fromarray(a),
    "L": lambda a: Image.fromarray(a).convert("L"),
    "RGBA": lambda a: Image.fromarray(np.dstack([a, np.full(a.shape[:2], 7, np.uint8)])),
    "P": lambda a: Image.fromarray(a).convert("P"),
    "LA": lambda a: Image.fromarray(a).convert("LA"),
    "1": lambda a: Image.fromarray(a).convert("1"),
}
REFUSED = {
    "I;16": (lambda a: Image.fromarray(a[..., 0].astype(np.uint16) * 257), ".png", "16-bit gray"),
    "F": (lambda a: Image.fromarray(a[..., 0].astype(np.float32) / 255), ".tif", "32-bit float"),
    "I": (lambda a: Image.fromarray(a[..., 0].astype(np.int32)), ".tif", "32-bit integer"),
    "CMYK": (lambda a: Image.fromarray(a).convert("CMYK"), ".jpg", "CMYK colours"),
}


@pytest.mark.parametrize("mode", sorted(WRITERS))
def test_eight_bit_formats_read_like_detectron2(tmp_path, mode):
    path = str(tmp_path / "x.png")
    WRITERS[mode](_rgb()).save(path)
    assert Image.open(path).mode == mode
    ours = read_image(path, "BGR")
    assert ours.shape == (24, 32, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, detection_utils.read_image(path, "BGR"))
    if mode in ("RGB", "RGBA"):  # alpha dropped, colours kept
        assert np.array_equal(ours[:, :, ::-1], _rgb())


@pytest.mark.parametrize("mode", sorted(REFUSED))
def test_other_formats_are_refused_by_the_mapper(tmp_path, mode):
    write, suffix, reason = REFUSED[mode]
    path = str(tmp_path / f"x{suffix}")
    write(_rgb()).save(path)
    assert Image.open(path).mode == mode
    mapper = PanopticDatasetMapper(load_cfg("quick_schedules/panoptic_fpn_synthetic.yaml",
                                            *TINY_OPTS), is_train=False)  # fmt: skip
    with pytest.raises(UnsupportedImageError) as err:
        mapper({"file_name": path, "image_id": 0, "height": 24, "width": 32})
    message = str(err.value)
    assert f"cannot read image {path}: its pixel format {mode} ({reason})" in message
    problems = _check_image(path, 24, 32, 7)
    assert [(p.code, p.id) for p in problems] == [("unsupported_image", 7)]
    assert mode in problems[0].message


def test_validator_measures_the_size_after_exif_orientation(tmp_path):
    """Stored 32 wide x 24 high, EXIF orientation 6 (rotate): shown and read 24 x 32."""
    path = str(tmp_path / "rotated.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_rgb()).save(path, exif=exif)
    assert read_image(path, "RGB").shape[:2] == (32, 24)  # what the loader gets
    with Image.open(path) as img:
        assert img.size == (32, 24) and oriented_size(img) == (24, 32)
    assert _check_image(path, 32, 24, 1) == []  # height 32, width 24: as the loader reads it
    [problem] = _check_image(path, 24, 32, 1)
    assert problem.code == "size_mismatch" and "24x32 (after EXIF orientation)" in problem.message
