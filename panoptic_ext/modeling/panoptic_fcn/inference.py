"""Inference of Panoptic FCN as batched tensor functions.

Candidates, kernel fusion, stuff grouping and maskness rescoring work on the whole batch;
only the final resize to each image's own output size (and the panoptic merge at that size)
is done per image, as detectron2's post-processing does. The panoptic merge has no loop over
objects: the sequential "paint things in score order, skip a thing that is mostly covered"
rule is solved as a fixed point (see :func:`combine_panoptic`).
"""

import torch
import torch.nn.functional as F

__all__ = [
    "thing_candidates",
    "stuff_candidates",
    "fuse_thing_kernels",
    "rescore_things",
    "resize_probs",
    "combine_panoptic",
]


def thing_candidates(
    center_logits: torch.Tensor,
    kernel_map: torch.Tensor,
    *,
    smooth_size: int,
    pool_size: int,
    top_k: int,
    thres: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peak candidates of one level.

    Scores are sigmoid(center logits) averaged with their ``smooth_size`` box mean, kept only at
    3x3 local maxima; the top ``min(H W, top_k)`` per class, then over (class, position) pairs.

    Args:
        center_logits: (N, T, H, W); kernel_map: (N, D, H, W).
    Returns:
        scores (N, K) fp32, classes (N, K) int64, kernels (N, K, D), valid (N, K) bool
        (score > ``thres``).
    """
    c = center_logits.float().sigmoid()
    pad = (smooth_size - 1) // 2
    c = (c + F.avg_pool2d(c, smooth_size, stride=1, padding=pad)) / 2
    peak = F.max_pool2d(c, pool_size, stride=1, padding=(pool_size - 1) // 2)
    c = c * (c == peak)
    n, t, h, w = c.shape
    k = min(h * w, top_k)
    per_cls, pos = c.flatten(2).topk(k, dim=2)  # (N, T, K)
    scores, flat = per_cls.flatten(1).topk(k, dim=1)  # (N, K)
    classes = flat // k
    positions = pos.flatten(1).gather(1, flat)
    kflat = kernel_map.flatten(2).transpose(1, 2)  # (N, HW, D)
    kernels = kflat.gather(1, positions[..., None].expand(-1, -1, kflat.shape[-1]))
    return scores, classes, kernels, scores > thres


def stuff_candidates(
    region_logits: torch.Tensor, kernel_map: torch.Tensor, thres: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stuff candidates of one level: one per class that wins the per-pixel argmax.

    Args:
        region_logits: (N, S, H, W); kernel_map: (N, D, H, W).
    Returns:
        scores (N, S) fp32 (mean probability over the class's argmax pixels), kernels (N, S, D)
        (masked sum / (H W) of the kernel map), valid (N, S) bool (present and score > thres).
    """
    r = region_logits.float().sigmoid()
    n, s, h, w = r.shape
    onehot = F.one_hot(r.argmax(1), s).permute(0, 3, 1, 2).to(r.dtype)
    area = onehot.sum((2, 3))
    scores = (r * onehot).sum((2, 3)) / area.clamp(min=1)
    kernels = torch.einsum("nshw,ndhw->nsd", onehot, kernel_map.to(r.dtype)) / (h * w)
    return scores, kernels, (area > 0) & (scores > thres)


def fuse_thing_kernels(
    embeds: torch.Tensor,
    classes: torch.Tensor,
    valid: torch.Tensor,
    thres: float,
    class_specific: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel fusion of score-sorted thing candidates.

    Candidate j "claims" a later candidate i when cos(e_j, e_i) >= thres (and same class).
    Candidate i survives iff no earlier candidate claims it; a survivor's group is the
    candidates it is the first to claim (itself included); its fused kernel is the group mean.

    Args:
        embeds: (N, n, E) sorted by descending score within each image.
        classes: (N, n) int64; valid: (N, n) bool.
    Returns:
        fused (N, n, E) and keep (N, n) bool (survivors; other rows are meaningless).
    """
    e = embeds.float()
    normed = e / e.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    sim = normed @ normed.transpose(1, 2)
    n = e.shape[1]
    upper = torch.ones((n, n), dtype=torch.bool, device=e.device).triu()
    label = (sim >= thres) & upper & valid[:, :, None] & valid[:, None, :]
    if class_specific:
        label &= classes[:, :, None] == classes[:, None, :]
    first = label & (label.cumsum(1) == 1)
    keep = first.diagonal(dim1=1, dim2=2)
    groups = (first & keep[:, :, None]).to(e.dtype)
    fused = groups @ e / groups.sum(-1, keepdim=True).clamp(min=1)
    return fused.to(embeds.dtype), keep


def rescore_things(
    probs: torch.Tensor,
    scores: torch.Tensor,
    keep: torch.Tensor,
    *,
    mask_thres: float,
    score_floor: float,
    top_num: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multiply scores by maskness, sort, apply the score floor and the per-image cap.

    Args:
        probs: (N, n, HW) mask probabilities; scores: (N, n); keep: (N, n) bool.
    Returns:
        order (N, n') int64 indices into n, scores (N, n') sorted descending, valid (N, n') bool,
        with n' = min(n, top_num).
    """
    m = probs > mask_thres
    maskness = (probs * m).sum(-1) / (m.sum(-1) + 1e-6)
    s = torch.where(keep, scores * maskness, torch.full_like(scores, -1.0))
    s, order = s.sort(dim=1, descending=True)
    n_keep = min(s.shape[1], top_num)
    s, order = s[:, :n_keep], order[:, :n_keep]
    return order, s, s >= score_floor


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


def combine_panoptic(
    thing_masks: torch.Tensor,
    thing_scores: torch.Tensor,
    thing_classes: torch.Tensor,
    stuff_probs: torch.Tensor,
    *,
    overlap_thresh: float,
    stuff_area_limit: int,
    inst_thresh: float,
    thing_channel: int | None,
    stuff_category_offset: int,
) -> tuple[torch.Tensor, list[dict]]:
    """Paint things (score order, skip mostly-covered ones), then large stuff regions.

    The sequential rule "thing i is painted iff at most ``overlap_thresh`` of it is covered by
    the painted things before it" is solved without a loop over things: iterate
    keep <- rule(keep) from keep = all; after t rounds the first t decisions are final, and the
    unique fixed point is the sequential answer (usually reached in 2-3 rounds).

    Args:
        thing_masks: (K, H, W) bool sorted by descending score; thing_scores: (K,);
        thing_classes: (K,) contiguous thing ids; stuff_probs: (S, H, W).
        thing_channel: stuff channel of the merged "things" class (never painted), or None.
        stuff_category_offset: stuff category_id = channel + offset.
    Returns:
        panoptic (H, W) int32 (0 = void) and detectron2 ``segments_info``. Thing entries have
        ``instance_id`` = index into the inputs.
    """
    h, w = stuff_probs.shape[-2:]
    device = stuff_probs.device
    sel = torch.nonzero(thing_scores >= inst_thresh).flatten()
    masks = thing_masks[sel]
    k = len(sel)
    area = masks.sum((1, 2))
    keep = area > 0
    covered = torch.zeros((h, w), dtype=torch.bool, device=device)
    pan = torch.zeros((h, w), dtype=torch.long, device=device)
    if k:
        rank = torch.arange(k, device=device).view(k, 1, 1)
        for _ in range(k + 1):  # converges in at most k + 1 rounds, typically 2-3
            kept = masks & keep.view(k, 1, 1)
            covered = kept.any(0)
            owner = torch.where(covered, kept.to(torch.uint8).argmax(0), k)
            overlap = (masks & (owner[None] < rank)).sum((1, 2))
            new_keep = (area > 0) & (overlap <= overlap_thresh * area)
            if torch.equal(new_keep, keep):
                break
            keep = new_keep
        thing_ids = torch.cumsum(keep.long(), 0)
        pan = torch.where(covered, thing_ids[owner.clamp(max=k - 1)], 0)
    num_things = int(keep.sum())

    s = stuff_probs.shape[0]
    label = stuff_probs.argmax(0)
    free = (~covered) & (stuff_probs.max(0).values > 0)
    if thing_channel is not None:
        free &= label != thing_channel
    areas = torch.bincount(label[free], minlength=s)
    chosen = areas >= stuff_area_limit
    if thing_channel is not None:
        chosen[thing_channel] = False
    lut = torch.where(chosen, num_things + torch.cumsum(chosen.long(), 0), 0)
    pan = torch.where(free, lut[label], pan).to(torch.int32)

    seg_area = torch.bincount(pan.flatten().long(), minlength=num_things + int(chosen.sum()) + 1)
    info = []
    kept_idx = sel[keep].tolist()
    kept_scores = thing_scores[sel[keep]].tolist()
    kept_cls = thing_classes[sel[keep]].tolist()
    areas_list = seg_area.tolist()
    for j, (inst, score, cls) in enumerate(zip(kept_idx, kept_scores, kept_cls)):
        info.append(
            {
                "id": j + 1,
                "isthing": True,
                "score": score,
                "category_id": cls,
                "instance_id": inst,
                "area": areas_list[j + 1],
            }
        )
    for j, c in enumerate(torch.nonzero(chosen).flatten().tolist()):
        seg_id = num_things + j + 1
        info.append(
            {
                "id": seg_id,
                "isthing": False,
                "category_id": c + stuff_category_offset,
                "area": areas_list[seg_id],
            }
        )
    return pan, info
