"""Losses of Panoptic FCN: focal loss on positions, (weighted) dice on dynamic-kernel masks.

The focal loss is fvcore's ``sigmoid_focal_loss`` (soft targets in [0, 1] work as they are).
Everything here runs in fp32, also under autocast. Batches without things (or without stuff)
give zero losses that are still connected to the graph.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from fvcore.nn import sigmoid_focal_loss

from .heads import KernelEmbedding
from .targets import LevelThingTargets, PanopticFCNTargets

__all__ = [
    "LossSettings",
    "dice_loss",
    "masks_from_kernels",
    "panoptic_fcn_losses",
]


@dataclass(frozen=True)
class LossSettings:
    """The ``MODEL.PANOPTIC_FCN`` settings of the losses (see its config comments)."""

    pos_num: int  # k of the weighted dice
    detach_guidance: bool
    focal_alpha: float
    focal_gamma: float
    position_weight: float
    segment_weight: float

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "LossSettings":
        p = cfg.MODEL.PANOPTIC_FCN
        return cls(
            pos_num=p.POSITION_HEAD.THING.POS_NUM,
            detach_guidance=p.POSITION_HEAD.THING.DETACH_GUIDANCE,
            focal_alpha=p.LOSS.FOCAL_ALPHA,
            focal_gamma=p.LOSS.FOCAL_GAMMA,
            position_weight=p.LOSS.POSITION_WEIGHT,
            segment_weight=p.LOSS.SEGMENT_WEIGHT,
        )


def dice_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - 2 sum(p t) / max(sum(p^2) + sum(t^2), 1e-8) over the last dim.

    Args:
        probs: (..., P) probabilities; targets: broadcastable to ``probs``.
    Returns:
        (...) fp32.
    """
    inter = (probs * targets).sum(-1)
    denom = (probs * probs).sum(-1) + (targets * targets).sum(-1)
    return 1 - 2 * inter / denom.clamp(min=1e-8)


