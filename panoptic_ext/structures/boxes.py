"""Tight boxes of masks: a torch version for model targets and outputs, a numpy version (with
pixel counts) for the dataset tools. Both are vectorised over segments.

``masks_to_boxes`` gives what detectron2's ``BitMasks.get_bounding_boxes`` gives (tested), without
its per-mask loop: on CPU 0.40 vs 0.77 ms for 20 masks of 128x128 (equal at 100 x 800x800, where
the reductions dominate), and on GPU without a host synchronisation per mask.
"""

import numpy as np
import torch
from detectron2.structures import Boxes

__all__ = ["masks_to_boxes", "segment_boxes"]


def masks_to_boxes(masks: torch.Tensor) -> Boxes:
    """Tight XYXY boxes of (N, H, W) bool masks (x1, y1 exclusive), vectorised over N.

    An empty mask gets the box (0, 0, 0, 0), as in detectron2.
    """
    n, h, w = masks.shape
    if n == 0:
        return Boxes(torch.zeros((0, 4), dtype=torch.float32, device=masks.device))
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    y0 = rows.to(torch.uint8).argmax(dim=1)
    y1 = h - rows.flip(1).to(torch.uint8).argmax(dim=1)
    x0 = cols.to(torch.uint8).argmax(dim=1)
    x1 = w - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    return Boxes(boxes * rows.any(dim=1, keepdim=True))


def segment_boxes(index: np.ndarray, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts and XYWH boxes of segments 1..K of an index map (0 = void).

    Args:
        index: (H, W) int positions as returned by :func:`~panoptic_ext.data.panoptic_io.index_map`;
            values above ``num_segments`` are ignored.
    Returns:
        areas: (K,) int64; boxes: (K, 4) int64 ``[x0, y0, w, h]`` (zeros for empty segments).
    """
    h, w = index.shape
    k = num_segments + 2  # + void + stray
    idx = np.minimum(index, k - 1)
    areas = np.bincount(idx.ravel(), minlength=k)[1 : num_segments + 1]
    rows = np.zeros((k, h), dtype=bool)
    cols = np.zeros((k, w), dtype=bool)
    rows[idx, np.arange(h)[:, None]] = True
    cols[idx, np.arange(w)[None, :]] = True
    rows, cols = rows[1 : num_segments + 1], cols[1 : num_segments + 1]
    y0, x0 = rows.argmax(1), cols.argmax(1)
    y1, x1 = h - 1 - rows[:, ::-1].argmax(1), w - 1 - cols[:, ::-1].argmax(1)
    boxes = np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], axis=1)
    boxes[areas == 0] = 0
    return areas.astype(np.int64), boxes.astype(np.int64)
