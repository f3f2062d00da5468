"""Fast reading of COCO-panoptic PNGs and mapping of their segment ids to positions.

Used by the PQ evaluator and the dataset tools on every ground-truth PNG, so both avoid the
int64 temporaries and sorts of the straightforward implementations.
"""

import sys
import threading
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


# COCO-panoptic ids are 24-bit RGB colours: a lookup table over all of them costs 16 MB of
# mostly untouched (zero-page) memory per thread, and one gather maps a whole image.
_ID_BITS = 24
_TABLES = threading.local()


def _lookup_table(dtype: type) -> np.ndarray:
    """This thread's all-zero table of 2^24 entries (zeros again after every use)."""
    name = np.dtype(dtype).name
    table = getattr(_TABLES, name, None)
    if table is None:
        table = np.zeros(1 << _ID_BITS, dtype=dtype)
        setattr(_TABLES, name, table)
    return table


def index_map(ids: np.ndarray, segment_ids: Sequence[int], stray: int) -> np.ndarray:
    """Map an (H, W) id map to positions: 0 = void, 1..K = ``segment_ids`` order, else ``stray``.

    Unlike ``panoptic_targets.segment_index_map`` this never raises: ids without a segment get
    ``stray`` so that callers can count or report them. Ids below 2^16 (model predictions) go
    through one gather in a table of codes, other ids below 2^24 (every PNG id) through a
    per-thread lookup table, the rest through a binary search.

    Args:
        ids: (H, W) integer ids.
        segment_ids: (K,) segment ids; a repeated id maps to its last position.
        stray: code of ids that are neither 0 nor in ``segment_ids``.
    Returns:
        (H, W) positions, an unsigned or int64 integer array (cast before arithmetic).
    """
    segment_ids = np.asarray(segment_ids, dtype=np.int64)
    k = len(segment_ids)
    if ids.size == 0:
        return np.zeros(ids.shape, np.int64)
    max_id = int(ids.max())
    in_range = max_id < 1 << _ID_BITS and (ids.dtype.kind == "u" or int(ids.min()) >= 0)
    top = max(k, stray)
    small = np.uint8 if top < 1 << 8 else np.uint16 if top < 1 << 16 else np.int64
    if in_range and max_id < 1 << 16:
        # Small ids (model predictions): a table of the final codes, one gather.
        lut = np.full(max_id + 1, stray, dtype=small)
        keep = (segment_ids > 0) & (segment_ids < len(lut))
        lut[segment_ids[keep]] = np.nonzero(keep)[0] + 1
        lut[0] = 0
        return np.take(lut, ids)
    if in_range and small != np.int64:
        table = _lookup_table(small)
        keep = (segment_ids > 0) & (segment_ids < 1 << _ID_BITS)
        # Segments -> 1..K; void and unknown ids both read 0 from the all-zero table.
        table[segment_ids[keep]] = np.nonzero(keep)[0] + 1
        try:
            codes = np.take(table, ids)
        finally:
            table[segment_ids[keep]] = 0
        if np.count_nonzero(codes) == np.count_nonzero(ids):  # no unknown id: done
            return codes
        codes[(codes == 0) & (ids != 0)] = stray
        return codes
    # Same dtype on both sides keeps searchsorted fast; the sentinel exceeds every id.
    keys = np.concatenate([[0], segment_ids, [np.iinfo(np.int64).max]]).astype(np.int64)
    codes = np.concatenate([[0], np.arange(1, k + 1), [stray]])
    order = np.argsort(keys, kind="stable")
    keys, codes = keys[order].astype(ids.dtype, copy=False), codes[order]
    if ids.dtype != np.int64:
        keys[-1] = np.iinfo(ids.dtype).max
    pos = np.searchsorted(keys, ids)
    out = codes[pos]
    out[keys[pos] != ids] = stray
    return out
