"""Fast reading of COCO-panoptic PNGs and mapping of their segment ids to positions.

Used by the PQ evaluator and the dataset tools on every ground-truth PNG, so both avoid the
int64 temporaries and sorts of the straightforward implementations.
"""

import sys
from collections.abc import Sequence

import cv2
import numpy as np

from .panoptic_targets import rgb_to_id

__all__ = ["bgr_to_id32", "index_map", "read_panoptic_png"]


def read_panoptic_png(path: str) -> np.ndarray:
    """Read a COCO-panoptic PNG into (H, W) uint32 segment ids (``R + 256 G + 256^2 B``).

    Raises:
        FileNotFoundError: naming the file when it is missing or cannot be decoded.
    """
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read panoptic PNG {path}")
    return bgr_to_id32(bgr)


def bgr_to_id32(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR (OpenCV order) -> (H, W) uint32 ids, equal to :func:`rgb_to_id`.

    The little-endian RGBA bytes of a pixel read as one uint32 are ``R + 256 G + 256^2 B +
    256^3 A``; masking A out gives the COCO-panoptic id without three int64 temporaries.
    """
    if sys.byteorder != "little":
        return rgb_to_id(bgr[:, :, ::-1])
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA)
    return rgba.view(np.uint32)[..., 0] & np.uint32(0xFFFFFF)


def index_map(ids: np.ndarray, segment_ids: Sequence[int], stray: int) -> np.ndarray:
    """Map an (H, W) id map to positions: 0 = void, 1..K = ``segment_ids`` order, else ``stray``.

    Unlike ``panoptic_targets.segment_index_map`` this never raises: ids without a segment get
    ``stray`` so that callers can count or report them. Small ids (the common prediction case)
    use a lookup table; large COCO-panoptic ids a binary search over the sorted segment ids
    (plus void and a sentinel past the end).

    Returns:
        (H, W) int64 positions.
    """
    segment_ids = np.asarray(segment_ids, dtype=np.int64)
    max_id = int(ids.max()) if ids.size else 0
    if max_id < max(1 << 16, 4 * ids.size):
        lut = np.full(max_id + 1, stray, dtype=np.int64)
        keep = (segment_ids <= max_id) & (segment_ids > 0)
        lut[segment_ids[keep]] = np.nonzero(keep)[0] + 1
        lut[0] = 0
        return lut[ids]
    # Same dtype on both sides keeps searchsorted fast; the sentinel exceeds every 24-bit id.
    keys = np.concatenate([[0], segment_ids, [np.iinfo(np.int64).max]]).astype(np.int64)
    codes = np.concatenate([[0], np.arange(1, len(segment_ids) + 1), [stray]])
    order = np.argsort(keys, kind="stable")
    keys, codes = keys[order].astype(ids.dtype, copy=False), codes[order]
    if ids.dtype != np.int64:
        keys[-1] = np.iinfo(ids.dtype).max
    pos = np.searchsorted(keys, ids)
    out = codes[pos]
    out[keys[pos] != ids] = stray
    return out