def masks_from_kernels(
    kernels: torch.Tensor, batch: torch.Tensor, features: torch.Tensor
) -> torch.Tensor:
    """Apply a flat set of dynamic kernels to the encoded feature of their own image.

    The kernels are scattered into a padded (N, max count, E) tensor and applied with one
    batched matmul, so the cost is that of the busiest image.

    Args:
        kernels: (P, E); batch: (P,) int64 image index; features: (N, E, HW).
    Returns:
        (P, HW) mask logits, same dtype as ``features``.
    """
    n = features.shape[0]
    p = len(kernels)
    if p == 0:
        # Keep the graph connected (DDP expects every parameter to get a gradient).
        return features.new_zeros((0, features.shape[-1])) + 0 * (kernels.sum() + features.sum())
    counts = torch.bincount(batch, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    order = torch.argsort(batch, stable=True)
    slot = torch.empty_like(batch)
    slot[order] = torch.arange(p, device=batch.device) - starts[batch[order]]
    padded = kernels.new_zeros((n, int(counts.max()), kernels.shape[-1]))
    padded[batch, slot] = kernels
    return torch.bmm(padded, features)[batch, slot]


def _thing_kernels(
    center_logits: torch.Tensor,
    kernel_flat: torch.Tensor,
    level: LevelThingTargets,
    targets: PanopticFCNTargets,
    settings: LossSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernels at the top-k guided positions of each object trained at one level.

    Args:
        center_logits: (N, T, H, W); kernel_flat: (N, D, H * W) fp32.
    Returns:
        kernels (M_l, k, D) and their guidance weights (M_l, k), k = ``pos_num`` (small levels
        padded with zero-weight positions).
    """
    h, w = center_logits.shape[-2:]
    pos_num = settings.pos_num
    b = targets.thing_batch[level.obj]
    cls = targets.thing_classes[level.obj]
    guide = center_logits.float().flatten(2)[b, cls].sigmoid() * level.guide
    if settings.detach_guidance:
        guide = guide.detach()
    k = min(pos_num, h * w)
    weights, idx = guide.topk(k, dim=1)
    kern = kernel_flat.transpose(1, 2)[b[:, None], idx]  # (M_l, k, D)
    if k < pos_num:
        weights = F.pad(weights, (0, pos_num - k))
        kern = F.pad(kern, (0, 0, 0, pos_num - k))
    return kern, weights


def _stuff_kernels(
    stuff_scores: torch.Tensor, kernel_map: torch.Tensor, stuff_masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked sum / (H W) of the kernel map per present (image, class) at one level.

    Args:
        stuff_scores: (N, S, H, W) level targets; kernel_map: (N, D, H, W);
        stuff_masks: (N, S, Hf * Wf) stride-s stuff maps.
    Returns:
        kernels (P, D), their image index (P,) and mask targets (P, Hf * Wf).
    """
    h, w = stuff_scores.shape[-2:]
    present_map = (stuff_scores > 0).float()
    kern = torch.einsum("nshw,ndhw->nsd", present_map, kernel_map.float()) / (h * w)
    img, cls = torch.nonzero(present_map.flatten(2).sum(-1) > 0, as_tuple=True)
    return kern[img, cls], img, stuff_masks[img, cls]


def _thing_mask_loss(
    thing: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    targets: PanopticFCNTargets,
    embed: KernelEmbedding,
    feats: torch.Tensor,
    pos_num: int,
) -> torch.Tensor:
    """Weighted dice of every (object, level) pair's k masks, summed (not yet normalised).

    Args:
        thing: per level (kernels (M_l, k, D), weights (M_l, k), object index (M_l,)).
        feats: (N, E, Hf * Wf) fp32 encoded feature.
    """
    kern, weights, obj = (torch.cat(t) for t in zip(*thing))
    kern = embed(kern)  # (P, k, E)
    batch = targets.thing_batch[obj]
    logits = masks_from_kernels(kern.flatten(0, 1), batch.repeat_interleave(pos_num), feats).view(
        len(obj), pos_num, feats.shape[-1]
    )
    dice = dice_loss(logits.sigmoid(), targets.thing_masks[obj][:, None])
    weights = weights / weights.sum(1, keepdim=True).clamp(min=1e-8)
    return (weights * dice).sum()


def _stuff_mask_loss(
    stuff: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    embed: KernelEmbedding,
    feats: torch.Tensor,
) -> torch.Tensor:
    """Mean dice over the valid (class, level) stuff pairs (0 when there is none).

    Args:
        stuff: per level (kernels (P_l, D), image index (P_l,), mask targets (P_l, Hf * Wf)).
    """
    kern, batch, target = (torch.cat(t) for t in zip(*stuff))
    logits = masks_from_kernels(embed(kern), batch, feats)
    return dice_loss(logits.sigmoid(), target).sum() / max(len(batch), 1)


def panoptic_fcn_losses(
    center_logits: list[torch.Tensor],
    region_logits: list[torch.Tensor],
    kernel_maps: list[torch.Tensor],
    encode_feat: torch.Tensor,
    targets: PanopticFCNTargets,
    thing_embed: KernelEmbedding,
    stuff_embed: KernelEmbedding,
    settings: LossSettings,
) -> dict[str, torch.Tensor]:
    """The four Panoptic FCN losses of a batch.

    Args:
        center_logits: L x (N, T, H_l, W_l); region_logits: L x (N, S, H_l, W_l);
        kernel_maps: L x (N, D, H_l, W_l); encode_feat: (N, E, Hf, Wf); targets: see targets.py.
        settings: ``pos_num`` (k of the weighted dice, capped by the level size), focal loss
            parameters and loss weights.
    Returns:
        {"loss_pos_th", "loss_pos_st", "loss_seg_th", "loss_seg_st"}: fp32 scalars.
        Normalisers: valid (object, level) pairs for things, images for stuff positions,
        valid (class, level) pairs for stuff masks (each at least 1).
    """
    alpha, gamma = settings.focal_alpha, settings.focal_gamma
    with torch.autocast(device_type=encode_feat.device.type, enabled=False):
        n = encode_feat.shape[0]
        feats = encode_feat.float().flatten(2)
        num_th = max(targets.num_thing_pairs, 1)
        loss_pos_th = feats.new_zeros(())
        loss_pos_st = feats.new_zeros(())
        thing, stuff = [], []
        for lvl, (c_log, r_log, kmap) in enumerate(zip(center_logits, region_logits, kernel_maps)):
            h, w = c_log.shape[-2:]
            heat, st_scores = targets.center_heatmaps[lvl], targets.stuff_scores[lvl]
            loss_pos_th = loss_pos_th + sigmoid_focal_loss(c_log, heat, alpha, gamma, "sum")
            focal_st = sigmoid_focal_loss(r_log, st_scores, alpha, gamma, "sum")
            loss_pos_st = loss_pos_st + focal_st / (h * w)
            level = targets.levels[lvl]
            kern, weights = _thing_kernels(c_log, kmap.float().flatten(2), level, targets, settings)
            thing.append((kern, weights, level.obj))
            stuff.append(_stuff_kernels(st_scores, kmap, targets.stuff_masks))
        loss_seg_th = _thing_mask_loss(thing, targets, thing_embed, feats, settings.pos_num)
        loss_seg_th = loss_seg_th / num_th
        loss_seg_st = _stuff_mask_loss(stuff, stuff_embed, feats)

    return {
        "loss_pos_th": settings.position_weight * loss_pos_th / num_th,
        "loss_pos_st": settings.position_weight * loss_pos_st / max(n, 1),
        "loss_seg_th": settings.segment_weight * loss_seg_th,
        "loss_seg_st": settings.segment_weight * loss_seg_st,
    }
