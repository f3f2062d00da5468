"""Panoptic FCN post-processing (``postprocess.py``) against a whole-canvas reference.

The reference is the straightforward definition: every candidate resized on the whole canvas
(``resize_probs``) and thresholded, detectron2's ``BitMasks`` boxes, things painted one by one
in score order (the official rule), stuff labels from one argmax over all channels.

PyTorch's bilinear kernel rounds differently with the tensor shape (one channel vs K, a crop vs
the canvas; measured: 1-2 float32 ulps at stride 2 and 3, none at 4 and 8 on this CPU), so a
mask may differ from the reference only at pixels whose probability is within rounding of the
threshold; everything computed from the masks must then be identical.
"""

import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks

from panoptic_ext.modeling.panoptic_fcn.inference import (
    InferenceSettings,
    LowResPredictions,
    _max_filter,
)
from panoptic_ext.modeling.panoptic_fcn.postprocess import (
    MaskCrops,
    postprocess_image,
    resize_probs,
    resize_stuff,
    thing_mask_crops,
)

SETTINGS = InferenceSettings(
    thing_thres=0.05,
    stuff_thres=0.05,
    top_num=100,
    level_top_num=50,
    peak_smooth_sizes=(3, 3, 3, 5, 5),
    peak_pool_size=3,
    mask_thres=0.4,
    similar_thres=0.9,
    class_specific=True,
    score_floor=0.05,
    combine=True,
    overlap_thresh=0.5,
    stuff_area_limit=40,
    inst_thresh=0.2,
    thing_channel=0,
    stuff_category_offset=0,
)


