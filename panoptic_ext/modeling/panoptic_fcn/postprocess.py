"""Panoptic FCN inference, part 2: one image's low-res predictions -> detectron2 outputs.

:func:`postprocess_image` gives ``{"instances", "sem_seg", "panoptic_seg"}`` at the output size
from the image's slice of :class:`~.inference.LowResPredictions`. Output sizes differ per image,
so this part runs per image, as detectron2's post-processing does. Pure functions of tensors.

Why it is written by hand (measured at 800x1216 with 100 instances: a whole-canvas version spent
~80 % of the post-processing in (K, H, W) float copies, ``argmax`` and ``any`` over candidates):
a thing mask is thresholded bilinear upsampling, and a bilinear value is a convex combination of
its 4 source pixels, so output pixels whose source neighbourhood stays below the threshold are
False without being computed. Each candidate is upsampled only on the crop around its low-res
support (:func:`thing_mask_crops`), with margins that give every value the source coordinates
and weights of upsampling the whole canvas; the panoptic merge paints those crops in score order
(:func:`paint_things`), and the stuff label map is a running max over the present stuff
channels (:func:`resize_stuff`). Work buffers are reused: fresh multi-MB CPU allocations
page-fault on first touch (measured: 4x the cost of the threshold itself).

Equality: PyTorch's bilinear kernel itself rounds differently with the tensor shape (one
channel vs K, crop vs canvas: 0-2 float32 ulps, measured), so a mask pixel can differ from a
whole-canvas computation only where its probability is within ~1e-7 of the threshold.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances

from .inference import InferenceSettings, LowResPredictions, bool_as_uint8

__all__ = [
    "MaskCrops",
    "resize_probs",
    "thing_mask_crops",
    "paint_things",
    "resize_stuff",
    "paint_stuff",
    "combine_panoptic",
    "postprocess_image",
]

# Relative margin below the mask threshold under which a low-res probability cannot make an
# upsampled pixel pass it, even through a second resize: a bilinear value exceeds the max of
# its sources by a few float32 ulps at most (~3e-7 relative per resize).
_SUPPORT_MARGIN = 2e-5
# Low-res margin (pixels) of a thing crop around its support: 2 rows/cols of neighbours that
# can be above threshold after upsampling + 1 so no crop border clamps an interpolation.
_CROP_MARGIN = 3


def resize_probs(
    probs: torch.Tensor, stride: int, image_size: tuple[int, int], out_size: tuple[int, int]
) -> torch.Tensor:
    """Stride-s probabilities on the padded canvas -> probabilities at the output size.

    Upsample by ``stride`` (bilinear), crop the valid ``image_size``, resize to ``out_size``.

    Args:
        probs: (K, Hf, Wf).
    Returns:
        (K, H_out, W_out).
    """
    if probs.shape[0] == 0:
        return probs.new_zeros((0, *out_size))
    hf, wf = probs.shape[-2:]
    x = F.interpolate(probs[None], (hf * stride, wf * stride), mode="bilinear", align_corners=False)
    x = x[:, :, : image_size[0], : image_size[1]]
    if tuple(image_size) != tuple(out_size):
        x = F.interpolate(x, out_size, mode="bilinear", align_corners=False)
    return x[0]


@dataclass
class MaskCrops:
    """K binary masks of one H x W image with their tight boxes, so that work on a mask can be
    limited to its box.

    Attributes:
        masks: (K, H, W) bool.
        boxes: (K, 4) int64 XYXY, x1/y1 exclusive; (0, 0, 0, 0) for an empty mask (detectron2's
            ``BitMasks.get_bounding_boxes`` convention).
        areas: (K,) int64 pixel counts.
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    areas: torch.Tensor

    def __len__(self) -> int:
        return len(self.masks)

    def crop(self, i: int, box: list[int]) -> torch.Tensor:
        """View of mask ``i`` inside ``box`` (its row of ``boxes``, as Python ints)."""
        x0, y0, x1, y1 = box
        return self.masks[i, y0:y1, x0:x1]

    @classmethod
    def from_masks(cls, masks: torch.Tensor) -> "MaskCrops":
        """From (K, H, W) bool masks."""
        return cls._build(masks, [_tight_box(m, 0, 0) for m in masks])

    @classmethod
    def _build(cls, masks: torch.Tensor, items: list[tuple[tuple, int]]) -> "MaskCrops":
        """``items``: per mask ((x0, y0, x1, y1), area)."""
        boxes = torch.tensor([b for b, _ in items], dtype=torch.long).view(-1, 4)
        areas = torch.tensor([a for _, a in items], dtype=torch.long)
        return cls(masks, boxes.to(masks.device), areas.to(masks.device))


