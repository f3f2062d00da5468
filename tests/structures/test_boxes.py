"""Boxes of masks (torch, for targets and outputs) and of index maps (numpy, for the tools)."""

import numpy as np
import torch
from detectron2.structures import BitMasks

from panoptic_ext.structures.boxes import masks_to_boxes, segment_boxes


def test_segment_boxes_match_numpy():
    index = np.zeros((6, 7), np.int64)
    index[1:3, 2:6] = 1
    index[5, 0] = 2
    index[0, 6] = 9  # stray, ignored
    areas, boxes = segment_boxes(index, 3)
    assert areas.tolist() == [8, 1, 0]
    assert boxes.tolist() == [[2, 1, 4, 2], [0, 5, 1, 1], [0, 0, 0, 0]]


def test_masks_to_boxes_are_tight_with_exclusive_far_corner():
    masks = torch.zeros((3, 5, 6), dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4, 0] = True
    masks[2] = True
    assert masks_to_boxes(masks).tensor.tolist() == [[2, 1, 5, 3], [0, 4, 1, 5], [0, 0, 6, 5]]
    empty = masks_to_boxes(torch.zeros((0, 5, 6), dtype=torch.bool)).tensor
    assert empty.shape == (0, 4) and empty.dtype == torch.float32


def test_masks_to_boxes_equal_detectron2s_including_empty_masks():
    """An empty mask (e.g. a Panoptic FCN mask below INST_THRES) once got the whole image."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand((12, 17, 23), generator=g) > 0.97
    masks[[2, 7]] = False
    ours = masks_to_boxes(masks).tensor
    assert torch.equal(ours, BitMasks(masks).get_bounding_boxes().tensor)
    assert ours[2].tolist() == [0.0, 0.0, 0.0, 0.0] and ours[7].tolist() == [0.0, 0.0, 0.0, 0.0]
