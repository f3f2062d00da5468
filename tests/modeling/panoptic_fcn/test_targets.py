"""Panoptic FCN training targets on hand-made masks: centers, radii, levels, stuff maps."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Boxes, Instances

from panoptic_ext.modeling.panoptic_fcn.targets import (
    TargetSettings,
    build_targets,
    collate_ground_truth,
    exact_bilinear_downsample,
    gaussian_radius,
    stuff_soft_maps,
)

LEVELS = [(8, 8), (4, 4), (2, 2)]  # P3..P5 of a 64x64 canvas
SETTINGS = TargetSettings(
    num_thing_classes=3,
    num_stuff_classes=4,
    stuff_label_offset=0,
    common_stride=4,
    instance_scales=[[1, 32], [24, 64], [64, 128]],
    center_type="mass",
    min_overlap=0.7,
    sigma_factor=3.0,
    guidance_thres=0.1,
    stuff_gt_thres=0.5,
)


def _instances(boxes_xyxy, classes, size=(64, 64)) -> Instances:
    masks = torch.zeros((len(boxes_xyxy), *size), dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes_xyxy):
        masks[i, y0:y1, x0:x1] = True
    inst = Instances(size)
    inst.gt_masks = BitMasks(masks)
    inst.gt_boxes = Boxes(torch.tensor(boxes_xyxy, dtype=torch.float32).view(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def _reference_radius(h: float, w: float, o: float) -> int:
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - o) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    b3, c3 = -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 16 * o * c3)) / 2
    return max(int(min(r1, r2, r3)), 0)


def test_exact_downsample_equals_bilinear_interpolation():
    x = torch.rand(2, 3, 32, 48)
    for factor in (2, 3, 4, 8):
        size = (32 // factor * factor, 48 // factor * factor)
        y = x[..., : size[0], : size[1]]
        ref = F.interpolate(y, (size[0] // factor, size[1] // factor), mode="bilinear")
        assert torch.allclose(exact_bilinear_downsample(y, factor), ref, atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        exact_bilinear_downsample(x[..., :30, :], 4)


def test_gaussian_radius_matches_cornernet_formula():
    h = torch.tensor([2.0, 4.0, 10.0, 0.5, 37.0])
    w = torch.tensor([4.0, 4.0, 3.0, 0.5, 12.0])
    got = gaussian_radius(h, w, 0.7).tolist()
    assert got == [_reference_radius(a, b, 0.7) for a, b in zip(h.tolist(), w.tolist())]
    assert got[2] > got[0] and got[3] == 0


def test_thing_targets_center_radius_and_levels():
    # Object 0: 32x16 box (scale 22.6) -> P3 only; object 1: 28x28 box (scale 28) -> P3 and P4
    # (overlapping ranges); image 1 has no things.
    inst0 = _instances([(16, 8, 48, 24), (4, 32, 32, 60)], [2, 0])
    gt = collate_ground_truth([inst0, None], [None, None], (64, 64), 255, torch.device("cpu"))
    t = build_targets(gt, LEVELS, 2, SETTINGS)

    assert t.levels[0].obj.tolist() == [0, 1]
    assert t.levels[1].obj.tolist() == [1]
    assert t.levels[2].obj.tolist() == []
    assert t.num_thing_pairs == 3

    # Object 0 at stride 4: rows 2..5, cols 4..11 -> mass center (7.5, 3.5); P3 is half of that.
    heat = t.center_heatmaps[0]
    assert heat.shape == (2, 3, 8, 8)
    assert heat[0, 2, 1, 3] == 1.0
    radius = _reference_radius(16 * 8 / 64, 32 * 8 / 64, 0.7)
    sigma = (2 * radius + 1) / 3
    expected_side = math.exp(-1 / (2 * sigma * sigma)) if radius >= 1 else 0.0
    assert heat[0, 2, 1, 4].item() == pytest.approx(expected_side, rel=1e-5)
    # Nothing outside the radius, nothing in other classes/images except object 1 (class 0).
    assert heat[0, 2, :, 3 + radius + 1 :].abs().sum() == 0
    assert heat[0, 1].sum() == 0 and heat[1].sum() == 0
    assert heat[0, 0].max() == 1.0
    # Object 1: stride-4 rows 8..14, cols 1..7 -> center (4, 11) -> P4 (4x4 map): (1, 2).
    assert t.center_heatmaps[1][0, 0, 2, 1] == 1.0
    assert t.center_heatmaps[1][0, 0].sum() == pytest.approx(1.0)  # radius 0 at P4

    # Soft stride-4 masks and guidance regions.
    assert t.thing_masks.shape == (2, 16 * 16)
    assert t.thing_masks[0].view(16, 16)[2:6, 4:12].eq(1).all()
    assert t.thing_masks[0].sum() == 32
    assert t.levels[0].guide[0].view(8, 8)[1:3, 2:6].all()
    assert t.thing_batch.tolist() == [0, 0] and t.thing_classes.tolist() == [2, 0]


def test_object_lost_at_stride_is_not_trained():
    # A 1-pixel object at a position no stride-4 sample sees has no center: no NaN, no target.
    inst = _instances([(0, 0, 1, 1)], [1])
    gt = collate_ground_truth([inst], [None], (64, 64), 255, torch.device("cpu"))
    t = build_targets(gt, LEVELS, 1, SETTINGS)
    assert t.num_thing_pairs == 0
    assert all(torch.isfinite(h).all() and h.sum() == 0 for h in t.center_heatmaps)


def test_stuff_soft_maps_and_level_targets():
    sem = torch.full((1, 64, 64), 255, dtype=torch.int64)
    sem[0, :, :30] = 1  # stuff class 1 on columns 0..29
    sem[0, 40:, 30:] = 0  # merged "things" class on the bottom right
    soft = stuff_soft_maps(sem, 4, 0, 4)
    assert soft.shape == (1, 4, 16, 16)
    assert soft[0, 1, :, :7].eq(1).all()
    assert soft[0, 1, :, 7].eq(0.5).all()  # stride-4 column 7 samples pixels 29 (in) and 30
    assert soft[0, 1, :, 8:].eq(0).all()
    assert soft[0, 2:].sum() == 0
    assert soft[0, 0, 10:, 8:].eq(1).all()
    # Without the "things" channel, label 0 is ignored and stuff label 1 is channel 0.
    assert torch.equal(stuff_soft_maps(sem, 3, 1, 4)[0, 0], soft[0, 1])

    gt = collate_ground_truth([None], [sem[0, :50, :50]], (64, 64), 255, torch.device("cpu"))
    assert gt.sem_seg[0, 50:].eq(255).all()
    t = build_targets(gt, LEVELS, 1, SETTINGS)
    for scores in t.stuff_scores:
        nz = scores[scores > 0]
        assert nz.min() >= 0.5 and nz.max() <= 1.0
    assert t.stuff_scores[0][0, 1, :6, :3].eq(1).all()  # rows >= 50 were padded as void
    assert t.stuff_scores[0][0, 1, 7:].eq(0).all()
    assert t.stuff_scores[0][0, 3].sum() == 0
    assert t.stuff_masks.shape == (1, 4, 256)


def test_settings_come_from_the_config_and_name_a_bad_center_type():
    from dataclasses import replace

    from helpers import load_cfg

    cfg = load_cfg("quick_schedules/panoptic_fcn_synthetic.yaml")
    settings = TargetSettings.from_config(cfg)
    assert settings.num_thing_classes == 3 and settings.num_stuff_classes == 4
    assert settings.common_stride == 2 and settings.stuff_label_offset == 0
    assert settings.center_type == "mass" and len(settings.instance_scales) == 5
    with pytest.raises(ValueError, match="POSITION_HEAD.THING.CENTER_TYPE='corner'"):
        replace(SETTINGS, center_type="corner")
