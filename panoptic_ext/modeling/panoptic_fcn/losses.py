"""Losses of Panoptic FCN: focal loss on positions, (weighted) dice on dynamic-kernel masks.

Everything here runs in fp32, also under autocast. Batches without things (or without stuff)
give zero losses that are still connected to the graph.
"""

import torch
import torch.nn.functional as F

from .heads import KernelEmbedding
from .targets import PanopticFCNTargets

__all__ = [
    "soft_sigmoid_focal_loss",
    "dice_loss",
    "masks_from_kernels",
    "panoptic_fcn_losses",
]


def soft_sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Element-wise sigmoid focal loss with soft targets in [0, 1] (no reduction).

    p_t = p t + (1 - p)(1 - t), alpha_t = alpha t + (1 - alpha)(1 - t).
    Args:
        logits, targets: same shape, any float dtype (computed in fp32).
    Returns:
        fp32 tensor of the input shape.
    """
    logits, targets = logits.float(), targets.float()
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


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


def panoptic_fcn_losses(
    center_logits: list[torch.Tensor],
    region_logits: list[torch.Tensor],
    kernel_maps: list[torch.Tensor],
    encode_feat: torch.Tensor,
    targets: PanopticFCNTargets,
    thing_embed: KernelEmbedding,
    stuff_embed: KernelEmbedding,
    *,
    pos_num: int,
    detach_guidance: bool,
    focal_alpha: float,
    focal_gamma: float,
    position_weight: float,
    segment_weight: float,
) -> dict[str, torch.Tensor]:
    """The four Panoptic FCN losses of a batch.

    Args:
        center_logits: L x (N, T, H_l, W_l); region_logits: L x (N, S, H_l, W_l);
        kernel_maps: L x (N, D, H_l, W_l); encode_feat: (N, E, Hf, Wf); targets: see targets.py.
        pos_num: k of the weighted dice (capped by the level size).
    Returns:
        {"loss_pos_th", "loss_pos_st", "loss_seg_th", "loss_seg_st"}: fp32 scalars.
        Normalisers: valid (object, level) pairs for things, images for stuff positions,
        valid (class, level) pairs for stuff masks (each at least 1).
    """
    device = encode_feat.device
    with torch.autocast(device_type=device.type, enabled=False):
        n = encode_feat.shape[0]
        feats = encode_feat.float().flatten(2)
        num_th = max(targets.num_thing_pairs, 1)
        loss_pos_th = feats.new_zeros(())
        loss_pos_st = feats.new_zeros(())
        th_kernels, th_weights, th_obj = [], [], []
        st_kernels, st_batch, st_target = [], [], []
        for lvl, (c_log, r_log, kmap) in enumerate(zip(center_logits, region_logits, kernel_maps)):
            h, w = c_log.shape[-2:]
            loss_pos_th = (
                loss_pos_th
                + soft_sigmoid_focal_loss(
                    c_log, targets.center_heatmaps[lvl], focal_alpha, focal_gamma
                ).sum()
            )
            st_scores = targets.stuff_scores[lvl]
            loss_pos_st = loss_pos_st + soft_sigmoid_focal_loss(
                r_log, st_scores, focal_alpha, focal_gamma
            ).sum() / (h * w)
            kflat = kmap.float().flatten(2)  # (N, D, HW)

            # Things: kernels at the top-k guided positions of each object trained here.
            lt = targets.levels[lvl]
            b = targets.thing_batch[lt.obj]
            cls = targets.thing_classes[lt.obj]
            guide = c_log.float().flatten(2)[b, cls].sigmoid() * lt.guide
            if detach_guidance:
                guide = guide.detach()
            k = min(pos_num, h * w)
            weights, idx = guide.topk(k, dim=1)
            kern = kflat.transpose(1, 2)[b[:, None], idx]  # (M_l, k, D)
            if k < pos_num:  # pad small levels with zero-weight positions
                weights = F.pad(weights, (0, pos_num - k))
                kern = F.pad(kern, (0, 0, 0, pos_num - k))
            th_kernels.append(kern)
            th_weights.append(weights)
            th_obj.append(lt.obj)

            # Stuff: masked sum / (H_l W_l) of the kernel map per present (image, class).
            present_map = (st_scores > 0).float()
            kern_st = torch.einsum("nshw,ndhw->nsd", present_map, kmap.float()) / (h * w)
            img, cls_st = torch.nonzero(present_map.flatten(2).sum(-1) > 0, as_tuple=True)
            st_kernels.append(kern_st[img, cls_st])
            st_batch.append(img)
            st_target.append(targets.stuff_masks[img, cls_st])

        obj = torch.cat(th_obj)
        kern = thing_embed(torch.cat(th_kernels))  # (P, k, E)
        weights = torch.cat(th_weights)
        batch = targets.thing_batch[obj]
        logits = masks_from_kernels(
            kern.flatten(0, 1), batch.repeat_interleave(pos_num), feats
        ).view(len(obj), pos_num, feats.shape[-1])
        dice = dice_loss(logits.sigmoid(), targets.thing_masks[obj][:, None])
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1e-8)
        loss_seg_th = (weights * dice).sum() / num_th

        st_kern = stuff_embed(torch.cat(st_kernels))
        st_b = torch.cat(st_batch)
        logits_st = masks_from_kernels(st_kern, st_b, feats)
        loss_seg_st = dice_loss(logits_st.sigmoid(), torch.cat(st_target)).sum()
        loss_seg_st = loss_seg_st / max(len(st_b), 1)

    return {
        "loss_pos_th": position_weight * loss_pos_th / num_th,
        "loss_pos_st": position_weight * loss_pos_st / max(n, 1),
        "loss_seg_th": segment_weight * loss_seg_th,
        "loss_seg_st": segment_weight * loss_seg_st,
    }