def _tight_box(mask: torch.Tensor, y0: int, x0: int) -> tuple[tuple, int]:
    """(box, area) of a bool ``mask`` (2-D, possibly a view) whose top-left pixel is (y0, x0)."""
    u8 = bool_as_uint8(mask)  # amax over uint8 is ~30x faster than any() over bool
    rows = torch.nonzero(u8.amax(1)).flatten()
    if len(rows) == 0:
        return (0, 0, 0, 0), 0
    cols = torch.nonzero(u8.amax(0)).flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    area = int(torch.count_nonzero(mask[r0:r1, c0:c1]))
    return (x0 + c0, y0 + r0, x0 + c1, y0 + r1), area


def _support_ranges(probs: torch.Tensor, thres: float) -> list[list[int]]:
    """Per candidate [has, row0, row1, col0, col1]: the low-res rows/cols (inclusive) where a
    probability may pass ``thres`` after bilinear resizing; has = 0 when nowhere."""
    lim = thres - _SUPPORT_MARGIN * abs(thres)
    sup = probs > lim
    rows, cols = sup.any(2), sup.any(1)
    hf, wf = probs.shape[-2:]
    first = lambda x: x.to(torch.uint8).argmax(1)  # noqa: E731
    bounds = [
        rows.any(1).long(),
        first(rows),
        hf - 1 - first(rows.flip(1)),
        first(cols),
        wf - 1 - first(cols.flip(1)),
    ]
    return torch.stack(bounds, 1).tolist()


def _crop_range(u0: int, u1: int, n_low: int, stride: int, n_img: int, exact: bool):
    """Low-res rows [a, b) to upsample for support rows [u0, u1], and the image rows [y0, y1)
    that can pass the threshold (rows outside only see sources below it). With ``exact``
    (power-of-two stride: source coordinates and weights are exact in float32, so a crop gets
    the same ones as the canvas once ``_CROP_MARGIN`` rows keep its borders from clamping) a
    crop is used; otherwise the whole column is upsampled."""
    y0, y1 = max(stride * (u0 - _CROP_MARGIN + 1), 0), min(stride * (u1 + _CROP_MARGIN), n_img)
    if not exact:
        return 0, n_low, y0, y1
    return max(u0 - _CROP_MARGIN, 0), min(u1 + _CROP_MARGIN + 1, n_low), y0, y1


