"""Training targets of Panoptic FCN, computed for the whole batch at once.

Things: soft stride-s masks, mass centers, level assignment by sqrt(box area), CornerNet-radius
Gaussian center heatmaps and per-level guidance regions. Stuff: soft stride-s one-hot maps and
per-level soft region targets. All objects of the batch are handled as one flat set (M objects
with a batch index); the only Python loop is over head levels.
"""

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.structures import Instances

__all__ = [
    "BatchGroundTruth",
    "CenterType",
    "PanopticFCNTargets",
    "TargetSettings",
    "exact_bilinear_downsample",
    "collate_ground_truth",
    "gaussian_radius",
    "draw_center_heatmaps",
    "stuff_soft_maps",
    "build_targets",
]


class CenterType(str, enum.Enum):
    """Where an object's center is (``POSITION_HEAD.THING.CENTER_TYPE``)."""

    MASS = "mass"  # mean of the mask's pixel coordinates
    BOX = "box"  # center of the box


@dataclass(frozen=True)
class TargetSettings:
    """The ``MODEL.PANOPTIC_FCN`` settings of the training targets (see its config comments)."""

    num_thing_classes: int
    num_stuff_classes: int
    stuff_label_offset: int  # sem_seg label of stuff channel 0 (1 when "things" is no channel)
    common_stride: int
    instance_scales: Sequence[Sequence[float]]  # (lo, hi) sqrt(box area) range per head level
    center_type: CenterType
    min_overlap: float
    sigma_factor: float
    guidance_thres: float
    stuff_gt_thres: float

    def __post_init__(self):
        try:
            object.__setattr__(self, "center_type", CenterType(self.center_type))
        except ValueError:
            raise ValueError(
                f"MODEL.PANOPTIC_FCN.POSITION_HEAD.THING.CENTER_TYPE={self.center_type!r}; "
                f"expected one of {[c.value for c in CenterType]}"
            ) from None

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "TargetSettings":
        p = cfg.MODEL.PANOPTIC_FCN
        thing, stuff = p.POSITION_HEAD.THING, p.POSITION_HEAD.STUFF
        return cls(
            num_thing_classes=thing.NUM_CLASSES,
            num_stuff_classes=stuff.NUM_CLASSES,
            stuff_label_offset=0 if stuff.WITH_THING else 1,
            common_stride=p.SEMANTIC_FPN.COMMON_STRIDE,
            instance_scales=tuple(tuple(s) for s in p.KERNEL_HEAD.INSTANCE_SCALES),
            center_type=thing.CENTER_TYPE,
            min_overlap=thing.MIN_OVERLAP,
            sigma_factor=thing.GAUSSIAN_SIGMA,
            guidance_thres=thing.GUIDANCE_THRES,
            stuff_gt_thres=stuff.GT_THRES,
        )


@dataclass
class BatchGroundTruth:
    """Ground truth of a batch on its padded canvas (Hp, Wp), objects of all images flattened.

    Attributes:
        masks: (M, Hp, Wp) bool; boxes: (M, 4) float XYXY; classes: (M,) int64 thing class;
        batch: (M,) int64 image index; sem_seg: (N, Hp, Wp) int64 (padding = ignore value).
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    classes: torch.Tensor
    batch: torch.Tensor
    sem_seg: torch.Tensor


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
) -> BatchGroundTruth:
    """Pad per-image ground truth to the batch canvas and flatten the objects of all images.

    Args:
        instances: per image ``Instances`` with gt_masks (BitMasks, image size), gt_boxes,
            gt_classes; ``None`` or zero-length for images without things.
        sem_segs: per image (h, w) int64 labels or ``None`` (all void).
        padded_size: (Hp, Wp) of the batched images (bottom/right padding).
    Returns:
        the batch's ground truth, ``sem_seg`` padded with ``ignore_value``.
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
        return BatchGroundTruth(
            masks=torch.zeros((0, hp, wp), dtype=torch.bool, device=device),
            boxes=torch.zeros((0, 4), device=device),
            classes=torch.zeros((0,), dtype=torch.int64, device=device),
            batch=torch.zeros((0,), dtype=torch.int64, device=device),
            sem_seg=sem,
        )
    return BatchGroundTruth(
        torch.cat(masks), torch.cat(boxes), torch.cat(classes), torch.cat(batch), sem
    )


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


