"""Panoptic FCN losses (finite, zero-object safe, small levels), kernel fusion and the
panoptic merge rule."""

import torch
from detectron2.structures import BitMasks, Boxes, Instances

from panoptic_ext.modeling.panoptic_fcn.heads import KernelEmbedding
from panoptic_ext.modeling.panoptic_fcn.inference import fuse_thing_kernels
from panoptic_ext.modeling.panoptic_fcn.losses import LossSettings, dice_loss, panoptic_fcn_losses
from panoptic_ext.modeling.panoptic_fcn.postprocess import MaskCrops, combine_panoptic
from panoptic_ext.modeling.panoptic_fcn.targets import (
    TargetSettings,
    build_targets,
    collate_ground_truth,
)

# P3..P6 of a 64x64 canvas: the last two levels have fewer pixels than POS_NUM = 7.
LEVELS = [(8, 8), (4, 4), (2, 2), (1, 1)]
TARGET_SETTINGS = TargetSettings(
    num_thing_classes=3,
    num_stuff_classes=4,
    stuff_label_offset=0,
    common_stride=4,
    instance_scales=[[1, 2048]] * 4,  # every object trains every level, including 1x1
    center_type="mass",
    min_overlap=0.7,
    sigma_factor=3.0,
    guidance_thres=0.1,
    stuff_gt_thres=0.5,
)
LOSS_SETTINGS = LossSettings(
    pos_num=7,
    detach_guidance=False,
    focal_alpha=0.25,
    focal_gamma=2.0,
    position_weight=1.0,
    segment_weight=3.0,
)
D, E = 16, 8