def thing_mask_crops(
    probs: torch.Tensor,
    stride: int,
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    thres: float,
) -> MaskCrops:
    """``resize_probs(probs, ...) > thres`` computed only where it can be True.

    Equal to thresholding :func:`resize_probs` (up to the kernel's rounding, see the module
    docstring): each candidate is upsampled on the crop around its low-res support only
    (see :func:`_crop_range`); when ``out_size`` differs from
    ``image_size``, the crop is pasted on a zero canvas and resized whole (zeros only replace
    sources that are below the threshold, which cannot lift a value above it). Work buffers
    are reused across candidates: fresh multi-MB allocations page-fault on every call.

    Args:
        probs: (K, Hf, Wf) float32 probabilities on the padded canvas (stride ``stride``).
        image_size: (h, w) of the valid input region; out_size: (H, W) of the output.
    Returns:
        :class:`MaskCrops` of size ``out_size``.
    """
    k, hf, wf = probs.shape
    exact = stride & (stride - 1) == 0
    same = tuple(image_size) == tuple(out_size)
    masks = torch.zeros((k, *out_size), dtype=torch.bool, device=probs.device)
    ranges = []
    for has, u0, u1, v0, v1 in _support_ranges(probs, thres):
        rows = _crop_range(u0, u1, hf, stride, image_size[0], exact)
        cols = _crop_range(v0, v1, wf, stride, image_size[1], exact)
        empty = not has or rows[3] <= rows[2] or cols[3] <= cols[2]
        ranges.append(None if empty else (rows, cols))
    sizes = [(r[1] - r[0]) * (c[1] - c[0]) for r, c in filter(None, ranges)]
    work = probs.new_empty(max(sizes, default=0) * stride * stride)
    canvas = None if same else probs.new_empty(image_size)
    resized = None if same else probs.new_empty(out_size)
    items = []
    for i, rc in enumerate(ranges):
        if rc is None:
            items.append(((0, 0, 0, 0), 0))
            continue
        (a, b, y0, y1), (c, d, x0, x1) = rc
        up = work[: (b - a) * (d - c) * stride * stride].view(1, 1, (b - a) * stride, -1)
        torch.ops.aten.upsample_bilinear2d.out(
            probs[i, a:b, c:d][None, None], list(up.shape[-2:]), False, None, None, out=up
        )
        vals = up[0, 0, y0 - a * stride : y1 - a * stride, x0 - c * stride : x1 - c * stride]
        if same:
            torch.gt(vals, thres, out=masks[i, y0:y1, x0:x1])
            items.append(_tight_box(masks[i, y0:y1, x0:x1], y0, x0))
            continue
        canvas.zero_()
        canvas[y0:y1, x0:x1] = vals
        torch.ops.aten.upsample_bilinear2d.out(
            canvas[None, None], list(out_size), False, None, None, out=resized[None, None]
        )
        torch.gt(resized, thres, out=masks[i])
        items.append(_tight_box(masks[i], 0, 0))
    return MaskCrops._build(masks, items)


def paint_things(
    masks: MaskCrops,
    scores: torch.Tensor,
    *,
    overlap_thresh: float,
    inst_thresh: float,
) -> tuple[torch.Tensor, list[int], list[int]]:
    """Paint things in the given (score) order; skip one when more than ``overlap_thresh`` of
    it is already painted or its score is below ``inst_thresh`` (the official sequential rule).

    Works on the crops only: a thing costs a few passes over its own box.

    Args:
        masks: K thing masks (sorted by descending score); scores: (K,).
    Returns:
        panoptic (H, W) int32 with thing segment ids 1..n (0 = unpainted), the indices of the n
        painted things, and their painted pixel counts.
    """
    h, w = masks.masks.shape[-2:]
    device = masks.masks.device
    pan = torch.zeros((h, w), dtype=torch.int32, device=device)
    covered = torch.zeros((h, w), dtype=torch.bool, device=device)
    passing = (scores >= inst_thresh).tolist()
    kept, painted = [], []
    for i, (box, area) in enumerate(zip(masks.boxes.tolist(), masks.areas.tolist())):
        if not passing[i] or area == 0:
            continue
        x0, y0, x1, y1 = box
        m, cov = masks.crop(i, box), covered[y0:y1, x0:x1]
        overlap = int(torch.count_nonzero(m & cov))
        if overlap / area > overlap_thresh:
            continue
        pan[y0:y1, x0:x1].masked_fill_(m & ~cov if overlap else m, len(kept) + 1)
        cov |= m
        kept.append(i)
        painted.append(area - overlap)
    return pan, kept, painted


