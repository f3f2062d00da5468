"""Compare two detectron2 panoptic outputs of one image beyond float rounding.

Used to check an implementation against another on the same weights and inputs (ours vs the
official Panoptic FCN: ``dev/compare_panoptic_fcn_official.py``; eager vs exported models):
segments matched one to one by IoU > 0.5 with equal category / isthing and scores within a
tolerance, pixel agreement of the panoptic maps after the matching, instance scores and classes
(independent of the order of tied scores), ``sem_seg`` max difference.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Tolerance", "Comparison", "match_segments", "compare_outputs", "describe_segment"]


@dataclass
class Tolerance:
    """Float-rounding tolerances of the final outputs."""

    score_atol: float = 1e-4
    sem_seg_atol: float = 1e-4
    min_pixel_agreement: float = 0.9999


@dataclass
class Comparison:
    """Result of :func:`compare_outputs` for one image."""

    pixel_agreement: float
    num_segments: tuple[int, int]  # (ours, theirs)
    num_matched: int
    num_instances: tuple[int, int]
    max_score_diff: float  # over matched thing segments and instances
    sem_seg_max_diff: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def match_segments(
    pan_a: torch.Tensor, pan_b: torch.Tensor
) -> tuple[dict[int, int], torch.Tensor, torch.Tensor]:
    """One-to-one matching of the segment ids of two panoptic maps by IoU > 0.5.

    Args:
        pan_a, pan_b: (H, W) integer id maps, 0 = void.
    Returns:
        {id_a: id_b} for the non-void pairs with IoU > 0.5 (one to one by construction), and the
        sorted ids present in ``pan_a`` and in ``pan_b``.
    """
    a, b = pan_a.long().flatten(), pan_b.long().flatten()
    ids_a, inv_a = torch.unique(a, return_inverse=True)
    ids_b, inv_b = torch.unique(b, return_inverse=True)
    na, nb = len(ids_a), len(ids_b)
    inter = torch.bincount(inv_a * nb + inv_b, minlength=na * nb).view(na, nb).double()
    union = inter.sum(1, keepdim=True) + inter.sum(0, keepdim=True) - inter
    iou = inter / union.clamp(min=1)
    pairs = torch.nonzero(iou > 0.5).tolist()
    mapping = {int(ids_a[i]): int(ids_b[j]) for i, j in pairs if ids_a[i] != 0 and ids_b[j] != 0}
    return mapping, ids_a, ids_b


def _instances_fields(inst: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, classes) of an ``Instances``, sorted by (score rounded to 1e-6, class) so that
    the arbitrary order of exactly tied scores does not count; empty tensors for the official
    list-valued empty ``Instances``."""
    if len(inst.scores) == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    scores = _tensor(inst.scores).float().cpu()
    classes = _tensor(inst.pred_classes).long().cpu()
    order = torch.argsort(classes, stable=True)
    key = (scores[order].double() * 1e6).round()
    order = order[torch.argsort(key, descending=True, stable=True)]
    return scores[order], classes[order]


