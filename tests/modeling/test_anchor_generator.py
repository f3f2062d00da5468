"""Detectron's anchors: rounded shapes, ratio-major order, centres at stride / 2."""

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import build_anchor_generator
from helpers import load_cfg

from panoptic_ext.modeling.anchor_generator import detectron_cell_anchors


def test_cell_anchors_are_detectron_rounded_shapes():
    # Detectron at P2 (stride 4, size 32): ratio 0.5 -> round(sqrt(32)) = 6 wide, round(3) = 3
    # high, scaled by 8: 48 x 24 (detectron2's exact formula: 45.25 x 22.63); ratio 2 -> 24 x 48.
    cells = detectron_cell_anchors(4, [32], [0.5, 1.0, 2.0])
    sizes = torch.stack([cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]], dim=1)
    assert sizes.tolist() == [[48.0, 24.0], [32.0, 32.0], [24.0, 48.0]]
    # P6 (stride 64, size 512): sqrt(8192) = 90.5 -> 91 (x8 = 728); 91 * 0.5 = 45.5 -> 46
    # (x8 = 368):
    # numpy rounds half to even, as Detectron does.
    p6 = detectron_cell_anchors(64, [512], [0.5])
    assert (p6[0, 2] - p6[0, 0]).item() == 728.0 and (p6[0, 3] - p6[0, 1]).item() == 368.0
    # Several sizes: ratio-major, as Detectron orders them.
    two = detectron_cell_anchors(16, [64, 128], [0.5, 2.0])
    widths = (two[:, 2] - two[:, 0]).tolist()
    assert widths == [92.0, 184.0, 44.0, 88.0]


def test_official_config_builds_detectron_anchors_centred_at_half_stride():
    cfg = load_cfg("COCO-Detection/panet_R_50_official_1x.yaml", "MODEL.WEIGHTS", "")
    shapes = [ShapeSpec(channels=256, stride=s) for s in (4, 8, 16, 32, 64)]
    generator = build_anchor_generator(cfg, shapes)
    assert type(generator).__name__ == "DetectronAnchorGenerator"
    features = [torch.zeros(1, 256, 2, 2) for _ in shapes]
    p2 = generator(features)[0].tensor
    centres = (p2[:, :2] + p2[:, 2:]) / 2
    assert centres[0].tolist() == [2.0, 2.0]  # stride / 2: Detectron's pixel (stride - 1) / 2
    assert (p2[0, 2] - p2[0, 0]).item() == 48.0
