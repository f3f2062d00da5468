"""Training targets of Panoptic FCN, computed for the whole batch at once.

Things: soft stride-s masks, mass centers, level assignment by sqrt(box area), CornerNet-radius
Gaussian center heatmaps and per-level guidance regions. Stuff: soft stride-s one-hot maps and
per-level soft region targets. All objects of the batch are handled as one flat set (M objects
with a batch index); the only Python loop is over head levels.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.structures import Instances

__all__ = [
    "PanopticFCNTargets",
    "exact_bilinear_downsample",
    "collate_ground_truth",
    "gaussian_radius",
    "draw_center_heatmaps",
    "stuff_soft_maps",
    "build_targets",
]


@dataclass
class LevelThingTargets:
    """Things trained at one head level.

    Attributes:
        obj: (M_l,) int64 index into the batch's flat object list.
        guide: (M_l, H_l * W_l) bool, pixels where the object's resized mask > guidance threshold.
    """

    obj: torch.Tensor
    guide: torch.Tensor


@dataclass
class PanopticFCNTargets:
    """Targets of one batch (N images, M objects, L head levels, stride-s size Hf x Wf).

    Attributes:
        center_heatmaps: L x (N, T, H_l, W_l) float in [0, 1], Gaussian peaks at object centers.
        stuff_scores: L x (N, S, H_l, W_l) float in {0} U [gt_thres, 1], soft stuff regions.
        thing_masks: (M, Hf * Wf) float soft stride-s object masks.
        thing_batch: (M,) int64 image index; thing_classes: (M,) int64 contiguous thing class.
        levels: L x LevelThingTargets.
        stuff_masks: (N, S, Hf * Wf) float soft stride-s stuff maps.
        num_thing_pairs: number of valid (object, level) pairs in the batch (int).
    """

    center_heatmaps: list[torch.Tensor]
    stuff_scores: list[torch.Tensor]
    thing_masks: torch.Tensor
    thing_batch: torch.Tensor
    thing_classes: torch.Tensor
    levels: list[LevelThingTargets]
    stuff_masks: torch.Tensor
    num_thing_pairs: int


def exact_bilinear_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear (align_corners=False) downsampling of the last two dims by an integer factor.

    Equal to ``F.interpolate(x, size=(H // f, W // f), mode="bilinear")`` when H and W are
    multiples of ``factor``, but computed from 1-4 strided slices, so it never materialises a
    float copy of the full-resolution input (bool / uint8 masks stay cheap).

    Args:
        x: (..., H, W) any dtype, H and W divisible by ``factor``.
    Returns:
        (..., H // factor, W // factor) float32.
    """
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"size {(h, w)} is not a multiple of the downsampling factor {factor}")
    offs = [factor // 2 - 1, factor // 2] if factor % 2 == 0 else [factor // 2]
    out = None
    for dy in offs:
        for dx in offs:
            s = x[..., dy::factor, dx::factor].float()
            out = s if out is None else out + s
    return out / (len(offs) ** 2)


def collate_ground_truth(
    instances: list[Instances | None],
    sem_segs: list[torch.Tensor | None],
    padded_size: tuple[int, int],
    ignore_value: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Pad per-image ground truth to the batch canvas and flatten the objects of all images.

    Args:
        instances: per image ``Instances`` with gt_masks (BitMasks, image size), gt_boxes,
            gt_classes; ``None`` or zero-length for images without things.
        sem_segs: per image (h, w) int64 labels or ``None`` (all void).
        padded_size: (Hp, Wp) of the batched images (bottom/right padding).
    Returns:
        dict with "masks" (M, Hp, Wp) bool, "boxes" (M, 4) float, "classes" (M,) int64,
        "batch" (M,) int64 and "sem_seg" (N, Hp, Wp) int64 (padding = ``ignore_value``).
    """
    hp, wp = padded_size
    masks, boxes, classes, batch = [], [], [], []
    for i, inst in enumerate(instances):  # collation only: pads each image's tensors once
        if inst is None or len(inst) == 0:
            continue
        m = inst.gt_masks.tensor.to(device=device, dtype=torch.bool)
        masks.append(F.pad(m, (0, wp - m.shape[-1], 0, hp - m.shape[-2])))
        boxes.append(inst.gt_boxes.tensor.to(device=device, dtype=torch.float32))
        classes.append(inst.gt_classes.to(device=device, dtype=torch.int64))
        batch.append(torch.full((len(inst),), i, dtype=torch.int64, device=device))
    sem = torch.full((len(sem_segs), hp, wp), ignore_value, dtype=torch.int64, device=device)
    for i, s in enumerate(sem_segs):
        if s is not None:
            sem[i, : s.shape[-2], : s.shape[-1]] = s.to(device)
    if not masks:
        return {
            "masks": torch.zeros((0, hp, wp), dtype=torch.bool, device=device),
            "boxes": torch.zeros((0, 4), device=device),
            "classes": torch.zeros((0,), dtype=torch.int64, device=device),
            "batch": torch.zeros((0,), dtype=torch.int64, device=device),
            "sem_seg": sem,
        }
    return {
        "masks": torch.cat(masks),
        "boxes": torch.cat(boxes),
        "classes": torch.cat(classes),
        "batch": torch.cat(batch),
        "sem_seg": sem,
    }


def gaussian_radius(h: torch.Tensor, w: torch.Tensor, min_overlap: float) -> torch.Tensor:
    """CornerNet Gaussian radius (variant without the 1/a factor, as the official code).

    Args:
        h, w: (M,) box height/width in level pixels.
    Returns:
        (M,) int64 radius >= 0 (truncated).
    """
    o = min_overlap
    b1 = h + w
    c1 = w * h * (1 - o) / (1 + o)
    r1 = (b1 + torch.sqrt((b1**2 - 4 * c1).clamp(min=0))) / 2
    b2 = 2 * (h + w)
    c2 = (1 - o) * w * h
    r2 = (b2 + torch.sqrt((b2**2 - 16 * c2).clamp(min=0))) / 2
    b3 = -2 * o * (h + w)
    c3 = (o - 1) * w * h
    r3 = (b3 + torch.sqrt((b3**2 - 16 * o * c3).clamp(min=0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3).clamp(min=0).long()


def draw_center_heatmaps(
    centers: torch.Tensor,
    radius: torch.Tensor,
    channel: torch.Tensor,
    num_channels: int,
    size: tuple[int, int],
    sigma_factor: float,
) -> torch.Tensor:
    """Draw one truncated Gaussian per object (peak 1) and max-combine them.

    Args:
        centers: (M, 2) int64 (x, y) level pixel; radius: (M,) int64.
        channel: (M,) int64 flat output channel (image * num_classes + class).
        num_channels: number of output channels (N * T).
        size: (H_l, W_l). sigma_factor: sigma = (2 r + 1) / sigma_factor.
    Returns:
        (num_channels, H_l, W_l) float32.
    """
    h, w = size
    heat = torch.zeros((num_channels, h * w), device=centers.device)
    if len(centers) == 0:
        return heat.view(num_channels, h, w)
    ys = torch.arange(h, device=centers.device).view(1, h, 1)
    xs = torch.arange(w, device=centers.device).view(1, 1, w)
    dx = xs - centers[:, 0].view(-1, 1, 1)
    dy = ys - centers[:, 1].view(-1, 1, 1)
    r = radius.view(-1, 1, 1)
    sigma = (2 * r + 1).float() / sigma_factor
    g = torch.exp(-(dx * dx + dy * dy).float() / (2 * sigma * sigma))
    inside = (dx.abs() <= r) & (dy.abs() <= r) & (g >= torch.finfo(torch.float32).eps)
    g = torch.where(inside, g, torch.zeros_like(g))
    index = channel[:, None].expand(-1, h * w)
    heat.scatter_reduce_(0, index, g.view(len(centers), -1), "amax", include_self=True)
    return heat.view(num_channels, h, w)


def stuff_soft_maps(
    sem_seg: torch.Tensor, num_classes: int, label_offset: int, factor: int
) -> torch.Tensor:
    """Soft one-hot stuff maps at stride ``factor`` (bilinear downsampling of the one-hot maps).

    Args:
        sem_seg: (N, Hp, Wp) int64 labels; labels outside [label_offset, label_offset + S) (void,
            or the "things" label 0 when it is not a stuff channel) give all-zero columns.
        num_classes: S. label_offset: label of stuff channel 0.
    Returns:
        (N, S, Hp / factor, Wp / factor) float32 in [0, 1].
    """
    lab = sem_seg - label_offset
    lab = torch.where((lab >= 0) & (lab < num_classes), lab, torch.full_like(lab, num_classes))
    onehot = F.one_hot(lab, num_classes + 1)[..., :num_classes].to(torch.uint8)
    return exact_bilinear_downsample(onehot.permute(0, 3, 1, 2), factor)


def build_targets(
    gt: dict[str, torch.Tensor],
    level_sizes: list[tuple[int, int]],
    *,
    num_images: int,
    num_thing_classes: int,
    num_stuff_classes: int,
    stuff_label_offset: int,
    common_stride: int,
    instance_scales: list[list[float]],
    center_type: str,
    min_overlap: float,
    sigma_factor: float,
    guidance_thres: float,
    stuff_gt_thres: float,
) -> PanopticFCNTargets:
    """All Panoptic FCN training targets of a batch (see :class:`PanopticFCNTargets`).

    Args:
        gt: output of :func:`collate_ground_truth`.
        level_sizes: (H_l, W_l) of each head level.
        Other arguments: the ``MODEL.PANOPTIC_FCN`` settings of the same names.
    """
    masks = gt["masks"]
    hp, wp = gt["sem_seg"].shape[-2:]
    device = gt["sem_seg"].device
    hf, wf = hp // common_stride, wp // common_stride
    soft = exact_bilinear_downsample(masks, common_stride)  # (M, Hf, Wf)
    support = soft > 0
    count = support.sum((1, 2)).float()
    boxes = gt["boxes"]
    if center_type == "mass":
        ys = torch.arange(hf, device=device, dtype=torch.float32)
        xs = torch.arange(wf, device=device, dtype=torch.float32)
        cx = (support.sum(1).float() * xs).sum(1) / count.clamp(min=1)
        cy = (support.sum(2).float() * ys).sum(1) / count.clamp(min=1)
    elif center_type == "box":
        cx = (boxes[:, 0] + boxes[:, 2]) / 2 / common_stride
        cy = (boxes[:, 1] + boxes[:, 3]) / 2 / common_stride
    else:
        raise ValueError(
            f"MODEL.PANOPTIC_FCN.POSITION_HEAD.THING.CENTER_TYPE={center_type!r}; "
            "expected 'mass' or 'box'"
        )
    # An object whose mask vanishes at stride s has no center: it is not trained.
    nonempty = count > 0
    bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    scale = torch.sqrt(bw * bh)
    channel = gt["batch"] * num_thing_classes + gt["classes"]

    heatmaps, levels = [], []
    num_pairs = 0
    for (h_l, w_l), (lo, hi) in zip(level_sizes, instance_scales):
        obj = torch.nonzero(nonempty & (scale >= lo) & (scale <= hi)).flatten()
        num_pairs += len(obj)
        x = (cx[obj] * w_l / wf).long().clamp(0, w_l - 1)
        y = (cy[obj] * h_l / hf).long().clamp(0, h_l - 1)
        radius = gaussian_radius(bh[obj] * h_l / hp, bw[obj] * w_l / wp, min_overlap)
        heat = draw_center_heatmaps(
            torch.stack([x, y], 1),
            radius,
            channel[obj],
            num_images * num_thing_classes,
            (h_l, w_l),
            sigma_factor,
        )
        heatmaps.append(heat.view(num_images, num_thing_classes, h_l, w_l))
        if len(obj):
            lvl = F.interpolate(soft[obj, None], (h_l, w_l), mode="bilinear", align_corners=False)
            guide = lvl.flatten(1) > guidance_thres
        else:
            guide = torch.zeros((0, h_l * w_l), dtype=torch.bool, device=device)
        levels.append(LevelThingTargets(obj=obj, guide=guide))

    stuff = stuff_soft_maps(gt["sem_seg"], num_stuff_classes, stuff_label_offset, common_stride)
    stuff_scores = []
    for h_l, w_l in level_sizes:
        s = F.interpolate(stuff, (h_l, w_l), mode="bilinear", align_corners=False).clamp(max=1)
        stuff_scores.append(torch.where(s < stuff_gt_thres, torch.zeros_like(s), s))

    return PanopticFCNTargets(
        center_heatmaps=heatmaps,
        stuff_scores=stuff_scores,
        thing_masks=soft.flatten(1),
        thing_batch=gt["batch"],
        thing_classes=gt["classes"],
        levels=levels,
        stuff_masks=stuff.flatten(2),
        num_thing_pairs=num_pairs,
    )