def compare_outputs(ours: dict, theirs: dict, tol: Tolerance | None = None) -> Comparison:
    """Compare two detectron2 panoptic output dicts of one image ("theirs" = the reference).

    Args:
        ours, theirs: {"panoptic_seg": ((H, W) ids, segments_info), "sem_seg": (S, H, W),
            "instances": Instances with scores / pred_classes (tensors, or the list-valued
            empty ``Instances`` of the official Panoptic FCN)}; "instances" and "sem_seg" are
            optional.
    Returns:
        a :class:`Comparison`; ``problems`` lists every difference beyond ``tol``.
    """
    tol = tol or Tolerance()
    pan_a, info_a = ours["panoptic_seg"]
    pan_b, info_b = theirs["panoptic_seg"]
    pan_a, pan_b = _tensor(pan_a).cpu(), _tensor(pan_b).cpu()
    if pan_a.shape != pan_b.shape:
        problem = f"panoptic_seg shapes differ: {tuple(pan_a.shape)} vs {tuple(pan_b.shape)}"
        return Comparison(0.0, (len(info_a), len(info_b)), 0, (0, 0), np.inf, np.inf, [problem])
    problems: list[str] = []
    mapping, agreement, max_score = _compare_segments(pan_a, info_a, pan_b, info_b, problems)
    if agreement < tol.min_pixel_agreement:
        problems.append(f"panoptic pixel agreement {agreement:.6f} < {tol.min_pixel_agreement}")
    n_inst = (0, 0)
    if "instances" in ours and "instances" in theirs:
        n_inst, inst_score = _compare_instances(ours["instances"], theirs["instances"], problems)
        max_score = max(max_score, inst_score)
    if max_score > tol.score_atol:
        problems.append(f"max score difference {max_score:.3g} > {tol.score_atol}")
    sem_diff = 0.0
    if "sem_seg" in ours and "sem_seg" in theirs:
        sa, sb = _tensor(ours["sem_seg"]).cpu().float(), _tensor(theirs["sem_seg"]).cpu().float()
        sem_diff = float((sa - sb).abs().max()) if sa.shape == sb.shape else float("inf")
        if sem_diff > tol.sem_seg_atol:
            problems.append(f"sem_seg max abs difference {sem_diff:.3g} > {tol.sem_seg_atol}")
    counts = (len(info_a), len(info_b))
    return Comparison(agreement, counts, len(mapping), n_inst, max_score, sem_diff, problems)


def _compare_segments(
    pan_a: torch.Tensor, info_a: list, pan_b: torch.Tensor, info_b: list, problems: list[str]
) -> tuple[dict[int, int], float, float]:
    """Match the segments; append their differences to ``problems``.

    Returns:
        the id mapping, the pixel agreement after it, the max score difference of matched things.
    """
    mapping, ids_a, _ = match_segments(pan_a, pan_b)
    lut = torch.full((int(ids_a.max()) + 1,), -1, dtype=torch.long)
    lut[0] = 0
    for i, j in mapping.items():
        lut[i] = j
    agreement = float((lut[pan_a.long()] == pan_b.long()).double().mean())
    by_id_a = {s["id"]: s for s in info_a}
    by_id_b = {s["id"]: s for s in info_b}
    problems += [
        f"our segment {describe_segment(s)} has no match in theirs"
        for s in info_a
        if s["id"] not in mapping
    ]
    matched_b = set(mapping.values())
    problems += [
        f"reference segment {describe_segment(s)} has no match in ours"
        for s in info_b
        if s["id"] not in matched_b
    ]
    max_score = 0.0
    for i, j in mapping.items():
        sa, sb = by_id_a.get(i), by_id_b.get(j)
        if sa is None or sb is None:
            problems.append(f"segment id {i if sa is None else j} painted but not in segments_info")
            continue
        key_a = (bool(sa["isthing"]), int(sa["category_id"]))
        if key_a != (bool(sb["isthing"]), int(sb["category_id"])):
            problems.append(
                f"matched segments differ: ours {describe_segment(sa)}, "
                f"theirs {describe_segment(sb)}"
            )
        if sa["isthing"] and sb["isthing"]:
            max_score = max(max_score, abs(float(sa["score"]) - float(sb["score"])))
    return mapping, agreement, max_score


def _compare_instances(inst_a: Any, inst_b: Any, problems: list[str]) -> tuple[tuple, float]:
    """Instance counts and, in score order (ties by class), classes; returns the counts and
    the max score difference."""
    sc_a, cl_a = _instances_fields(inst_a)
    sc_b, cl_b = _instances_fields(inst_b)
    counts = (len(sc_a), len(sc_b))
    if counts[0] != counts[1]:
        problems.append(f"instance counts differ: ours {counts[0]}, theirs {counts[1]}")
        return counts, 0.0
    if not torch.equal(cl_a, cl_b):
        problems.append("instance classes differ (in score order, ties by class)")
    return counts, float((sc_a - sc_b).abs().max()) if len(sc_a) else 0.0


def describe_segment(s: dict) -> str:
    """'#id (thing|stuff category [score s])' of a segments_info entry."""
    kind = "thing" if s["isthing"] else "stuff"
    score = f" score {float(s['score']):.4f}" if "score" in s else ""
    return f"#{s['id']} ({kind} {int(s['category_id'])}{score})"