def _blobs(k: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """(k, h, w) probabilities: one soft blob per map (random centre and size) plus noise,
    dense around the 0.4 threshold so that rounding-sized differences would show."""
    ys = torch.arange(h).view(1, h, 1).float()
    xs = torch.arange(w).view(1, 1, w).float()
    cy, cx = torch.rand(k, 1, 1, generator=gen) * h, torch.rand(k, 1, 1, generator=gen) * w
    r = 0.5 + torch.rand(k, 1, 1, generator=gen) * max(h, w) / 3
    d2 = ((ys - cy) ** 2 + (xs - cx) ** 2) / r**2
    noise = torch.rand(k, h, w, generator=gen) * 0.1
    return (torch.exp(-d2) * 0.9 + noise).clamp(0, 1)


ROUNDING = 1e-6  # far above a few float32 ulps of a probability


def _assert_masks_match(masks, probs, stride, image_size, out_size, thres):
    """``masks`` == resize_probs(...) > thres except where the value is within rounding."""
    ref_vals = resize_probs(probs, stride, image_size, out_size)
    differ = masks != (ref_vals > thres)
    near = (ref_vals - thres).abs() <= ROUNDING
    assert not (differ & ~near).any()


@pytest.mark.parametrize(
    "stride,low,image_size,out_size",
    [
        (4, (20, 26), (80, 104), (80, 104)),  # canvas = image
        (4, (20, 26), (77, 99), (77, 99)),  # padded canvas, cropped
        (2, (33, 17), (64, 30), (64, 30)),
        (8, (9, 12), (70, 90), (70, 90)),
        (3, (11, 13), (31, 37), (31, 37)),  # not a power of two: whole-map path
        (4, (20, 26), (77, 99), (51, 66)),  # second resize, smaller
        (4, (12, 10), (45, 40), (97, 83)),  # second resize, larger
    ],
)
def test_thing_masks_equal_the_whole_canvas(stride, low, image_size, out_size):
    gen = torch.Generator().manual_seed(stride * 100 + low[0])
    probs = _blobs(24, *low, gen)
    probs[0] = 0.0  # nothing
    probs[1] = 0.4  # exactly the threshold everywhere: only rounding decides
    probs[2, -1, -1] = 0.95  # a single pixel in the padded corner
    probs[3] = 0.41  # everything just above
    got = thing_mask_crops(probs, stride, image_size, out_size, 0.4)
    _assert_masks_match(got.masks, probs, stride, image_size, out_size, 0.4)
    assert torch.equal(got.boxes.float(), BitMasks(got.masks).get_bounding_boxes().tensor)
    assert torch.equal(got.areas, got.masks.sum((1, 2)))
    assert got.masks[3].all() and not got.masks[0].any()
    assert got.masks[4:].sum() > 0.02 * got.masks[4:].numel()  # the blobs are not all empty


def test_empty_mask_has_a_zero_box():
    """detectron2's convention; the earlier masks_to_boxes gave the whole image."""
    masks = torch.zeros((2, 5, 7), dtype=torch.bool)
    masks[1, 1:3, 2:6] = True
    crops = MaskCrops.from_masks(masks)
    assert crops.boxes.tolist() == [[0, 0, 0, 0], [2, 1, 6, 3]]
    assert crops.areas.tolist() == [0, 8]


@pytest.mark.parametrize("out_size", [(77, 99), (40, 50)])
def test_stuff_resize_and_argmax(out_size):
    gen = torch.Generator().manual_seed(3)
    probs = torch.rand(6, 20, 26, generator=gen)
    present = torch.tensor([True, False, True, True, False, True])
    probs[~present] = 0
    probs[3, :5] = probs[2, :5]  # exact ties: the first channel wins
    sem_seg, best, label = resize_stuff(probs, present, 4, (77, 99), out_size)
    ref = resize_probs(probs, 4, (77, 99), out_size)
    assert (sem_seg - ref).abs().max() <= ROUNDING and sem_seg[~present].eq(0).all()
    ref_best, ref_label = sem_seg.max(0)  # first maximum, as torch.argmax
    assert torch.equal(best, ref_best) and torch.equal(label, ref_label)
    assert label[:20].eq(2).any()  # the tie rows go to channel 2, not 3
    none = resize_stuff(probs, torch.zeros(6, dtype=torch.bool), 4, (77, 99), out_size)
    assert none[0].eq(0).all() and none[1].eq(0).all()


def _reference_postprocess(pred, masks, sem, st):
    """The definition, on whole-canvas tensors, from given masks and stuff probabilities."""
    valid = pred.thing_valid[0]
    scores, classes = pred.thing_scores[0][valid], pred.thing_classes[0][valid]
    pan = torch.zeros(masks.shape[-2:], dtype=torch.int32)
    info = []
    for i in range(len(masks)):
        area = int(masks[i].sum())
        if scores[i] < st.inst_thresh or area == 0:
            continue
        overlap = int((masks[i] & (pan > 0)).sum())
        if overlap / area > st.overlap_thresh:
            continue
        new = masks[i] & (pan == 0)
        pan[new] = len(info) + 1
        info.append(
            {
                "id": len(info) + 1,
                "isthing": True,
                "score": float(scores[i]),
                "category_id": int(classes[i]),
                "instance_id": i,
                "area": int(new.sum()),
            }
        )
    label = sem.argmax(0)
    for c in range(1, sem.shape[0]):
        region = (label == c) & (pan == 0) & (sem.max(0).values > 0)
        if region.sum() >= st.stuff_area_limit:
            pan[region] = len(info) + 1
            info.append(
                {"id": len(info) + 1, "isthing": False, "category_id": c, "area": int(region.sum())}
            )
    return BitMasks(masks).get_bounding_boxes().tensor, pan, info


@pytest.mark.parametrize("out_size", [(77, 99), (61, 70)])
def test_postprocess_equals_the_definition(out_size):
    gen = torch.Generator().manual_seed(5)
    k, s = 30, 5
    scores = torch.rand(k, generator=gen).sort(descending=True).values
    present = torch.tensor([True, True, False, True, True])
    stuff = torch.rand(s, 20, 26, generator=gen) * present[:, None, None]
    pred = LowResPredictions(
        thing_probs=_blobs(k, 20, 26, gen)[None],
        thing_scores=scores[None],
        thing_classes=torch.randint(0, 3, (1, k), generator=gen),
        thing_valid=(scores >= 0.1)[None],
        stuff_probs=stuff[None],
        stuff_present=present[None],
    )
    out = postprocess_image(pred, 0, 4, (77, 99), out_size, SETTINGS)
    inst = out["instances"]
    valid = pred.thing_valid[0]
    _assert_masks_match(inst.pred_masks, pred.thing_probs[0][valid], 4, (77, 99), out_size, 0.4)
    ref_sem = resize_probs(pred.stuff_probs[0], 4, (77, 99), out_size)
    assert (out["sem_seg"] - ref_sem).abs().max() <= ROUNDING
    boxes, pan, info = _reference_postprocess(pred, inst.pred_masks, out["sem_seg"], SETTINGS)
    assert torch.equal(inst.pred_boxes.tensor, boxes)
    assert torch.equal(out["panoptic_seg"][0], pan)
    assert out["panoptic_seg"][1] == info
    assert sum(s["isthing"] for s in info) >= 3 and sum(not s["isthing"] for s in info) >= 2


@pytest.mark.parametrize("size", [3, 5])
def test_peak_max_filter_equals_max_pool(size):
    x = torch.rand(2, 3, 9, 13, generator=torch.Generator().manual_seed(size))
    x[0, 0, :3, :3] = 0.5  # plateaus: ties must stay ties
    ref = F.max_pool2d(x, size, stride=1, padding=(size - 1) // 2)
    assert torch.equal(_max_filter(x, size), ref)
