"""COCO run-length encoding of binary masks, byte-identical to ``pycocotools.mask.encode``.

pycocotools reads a mask column by column (Fortran order), so every caller first makes a
column-major copy of the whole (H, W) mask (detectron2: ``np.array(mask, order="F")`` per mask,
a strided copy) and the C encoder then scans all H x W pixels. Here the copy is one
``cv2.transpose``; and for a mask whose pixels lie in a narrow band of columns (most detections),
only that band is transposed, its runs are found with numpy, the empty columns are added to the
first and last zero runs and pycocotools only compresses the run list. 50 masks of 512x512:
0.058 ms per mask against
0.096 ms for a full transpose + ``encode`` and about 0.2 ms for detectron2's copy + ``encode``
(``dev/benchmark_eval.py`` times the evaluators that use it).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_util

__all__ = ["encode_masks"]


def _column_span(masks: np.ndarray) -> tuple[list[int], list[int]]:
    """First column and one past the last column holding a pixel, per mask (0, 0 if empty)."""
    cols = masks.any(axis=1)  # (N, W)
    has = cols.any(axis=1)
    first = np.where(has, np.argmax(cols, axis=1), 0)
    end = np.where(has, cols.shape[1] - np.argmax(cols[:, ::-1], axis=1), 0)
    return first.tolist(), end.tolist()


# Past this fraction of the width, transposing the whole mask and letting pycocotools' C loop
# scan it is cheaper than finding the runs of the band with numpy (measured at 512x512).
_BAND_FRACTION = 1 / 3


def _encode_one(mask: np.ndarray, x0: int, x1: int) -> dict[str, Any]:
    h, w = mask.shape
    if x1 - x0 > _BAND_FRACTION * w:
        return mask_util.encode(cv2.transpose(mask).T[:, :, None])[0]
    return mask_util.frPyObjects({"size": [h, w], "counts": _run_lengths(mask, x0, x1)}, h, w)


def _run_lengths(mask: np.ndarray, x0: int, x1: int) -> list[int]:
    """Column-major run lengths of an (H, W) 0/1 uint8 mask whose pixels lie in columns
    [x0, x1): zeros first (possibly 0), then alternating, the last run ending at H * W."""
    h, w = mask.shape
    if x1 == x0:
        return [h * w]
    band = cv2.transpose(np.ascontiguousarray(mask[:, x0:x1])).reshape(-1)
    edges = [np.flatnonzero(band[1:] != band[:-1]) + 1]
    if band[0]:
        edges.insert(0, np.zeros(1, np.int64))
    if band[-1]:
        edges.append(np.full(1, len(band)))
    pos = x0 * h + np.concatenate(edges)
    counts = np.diff(np.concatenate([[0], pos, [h * w]])).tolist()
    if counts[-1] == 0:  # the image's last pixel is set: no zero run after it
        counts.pop()
    return counts


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLEs (``{"size": [H, W], "counts": bytes}``) of (N, H, W) uint8 0/1 masks, equal to
    ``pycocotools.mask.encode`` of each mask in Fortran order."""
    if masks.ndim != 3 or masks.dtype != np.uint8:
        raise ValueError(
            f"encode_masks takes (N, H, W) uint8 masks, got {masks.dtype} {masks.shape}"
        )
    first, end = _column_span(masks)
    return [_encode_one(m, a, b) for m, a, b in zip(masks, first, end)]