def _thing_centers(
    support: torch.Tensor, count: torch.Tensor, boxes: torch.Tensor, settings: TargetSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) x and (M,) y centers in stride-s pixels, by ``settings.center_type``.

    Args:
        support: (M, Hf, Wf) bool stride-s mask support; count: (M,) float its pixel counts.
    """
    if settings.center_type == CenterType.MASS:
        hf, wf = support.shape[-2:]
        ys = torch.arange(hf, device=support.device, dtype=torch.float32)
        xs = torch.arange(wf, device=support.device, dtype=torch.float32)
        cx = (support.sum(1).float() * xs).sum(1) / count.clamp(min=1)
        cy = (support.sum(2).float() * ys).sum(1) / count.clamp(min=1)
        return cx, cy
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 / settings.common_stride
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 / settings.common_stride
    return cx, cy


def _guidance(soft: torch.Tensor, size: tuple[int, int], thres: float) -> torch.Tensor:
    """(M_l, H_l * W_l) bool: level pixels where an object's resized soft mask exceeds ``thres``.

    Args:
        soft: (M_l, Hf, Wf) stride-s soft masks of the objects trained at this level.
    """
    if not len(soft):
        return torch.zeros((0, size[0] * size[1]), dtype=torch.bool, device=soft.device)
    level = F.interpolate(soft[:, None], size, mode="bilinear", align_corners=False)
    return level.flatten(1) > thres


def _stuff_level_scores(
    stuff: torch.Tensor, level_sizes: list[tuple[int, int]], gt_thres: float
) -> list[torch.Tensor]:
    """L x (N, S, H_l, W_l): the stride-s stuff maps resized to each level, zero below
    ``gt_thres``."""
    scores = []
    for h_l, w_l in level_sizes:
        s = F.interpolate(stuff, (h_l, w_l), mode="bilinear", align_corners=False).clamp(max=1)
        scores.append(torch.where(s < gt_thres, torch.zeros_like(s), s))
    return scores


def build_targets(
    gt: BatchGroundTruth,
    level_sizes: list[tuple[int, int]],
    num_images: int,
    settings: TargetSettings,
) -> PanopticFCNTargets:
    """All Panoptic FCN training targets of a batch (see :class:`PanopticFCNTargets`).

    Args:
        gt: output of :func:`collate_ground_truth`.
        level_sizes: (H_l, W_l) of each head level.
        num_images: N.
        settings: the target settings of ``MODEL.PANOPTIC_FCN``.
    """
    hp, wp = gt.sem_seg.shape[-2:]
    stride, num_classes = settings.common_stride, settings.num_thing_classes
    hf, wf = hp // stride, wp // stride
    soft = exact_bilinear_downsample(gt.masks, stride)  # (M, Hf, Wf)
    support = soft > 0
    count = support.sum((1, 2)).float()
    cx, cy = _thing_centers(support, count, gt.boxes, settings)
    # An object whose mask vanishes at stride s has no center: it is not trained.
    nonempty = count > 0
    bw = (gt.boxes[:, 2] - gt.boxes[:, 0]).clamp(min=0)
    bh = (gt.boxes[:, 3] - gt.boxes[:, 1]).clamp(min=0)
    scale = torch.sqrt(bw * bh)
    channel = gt.batch * num_classes + gt.classes

    heatmaps, levels = [], []
    num_pairs = 0
    for (h_l, w_l), (lo, hi) in zip(level_sizes, settings.instance_scales):
        obj = torch.nonzero(nonempty & (scale >= lo) & (scale <= hi)).flatten()
        num_pairs += len(obj)
        x = (cx[obj] * w_l / wf).long().clamp(0, w_l - 1)
        y = (cy[obj] * h_l / hf).long().clamp(0, h_l - 1)
        radius = gaussian_radius(bh[obj] * h_l / hp, bw[obj] * w_l / wp, settings.min_overlap)
        heat = draw_center_heatmaps(
            torch.stack([x, y], 1),
            radius,
            channel[obj],
            num_images * num_classes,
            (h_l, w_l),
            settings.sigma_factor,
        )
        heatmaps.append(heat.view(num_images, num_classes, h_l, w_l))
        guide = _guidance(soft[obj], (h_l, w_l), settings.guidance_thres)
        levels.append(LevelThingTargets(obj=obj, guide=guide))

    stuff = stuff_soft_maps(
        gt.sem_seg, settings.num_stuff_classes, settings.stuff_label_offset, stride
    )
    return PanopticFCNTargets(
        center_heatmaps=heatmaps,
        stuff_scores=_stuff_level_scores(stuff, level_sizes, settings.stuff_gt_thres),
        thing_masks=soft.flatten(1),
        thing_batch=gt.batch,
        thing_classes=gt.classes,
        levels=levels,
        stuff_masks=stuff.flatten(2),
        num_thing_pairs=num_pairs,
    )