def _resize_into(
    prob: torch.Tensor,
    stride: int,
    image_size: tuple[int, int],
    out: torch.Tensor,
    work: torch.Tensor | None,
) -> torch.Tensor | None:
    """:func:`resize_probs` of one (Hf, Wf) map written into ``out`` (H, W); ``work`` is a
    reusable buffer for the stride-upsampled canvas (returned, possibly newly allocated)."""
    hf, wf = prob.shape
    canvas = (hf * stride, wf * stride)
    if canvas == tuple(image_size) == tuple(out.shape):
        torch.ops.aten.upsample_bilinear2d.out(
            prob[None, None], list(canvas), False, out=out[None, None]
        )
        return work
    if work is None:
        work = prob.new_empty((1, 1, *canvas))
    torch.ops.aten.upsample_bilinear2d.out(prob[None, None], list(canvas), False, out=work)
    crop = work[:, :, : image_size[0], : image_size[1]]
    if tuple(image_size) == tuple(out.shape):
        out.copy_(crop[0, 0])
    else:
        torch.ops.aten.upsample_bilinear2d.out(crop, list(out.shape), False, out=out[None, None])
    return work


def resize_stuff(
    probs: torch.Tensor,
    present: torch.Tensor,
    stride: int,
    image_size: tuple[int, int],
    out_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stuff probabilities at the output size and their per-pixel max / first argmax.

    Channel by channel (into the output, through one reused buffer) with a running max, so no
    (S, H, W) temporary is written twice; absent channels are zero and never win the argmax
    where it matters (a pixel with max 0 is never painted).

    Args:
        probs: (S, Hf, Wf) float32; present: (S,) bool.
    Returns:
        sem_seg (S, H, W) float32 (= :func:`resize_probs` of every channel, 0 where absent),
        best (H, W) float32 max over channels, label (H, W) int64 first channel attaining it.
    """
    s = probs.shape[0]
    sem_seg = probs.new_empty((s, *out_size))
    best = probs.new_zeros(out_size)
    label = torch.zeros(out_size, dtype=torch.long, device=probs.device)
    channels = torch.nonzero(present).flatten().tolist()
    absent = sorted(set(range(s)) - set(channels))
    sem_seg[absent] = 0
    work = None
    for j, c in enumerate(channels):
        x = sem_seg[c]
        work = _resize_into(probs[c], stride, image_size, x, work)
        if j == 0:
            best.copy_(x)
            label.fill_(c)
            continue
        label.masked_fill_(x > best, c)
        torch.maximum(best, x, out=best)
    return sem_seg, best, label


def paint_stuff(
    pan: torch.Tensor,
    best: torch.Tensor,
    label: torch.Tensor,
    num_channels: int,
    *,
    first_id: int,
    stuff_area_limit: int,
    thing_channel: int | None,
) -> tuple[torch.Tensor, list[int], list[int]]:
    """Give every unpainted pixel its stuff label; paint labels of >= ``stuff_area_limit`` such
    pixels (never ``thing_channel``, never where every probability is 0).

    Args:
        pan: (H, W) int32, 0 = unpainted; best: (H, W) max stuff probability; label: (H, W)
            int64 argmax channel in [0, num_channels).
        first_id: segment id of the first painted stuff class.
    Returns:
        the panoptic map, the painted channels (ascending, ids first_id, first_id + 1, ...)
        and their areas.
    """
    free = (pan == 0) & (best > 0)
    if thing_channel is not None:
        free &= label != thing_channel
    s = num_channels
    areas = torch.bincount(torch.where(free, label, s).flatten(), minlength=s + 1)[:s]
    chosen = areas >= stuff_area_limit
    if thing_channel is not None:
        chosen[thing_channel] = False
    lut = torch.where(chosen, first_id - 1 + torch.cumsum(chosen.int(), 0), 0).to(torch.int32)
    pan = torch.where(free, lut[label], pan)
    channels = torch.nonzero(chosen).flatten()
    return pan, channels.tolist(), areas[channels].tolist()


def combine_panoptic(
    thing_masks: MaskCrops,
    thing_scores: torch.Tensor,
    thing_classes: torch.Tensor,
    stuff_best: torch.Tensor,
    stuff_label: torch.Tensor,
    num_stuff: int,
    *,
    overlap_thresh: float,
    stuff_area_limit: int,
    inst_thresh: float,
    thing_channel: int | None,
    stuff_category_offset: int,
) -> tuple[torch.Tensor, list[dict]]:
    """Paint things (score order, skip mostly-covered ones), then large stuff regions.

    Args:
        thing_masks: K masks sorted by descending score; thing_scores: (K,);
        thing_classes: (K,) contiguous thing ids; stuff_best / stuff_label: (H, W) max stuff
        probability and its first argmax channel (of ``num_stuff``), see :func:`resize_stuff`.
        thing_channel: stuff channel of the merged "things" class (never painted), or None.
        stuff_category_offset: stuff category_id = channel + offset.
    Returns:
        panoptic (H, W) int32 (0 = void) and detectron2 ``segments_info``. Thing entries have
        ``instance_id`` = index into the inputs.
    """
    pan, kept, thing_areas = paint_things(
        thing_masks, thing_scores, overlap_thresh=overlap_thresh, inst_thresh=inst_thresh
    )
    pan, stuff, stuff_areas = paint_stuff(
        pan,
        stuff_best,
        stuff_label,
        num_stuff,
        first_id=len(kept) + 1,
        stuff_area_limit=stuff_area_limit,
        thing_channel=thing_channel,
    )
    scores, classes = thing_scores[kept].tolist(), thing_classes[kept].tolist()
    info = [
        {"id": j + 1, "isthing": True, "score": s, "category_id": c, "instance_id": i, "area": a}
        for j, (i, s, c, a) in enumerate(zip(kept, scores, classes, thing_areas))
    ]
    info += [
        {
            "id": len(kept) + j + 1,
            "isthing": False,
            "category_id": c + stuff_category_offset,
            "area": a,
        }
        for j, (c, a) in enumerate(zip(stuff, stuff_areas))
    ]
    return pan, info


def postprocess_image(
    pred: LowResPredictions,
    index: int,
    stride: int,
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    st: InferenceSettings,
) -> dict:
    """Image ``index`` of a batch -> ``{"instances", "sem_seg"[, "panoptic_seg"]}`` at
    ``out_size``.

    Args:
        pred: batched low-res predictions; stride: input pixels per low-res pixel.
        image_size: (h, w) of the image inside the padded input; out_size: (H, W) output size.
    Returns:
        "instances": ``Instances`` (pred_masks (K, H, W) bool, pred_boxes, scores,
        pred_classes); "sem_seg": (S, H, W) float32 stuff probabilities (0 for absent
        classes); "panoptic_seg": ((H, W) int32, segments_info) when ``st.combine``.
    """
    valid = pred.thing_valid[index]
    scores = pred.thing_scores[index][valid]
    classes = pred.thing_classes[index][valid]
    masks = thing_mask_crops(
        pred.thing_probs[index][valid], stride, image_size, out_size, st.mask_thres
    )
    instances = Instances(out_size)
    instances.pred_masks = masks.masks
    instances.pred_boxes = Boxes(masks.boxes.float())
    instances.scores = scores
    instances.pred_classes = classes
    sem_seg, best, label = resize_stuff(
        pred.stuff_probs[index], pred.stuff_present[index], stride, image_size, out_size
    )
    result = {"instances": instances, "sem_seg": sem_seg}
    if st.combine:
        result["panoptic_seg"] = combine_panoptic(
            masks,
            scores,
            classes,
            best,
            label,
            len(sem_seg),
            overlap_thresh=st.overlap_thresh,
            stuff_area_limit=st.stuff_area_limit,
            inst_thresh=st.inst_thresh,
            thing_channel=st.thing_channel,
            stuff_category_offset=st.stuff_category_offset,
        )
    return result
