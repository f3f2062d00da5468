"""Read input images the way detectron2 does, refusing pixel formats it would silently garble.

detectron2's ``read_image`` converts any PIL mode with ``Image.convert``: a 16-bit gray PNG
(mode ``I;16``) is clipped to 255 (a white image), a float TIFF (``F``) to 0/1 (black). Those
formats are refused here with the file and its format; 8-bit formats are converted as detectron2
converts them (RGB as is, gray replicated, palette looked up, alpha dropped):

=================================  =========================================================
PIL mode                           outcome
=================================  =========================================================
RGB, RGBA, RGBX, L, LA, P, PA, 1   read (alpha is dropped, not composited)
I;16*, I, F                        refused: more than 8 bits per channel; convert to 8 bits
CMYK                               refused: needs its colour profile to become RGB
YCbCr, LAB, HSV, other             refused
=================================  =========================================================

(Pillow itself decodes 16-bit-per-channel *RGB* PNGs to 8-bit RGB, keeping the high byte.)
"""

from __future__ import annotations

import numpy as np
from detectron2.data.detection_utils import _apply_exif_orientation, convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager
from PIL import Image, UnidentifiedImageError

__all__ = [
    "SUPPORTED_MODES",
    "UnreadableImageError",
    "UnsupportedImageError",
    "check_pixel_format",
    "oriented_size",
    "read_image",
]

# PIL modes with 8 bits (or fewer) per channel that convert to RGB without losing meaning.
SUPPORTED_MODES = frozenset({"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1"})
_REASONS = {
    "I;16": "16-bit gray",
    "I;16L": "16-bit gray",
    "I;16B": "16-bit gray",
    "I;16N": "16-bit gray",
    "I": "32-bit integer",
    "F": "32-bit float",
    "CMYK": "CMYK colours",
}
_TO_8_BITS = "convert it to 8 bits per channel (RGB, RGBA, gray or palette), e.g. an 8-bit PNG"
# EXIF orientations that swap width and height (transpose / rotate by 90 or 270 degrees).
_EXIF_ORIENTATION, _SWAPPING = 0x0112, (5, 6, 7, 8)


class UnsupportedImageError(ValueError):
    """An image whose pixel format cannot be read as 8-bit RGB without changing it."""

    def __init__(self, path: str, mode: str):
        self.path, self.mode = path, mode
        reason = _REASONS.get(mode, "not an 8-bit RGB, RGBA, gray or palette format")
        fix = "convert it to RGB with its colour profile" if mode == "CMYK" else _TO_8_BITS
        super().__init__(
            f"cannot read image {path}: its pixel format {mode} ({reason}) is not supported "
            f"(it would be read as a wrong image); {fix}"
        )

    def __reduce__(self):  # picklable across data-loader workers
        return type(self), (self.path, self.mode)


class UnreadableImageError(OSError):
    """A file that cannot be decoded as an image (missing, truncated, not an image)."""

    def __init__(self, path: str, why: str):
        self.path, self.why = path, why  # not "filename": OSError would reformat str()
        super().__init__(f"cannot read image {path}: {why}")

    def __reduce__(self):  # picklable across data-loader workers
        return type(self), (self.path, self.why)


def check_pixel_format(image: Image.Image, path: str) -> None:
    """Raise :class:`UnsupportedImageError` unless ``image.mode`` is in :data:`SUPPORTED_MODES`."""
    if image.mode not in SUPPORTED_MODES:
        raise UnsupportedImageError(path, image.mode)


def read_image(path: str, format: str | None = None) -> np.ndarray:
    """``detectron2.data.detection_utils.read_image`` with the pixel-format check.

    Returns:
        (H, W, C) uint8 in ``format`` ("RGB", "BGR", "L", ...), EXIF orientation applied.
    Raises:
        UnsupportedImageError: naming the file and its format.
        UnreadableImageError: naming the file (missing, not an image, truncated, ...).
    """
    try:
        with PathManager.open(path, "rb") as f:
            image = Image.open(f)
            check_pixel_format(image, path)
            return convert_PIL_to_numpy(_apply_exif_orientation(image), format)
    except UnidentifiedImageError:
        raise UnreadableImageError(path, "not an image file that PIL can decode") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:  # truncated, bomb, ...
        raise UnreadableImageError(path, f"{type(e).__name__}: {e}") from e


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of ``image`` after its EXIF orientation, without decoding the pixels."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # broken EXIF: detectron2 then ignores the orientation too
        orientation = None
    width, height = image.size
    return (height, width) if orientation in _SWAPPING else (width, height)