def _instances(boxes, classes) -> Instances:
    masks = torch.zeros((len(boxes), 64, 64), dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    inst = Instances((64, 64))
    inst.gt_masks = BitMasks(masks)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def _losses(instances, sem_segs):
    torch.manual_seed(0)
    n = len(instances)
    gt = collate_ground_truth(instances, sem_segs, (64, 64), 255, torch.device("cpu"))
    targets = build_targets(gt, LEVELS, n, TARGET_SETTINGS)
    centers = [torch.randn(n, 3, h, w, requires_grad=True) for h, w in LEVELS]
    regions = [torch.randn(n, 4, h, w, requires_grad=True) for h, w in LEVELS]
    kernels = [torch.randn(n, D, h, w, requires_grad=True) for h, w in LEVELS]
    feat = torch.rand(n, E, 16, 16, requires_grad=True)
    thing, stuff = KernelEmbedding(D, E), KernelEmbedding(D, E)
    losses = panoptic_fcn_losses(
        centers, regions, kernels, feat, targets, thing, stuff, LOSS_SETTINGS
    )
    sum(losses.values()).backward()
    return losses, centers, kernels, thing


def _sem(label: int) -> torch.Tensor:
    sem = torch.full((64, 64), label, dtype=torch.int64)
    sem[:, 48:] = 255
    return sem


def test_losses_finite_with_an_image_without_things_and_small_levels():
    inst = _instances([(8, 8, 40, 30), (30, 30, 60, 62)], [0, 2])
    losses, centers, kernels, thing = _losses([inst, None], [_sem(1), _sem(2)])
    assert set(losses) == {"loss_pos_th", "loss_pos_st", "loss_seg_th", "loss_seg_st"}
    for name, value in losses.items():
        assert torch.isfinite(value) and value > 0, name
    # The 1x1 and 2x2 levels (smaller than top-k) got kernel gradients from the dice loss.
    assert kernels[3].grad.abs().sum() > 0 and kernels[2].grad.abs().sum() > 0
    assert thing.embed_extractor.weight.grad.abs().sum() > 0
    # Official behaviour: the dice loss also reaches the center head through the weights.
    assert centers[0].grad[0, 0].abs().sum() > 0


def test_losses_zero_safe_for_a_batch_without_things():
    losses, centers, kernels, thing = _losses([None, _instances([], [])], [_sem(3), None])
    assert losses["loss_seg_th"] == 0 and losses["loss_seg_th"].requires_grad
    assert torch.isfinite(losses["loss_pos_th"]) and losses["loss_pos_th"] > 0
    assert losses["loss_seg_st"] > 0
    assert thing.embed_extractor.weight.grad is not None
    assert all(torch.isfinite(c.grad).all() for c in centers)


def test_losses_zero_safe_without_any_label():
    losses, *_ = _losses([None], [None])
    assert losses["loss_seg_th"] == 0 and losses["loss_seg_st"] == 0
    assert all(torch.isfinite(v) for v in losses.values())


def test_dice_loss_values():
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert dice_loss(t, t).item() == 0.0
    assert dice_loss(1 - t, t).item() == 1.0
    assert dice_loss(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 1.0


def test_kernel_fusion_merges_exactly_the_pairs_above_threshold():
    def unit(deg):
        a = torch.tensor(deg * torch.pi / 180)
        return torch.stack([torch.cos(a), torch.sin(a)])

    # cos(0, 18 deg) = 0.951 >= 0.9 (merge), cos(0, 27 deg) = 0.891 < 0.9 (no merge).
    embeds = torch.stack([unit(0), unit(18), unit(0), unit(90), unit(117), unit(5)])[None]
    classes = torch.tensor([[1, 1, 2, 1, 1, 1]])
    valid = torch.tensor([[True, True, True, True, True, False]])
    fused, keep = fuse_thing_kernels(embeds, classes, valid, 0.9, class_specific=True)
    # 1 merges into 0; 2 has another class; 3 vs 4 are 27 deg apart; 5 is not a candidate.
    assert keep.tolist() == [[True, False, True, True, True, False]]
    assert torch.allclose(fused[0, 0], (unit(0) + unit(18)) / 2)
    assert torch.allclose(fused[0, 2:5], embeds[0, 2:5])
    # Class-agnostic fusion also merges candidate 2 (same vector as 0).
    _, keep_any = fuse_thing_kernels(embeds, classes, valid, 0.9, class_specific=False)
    assert keep_any.tolist() == [[True, False, False, True, True, False]]
    # Batched: a second image with other data does not change the first one.
    both, keep2 = fuse_thing_kernels(
        torch.cat([embeds, embeds.flip(1)]), classes.repeat(2, 1), valid.repeat(2, 1), 0.9, True
    )
    assert torch.equal(keep2[0], keep[0]) and torch.allclose(both[0], fused[0])


def _sequential_merge(masks, scores, thresh_overlap, inst_thresh):
    """Reference: paint things one by one in score order (the official rule)."""
    painted = torch.zeros(masks.shape[1:], dtype=torch.bool)
    kept = []
    for i in range(len(masks)):
        area = masks[i].sum()
        if scores[i] < inst_thresh or area == 0:
            continue
        if (masks[i] & painted).sum() / area > thresh_overlap:
            continue
        kept.append(i)
        painted |= masks[i]
    return kept


def test_panoptic_merge_matches_sequential_painting():
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        k = 12
        x0 = torch.randint(0, 24, (k,), generator=g)
        y0 = torch.randint(0, 24, (k,), generator=g)
        size = torch.randint(4, 16, (k,), generator=g)
        masks = torch.zeros((k, 40, 40), dtype=torch.bool)
        for i in range(k):
            masks[i, y0[i] : y0[i] + size[i], x0[i] : x0[i] + size[i]] = True
        scores = torch.linspace(0.9, 0.1, k)
        classes = torch.arange(k) % 3
        stuff = torch.zeros((4, 40, 40))
        stuff[1, :, :20] = 0.8
        stuff[2, :, 20:] = 0.7
        stuff[0, :5] = 0.9  # "things" channel wins the top rows: never painted as stuff
        pan, info = combine_panoptic(
            MaskCrops.from_masks(masks),
            scores,
            classes,
            *stuff.max(0),
            len(stuff),
            overlap_thresh=0.5,
            stuff_area_limit=30,
            inst_thresh=0.2,
            thing_channel=0,
            stuff_category_offset=0,
        )
        kept = _sequential_merge(masks, scores, 0.5, 0.2)
        things = [s for s in info if s["isthing"]]
        assert [s["instance_id"] for s in things] == kept, trial
        painted = torch.zeros((40, 40), dtype=torch.bool)
        for s in things:
            region = masks[s["instance_id"]] & ~painted
            assert torch.equal(pan == s["id"], region)
            assert s["category_id"] == classes[s["instance_id"]]
            painted |= region
        stuff_info = [s for s in info if not s["isthing"]]
        assert {s["category_id"] for s in stuff_info} <= {1, 2}
        for s in stuff_info:
            assert (pan == s["id"]).sum() == s["area"] >= 30
        assert pan.dtype == torch.int32
        assert (pan[:5] == 0).logical_or(painted[:5]).all()


def test_panoptic_merge_without_things():
    stuff = torch.zeros((4, 16, 16))
    pan, info = combine_panoptic(
        MaskCrops.from_masks(torch.zeros((0, 16, 16), dtype=torch.bool)),
        torch.zeros(0),
        torch.zeros(0, dtype=torch.int64),
        *stuff.max(0),
        len(stuff),
        overlap_thresh=0.5,
        stuff_area_limit=1,
        inst_thresh=0.2,
        thing_channel=0,
        stuff_category_offset=0,
    )
    assert info == [] and pan.eq(0).all()
