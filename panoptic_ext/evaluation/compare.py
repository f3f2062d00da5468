"""Two detectron2 results of one image: the same segments, instances and maps up to float rounding.

The one comparison of the project, used by the exporter (eager vs exported model: it refuses to
write a model that fails), by the official-parity tools (ours vs the reference implementation on
the same weights) and by the tests. Results are detectron2 dicts ("panoptic_seg", "instances",
"sem_seg"); ``expected`` is the reference side (the eager model, the official code). Every check
returns figures (worst agreement, largest difference) so a report shows how close the two are,
not only pass/fail.

Matching: nothing is matched by index or id, because two runs may number panoptic segments
differently and may swap detections whose scores tie up to rounding.

* Segments (:func:`match_segments`): a pair of segments matches when each is the other's largest
  overlap (void excluded; void pixels correspond to void). This rule, rather than PQ's IoU > 0.5,
  because it loses no pair PQ would match (an intersection larger than half the union leaves
  every other segment less than half, so IoU > 0.5 pairs are mutual largest overlaps) and keeps a
  small segment that lost many of its pixels to a near-tie paired with itself instead of
  reporting one missing and one extra segment; how many pixels differ is then measured by the
  pixel agreement, which is what the tolerance bounds. It is one to one by construction.
* Instances (:func:`match_instances`): the same class, a score within ``score_atol`` and, where
  both sides give them as tensors, the same mask (the most similar one) or the nearest box.

Tolerances: one type, :class:`Tolerance`. Its defaults are the export ones (another runtime fuses
and reorders float operations); :data:`PARITY_TOLERANCE` is the one of the parity tools (the
same PyTorch operations on the same device, only summation orders differ, hence ten times
tighter). An export family may relax a rule for a reason of its own model
(``panoptic_stuff_ties``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "PARITY_TOLERANCE",
    "Comparison",
    "OutcomeTolerance",
    "Tolerance",
    "compare_outcomes",
    "compare_results",
    "describe_segment",
    "match_instances",
    "match_segments",
    "near_ties",
    "worst_figures",
]


@dataclass(frozen=True)
class Tolerance:
    """What float rounding may change between two runtimes.

    Attributes:
        pixel_agreement: least fraction of pixels on which maps must agree (panoptic ids,
            semantic argmax, each instance mask over the whole image).
        score_atol: largest difference of an instance / segment score.
        value_rtol: largest difference of a ``sem_seg`` value, relative to the map's largest
            magnitude but at least 1 (so absolute for probabilities, relative for logits).
        box_atol: largest difference of a box coordinate, in pixels.
        panoptic_stuff_ties: the panoptic stuff labels are the argmax of ``sem_seg`` (Panoptic
            FCN): a panoptic pixel where neither side is a thing and the ``sem_seg`` argmax
            flipped at a near-tie (the rule of ``sem_seg``) may differ, as in ``sem_seg``.
            Off by default: the other families are checked pixel for pixel.
    """

    pixel_agreement: float = 0.999
    score_atol: float = 1e-3
    value_rtol: float = 1e-3
    box_atol: float = 0.05
    panoptic_stuff_ties: bool = False


# Parity of two implementations of one model (same weights, same inputs, both in PyTorch).
PARITY_TOLERANCE = Tolerance(pixel_agreement=0.9999, score_atol=1e-4, value_rtol=1e-4)


@dataclass
class Comparison:
    """Problems found (empty = same results) and the figures behind them."""

    problems: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).float().mean()) if a.numel() else 1.0


def near_ties(exp: torch.Tensor, act: torch.Tensor, tol: Tolerance) -> torch.Tensor:
    """(H, W) bool: where the argmax of ``act`` (C, H, W) is, in ``exp``, within twice the
    value tolerance of ``exp``'s best class (True wherever the two argmaxes agree)."""
    scale = max(1.0, float(exp.abs().max()))
    gap = exp.max(0).values - exp.gather(0, act.argmax(0)[None])[0]
    return gap <= 2 * tol.value_rtol * scale


def _compare_sem_seg(exp: torch.Tensor, act: torch.Tensor, tol: Tolerance, out: Comparison):
    """Values within ``value_rtol`` of the range; argmax equal except at near-ties.

    A pixel whose two best classes are closer than the rounding allowance may pick either: it
    counts against ``pixel_agreement`` only if the actual choice is worse, in the expected map,
    by more than twice the value tolerance.
    """
    if exp.shape != act.shape:
        out.problems.append(f"sem_seg shape {tuple(act.shape)} != {tuple(exp.shape)}")
        return
    if not exp.numel():
        return
    scale = max(1.0, float(exp.abs().max()))
    rel = float((exp - act).abs().max()) / scale
    exp_arg, act_arg = exp.argmax(0), act.argmax(0)
    flips = float((~near_ties(exp, act, tol)).float().mean())
    out.figures.update(
        sem_seg_agreement=_agreement(exp_arg, act_arg),
        sem_seg_agreement_beyond_ties=1.0 - flips,
        sem_seg_max_rel_diff=rel,
    )
    if 1.0 - flips < tol.pixel_agreement:
        out.problems.append(f"sem_seg argmax differs beyond near-ties on {flips:.4%} of pixels")
    if rel > tol.value_rtol:
        out.problems.append(f"sem_seg values differ by {rel:.2e} of their range")


# Candidates (same class, close score) examined per expected instance, nearest box first.
_MAX_CANDIDATES = 10


def _geometry(exp: Any, act: Any) -> tuple[bool, bool]:
    """(masks, boxes): whether both sides give ``pred_masks`` as a tensor, ``pred_boxes`` as
    ``Boxes`` (the official Panoptic FCN gives no boxes, and empty lists without instances)."""
    masks = all(i.has("pred_masks") and torch.is_tensor(i.pred_masks) for i in (exp, act))
    boxes = all(i.has("pred_boxes") and hasattr(i.pred_boxes, "tensor") for i in (exp, act))
    return masks, boxes


def _best_counterpart(
    exp: Any, act: Any, i: int, row: torch.Tensor, score_diff: torch.Tensor, used, tol: Tolerance
) -> int:
    """Index of the actual instance matching expected instance ``i`` (-1: none).

    ``row``: box distances to the actual instances (inf where class or score differ);
    ``score_diff``: their score differences. Candidates are the unused ones, nearest box first
    and, among equal boxes (e.g. many whole-image masks), closest score first: a result then
    always matches itself.
    """
    by_score = score_diff.argsort(stable=True)
    order = by_score[row[by_score].argsort(stable=True)]
    candidates = [j for j in order.tolist() if torch.isfinite(row[j]) and not used[j]]
    candidates = candidates[:_MAX_CANDIDATES]
    if not _geometry(exp, act)[0]:
        return candidates[0] if candidates and row[candidates[0]] <= tol.box_atol else -1
    # With masks: the most similar mask (boxes can tie, e.g. several whole-image masks).
    best, best_agree = -1, -1.0
    for j in candidates:
        agree = _agreement(exp.pred_masks[i], act.pred_masks[j])
        if agree > best_agree:
            best, best_agree = j, agree
    return best if best_agree >= tol.pixel_agreement else -1


def match_instances(exp: Any, act: Any, tol: Tolerance) -> list[int]:
    """For each expected instance, the index of its actual counterpart (-1: none).

    Counterpart = same class, score within ``score_atol``, and the same mask (equal on
    ``pixel_agreement`` of the image; the most similar one) or, without masks, the nearest box
    within ``box_atol`` (geometry a side does not give is not compared: the closest score is
    taken). Each actual instance is used once. Matching by content, not by index:
    two detections whose scores differ by less than float rounding may swap places, and a box
    taken from a mask (Panoptic FCN) moves a whole pixel when one border pixel rounds the other
    way.
    """
    score_diff = (exp.scores[:, None] - act.scores[None, :]).abs()
    if _geometry(exp, act)[1]:
        boxes_e, boxes_a = exp.pred_boxes.tensor.double(), act.pred_boxes.tensor.double()
        dist = torch.cdist(boxes_e, boxes_a, p=float("inf"))
    else:
        dist = torch.zeros(score_diff.shape, dtype=torch.double)
    valid = exp.pred_classes[:, None] == act.pred_classes[None, :]
    valid &= score_diff <= tol.score_atol
    dist = torch.where(valid, dist, torch.full_like(dist, float("inf")))
    used = torch.zeros(len(act), dtype=torch.bool)
    match = []
    for i, row in enumerate(dist):
        j = _best_counterpart(exp, act, i, row, score_diff[i], used, tol)
        if j >= 0:
            used[j] = True
        match.append(j)
    return match


def _describe_missing(exp: Any, act: Any, i: int) -> str:
    """The unmatched instance and its nearest same-class instance on the other side."""
    text = f"#{i}: class {int(exp.pred_classes[i])}, score {float(exp.scores[i]):.4f}"
    same = (act.pred_classes == exp.pred_classes[i]).nonzero().flatten()
    if not len(same):
        return text + "; no instance of that class"
    masks, boxes = _geometry(exp, act)
    if not boxes:
        j = int(same[(act.scores[same] - exp.scores[i]).abs().argmin()])
        return text + f"; nearest: score {float(act.scores[j]):.4f}"
    box = (act.pred_boxes.tensor[same] - exp.pred_boxes.tensor[i]).abs().amax(1)
    j = int(same[box.argmin()])
    text += f"; nearest: score {float(act.scores[j]):.4f}, box {float(box.min()):.2f} px away"
    if masks:
        text += f", mask equal on {_agreement(exp.pred_masks[i], act.pred_masks[j]):.2%}"
    return text


def _compare_instances(exp: Any, act: Any, tol: Tolerance, out: Comparison):
    out.figures.update(instances=float(len(exp)), instances_actual=float(len(act)))
    if len(exp) != len(act):
        out.problems.append(f"{len(act)} instances instead of {len(exp)}")
        return
    if not len(exp):
        return
    match = match_instances(exp, act, tol)
    missing = [i for i, j in enumerate(match) if j < 0]
    if missing:
        out.problems.append(
            f"{len(missing)} instance(s) without a counterpart of the same class, score and box "
            f"or mask (e.g. {_describe_missing(exp, act, missing[0])})"
        )
        return
    act = act[torch.tensor(match)]
    out.figures["instance_score_max_diff"] = float((exp.scores - act.scores).abs().max())
    masks, boxes = _geometry(exp, act)
    if boxes:
        box = (exp.pred_boxes.tensor - act.pred_boxes.tensor).abs().amax(1)
        out.figures["box_max_diff"] = float(box.max())
    if masks:
        agree = (exp.pred_masks == act.pred_masks).flatten(1).float().mean(1)
        out.figures["mask_agreement_min"] = float(agree.min())
        if agree.min() < tol.pixel_agreement:
            out.problems.append(
                f"an instance mask agrees on only {float(agree.min()):.4%} of pixels"
            )
    if masks and boxes:
        moved = float(torch.where(agree == 1, box, torch.zeros_like(box)).max())
        if moved > tol.box_atol:  # no border pixel flipped: nothing excuses the box
            out.problems.append(f"boxes differ by {moved:.2f} px where the masks are equal")


def _segments(info: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(s["id"]): s for s in info}


def match_segments(exp_ids: torch.Tensor, act_ids: torch.Tensor) -> dict[int, int]:
    """{actual id: expected id} of the segments that are each other's largest overlap.

    Args:
        exp_ids, act_ids: (H, W) integer panoptic id maps, 0 = void (never matched).
    """
    exp, act = exp_ids.long().flatten(), act_ids.long().flatten()
    ids_e, inv_e = torch.unique(exp, return_inverse=True)
    ids_a, inv_a = torch.unique(act, return_inverse=True)
    n_e, n_a = len(ids_e), len(ids_a)
    overlap = torch.bincount(inv_e * n_a + inv_a, minlength=n_e * n_a).view(n_e, n_a)
    overlap[ids_e == 0] = 0
    overlap[:, ids_a == 0] = 0
    best_act, best_exp = overlap.argmax(1), overlap.argmax(0)
    return {
        int(ids_a[a]): int(ids_e[e])
        for e, a in enumerate(best_act.tolist())
        if overlap[e, a] > 0 and int(best_exp[a]) == e
    }


def _is_thing(ids: torch.Tensor, segments: dict[int, dict[str, Any]]) -> torch.Tensor:
    lut = torch.zeros(int(ids.max()) + 1 if ids.numel() else 1, dtype=torch.bool)
    for sid, s in segments.items():
        if 0 <= sid < len(lut):
            lut[sid] = bool(s["isthing"])
    return lut[ids.long()]


def _compare_panoptic(
    exp: tuple, act: tuple, tol: Tolerance, out: Comparison, sem_seg: torch.Tensor | None = None
):
    """Segments matched by overlap (ids may be numbered differently), then compared.

    ``sem_seg``: (H, W) bool, where the ``sem_seg`` argmax flipped at a near-tie (with
    ``panoptic_stuff_ties``): pixels that are stuff or void on both sides there do not count
    as disagreeing.
    """
    (exp_ids, exp_info), (act_ids, act_info) = exp, act
    if exp_ids.shape != act_ids.shape:
        out.problems.append(f"panoptic_seg shape {tuple(act_ids.shape)} != {tuple(exp_ids.shape)}")
        return
    to_exp = match_segments(exp_ids, act_ids)
    lut = torch.full((int(act_ids.max()) + 1 if act_ids.numel() else 1,), -1, dtype=torch.long)
    lut[0] = 0  # void corresponds to void
    for a, e in to_exp.items():
        lut[a] = e
    same = exp_ids.long() == lut[act_ids.long()]
    agree = float(same.float().mean()) if same.numel() else 1.0
    out.figures.update(
        panoptic_agreement=agree,
        segments=float(len(exp_info)),
        segments_actual=float(len(act_info)),
        segments_matched=float(len(to_exp)),
    )
    exp_seg, act_seg = _segments(exp_info), _segments(act_info)
    if sem_seg is not None:  # stuff pixels at a sem_seg near-tie may take either label
        excused = ~_is_thing(exp_ids, exp_seg) & ~_is_thing(act_ids, act_seg) & sem_seg
        agree = float((same | excused).float().mean()) if same.numel() else 1.0
        out.figures["panoptic_agreement_beyond_stuff_ties"] = agree
    if agree < tol.pixel_agreement:
        out.problems.append(f"panoptic segments agree on {agree:.4%} of pixels")
    matched = {e: act_seg[a] for a, e in to_exp.items() if a in act_seg and e in exp_seg}
    unmatched = sorted(set(exp_seg) - set(matched))
    extra = sorted(set(act_seg) - {a for a, e in to_exp.items() if e in exp_seg})
    if unmatched or extra or len(act_seg) != len(exp_seg):
        out.problems.append(
            f"{len(act_seg)} segments instead of {len(exp_seg)}; without counterpart: {unmatched}"
            + "".join(f"; {describe_segment(exp_seg[sid])} missing" for sid in unmatched)
            + "".join(f"; {describe_segment(act_seg[sid])} extra" for sid in extra)
        )
    worst = 0.0
    for sid, a in matched.items():
        s = exp_seg[sid]
        if (bool(s["isthing"]), s["category_id"]) != (bool(a["isthing"]), a["category_id"]):
            out.problems.append(
                f"segment {sid} is category {a['category_id']} not {s['category_id']}"
            )
        if "score" in s:
            worst = max(worst, abs(float(s["score"]) - float(a.get("score", float("nan")))))
    out.figures["segment_score_max_diff"] = worst
    if not worst <= tol.score_atol:  # also catches NaN (a missing score)
        out.problems.append(f"segment scores differ by {worst:.2e}")


def compare_results(
    expected: dict[str, Any], actual: dict[str, Any], tol: Tolerance | None = None
) -> Comparison:
    """Compare two detectron2 result dicts of one image (``expected`` = eager PyTorch)."""
    tol = tol or Tolerance()
    out = Comparison()
    if set(expected) != set(actual):
        out.problems.append(f"result keys {sorted(actual)} instead of {sorted(expected)}")
    if "sem_seg" in expected and "sem_seg" in actual:
        _compare_sem_seg(expected["sem_seg"].cpu(), actual["sem_seg"].cpu(), tol, out)
    if "instances" in expected and "instances" in actual:
        _compare_instances(expected["instances"].to("cpu"), actual["instances"].to("cpu"), tol, out)
    if "panoptic_seg" in expected and "panoptic_seg" in actual:
        exp_ids, exp_info = expected["panoptic_seg"]
        act_ids, act_info = actual["panoptic_seg"]
        ties = None
        if tol.panoptic_stuff_ties and "sem_seg" in expected and "sem_seg" in actual:
            exp_sem, act_sem = expected["sem_seg"].cpu(), actual["sem_seg"].cpu()
            if exp_sem.shape == act_sem.shape and exp_sem.shape[-2:] == exp_ids.shape:
                flipped = exp_sem.argmax(0) != act_sem.argmax(0)
                ties = flipped & near_ties(exp_sem, act_sem, tol)
        exp_pan, act_pan = (exp_ids.cpu(), exp_info), (act_ids.cpu(), act_info)
        _compare_panoptic(exp_pan, act_pan, tol, out, ties)
    return out


def worst_figures(figures: list[dict[str, Any]]) -> dict[str, float]:
    """The worst of each figure over several comparisons: least agreement, largest difference."""
    worst: dict[str, float] = {}
    for fig in figures:
        for key, value in fig.items():
            if "agreement" in key or key.endswith("_share"):
                worst[key] = min(worst.get(key, 1.0), float(value))
            elif "diff" in key:
                worst[key] = max(worst.get(key, 0.0), float(value))
    return worst


def describe_segment(s: dict[str, Any]) -> str:
    """'#id (thing|stuff category [score s])' of a ``segments_info`` entry."""
    kind = "thing" if s["isthing"] else "stuff"
    score = f" score {float(s['score']):.4f}" if "score" in s else ""
    return f"#{s['id']} ({kind} {int(s['category_id'])}{score})"


@dataclass(frozen=True)
class OutcomeTolerance:
    """What a quantized (INT8) model may change: outcomes, not values.

    INT8 moves logits and scores by a few percent of their range, so pixels at class borders
    and detections near a threshold change; what must survive is the set of segments and
    confident instances. Figures are shares of matched items over the larger side, so a
    missing item and an extra one both count.

    Attributes:
        segment_match: least share of panoptic segments that are matched (each the other's
            largest overlap, :func:`match_segments`) with the same category and IoU > 0.5, the
            pairs PQ counts as true positives.
        pixel_agreement: least share of pixels with the same panoptic segment (after matching)
            and the same ``sem_seg`` argmax.
        instance_match: least share of confident instances matched (same class, box IoU >= 0.5).
        instance_score_thresh: instances below this score are not counted (a detection near
            the cut-off appears on one side only without changing any segment).
    """

    segment_match: float = 0.8
    pixel_agreement: float = 0.9
    instance_match: float = 0.8
    instance_score_thresh: float = 0.5


def _share(matched: int, n_exp: int, n_act: int) -> float:
    return matched / max(n_exp, n_act) if max(n_exp, n_act) else 1.0


def _outcome_segments(exp: tuple, act: tuple, tol: OutcomeTolerance, out: Comparison) -> None:
    (exp_ids, exp_info), (act_ids, act_info) = exp, act
    if exp_ids.shape != act_ids.shape:
        out.problems.append(f"panoptic_seg shape {tuple(act_ids.shape)} != {tuple(exp_ids.shape)}")
        return
    exp_seg, act_seg = _segments(exp_info), _segments(act_info)
    to_exp = match_segments(exp_ids, act_ids)
    lut = torch.full((int(act_ids.max()) + 1 if act_ids.numel() else 1,), -1, dtype=torch.long)
    lut[0] = 0
    for a, e in to_exp.items():
        lut[a] = e
    mapped = lut[act_ids.long()]
    agree = _agreement(exp_ids.long(), mapped)
    matched = 0
    for a, e in to_exp.items():
        if a not in act_seg or e not in exp_seg:
            continue
        if (bool(exp_seg[e]["isthing"]), exp_seg[e]["category_id"]) != (
            bool(act_seg[a]["isthing"]),
            act_seg[a]["category_id"],
        ):
            continue
        inter = int(((exp_ids == e) & (act_ids == a)).sum())
        union = int(((exp_ids == e) | (act_ids == a)).sum())
        matched += inter * 2 > union
    share = _share(matched, len(exp_seg), len(act_seg))
    out.figures.update(
        panoptic_agreement=agree,
        segments=float(len(exp_seg)),
        segments_actual=float(len(act_seg)),
        segment_match_share=share,
    )
    if share < tol.segment_match:
        out.problems.append(
            f"{matched} of {len(exp_seg)} segments ({len(act_seg)} exported) matched with "
            f"IoU > 0.5 and the same category: {share:.2%} < {tol.segment_match:.0%}"
        )
    if agree < tol.pixel_agreement:
        out.problems.append(f"panoptic segments agree on {agree:.2%} of pixels")


def _outcome_instances(exp: Any, act: Any, tol: OutcomeTolerance, out: Comparison) -> None:
    from detectron2.structures import pairwise_iou

    exp = exp[exp.scores >= tol.instance_score_thresh]
    act = act[act.scores >= tol.instance_score_thresh]
    matched = 0
    if len(exp) and len(act):
        iou = pairwise_iou(exp.pred_boxes, act.pred_boxes)
        iou[exp.pred_classes[:, None] != act.pred_classes[None, :]] = 0
        used = torch.zeros(len(act), dtype=torch.bool)
        for i in exp.scores.argsort(descending=True).tolist():  # greedy, most confident first
            row = iou[i].masked_fill(used, 0)
            j = int(row.argmax())
            if row[j] >= 0.5:
                used[j] = True
                matched += 1
    share = _share(matched, len(exp), len(act))
    out.figures.update(
        confident_instances=float(len(exp)),
        confident_instances_actual=float(len(act)),
        instance_match_share=share,
    )
    if share < tol.instance_match:
        out.problems.append(
            f"{matched} of {len(exp)} instances scoring >= {tol.instance_score_thresh} "
            f"({len(act)} exported) matched: {share:.2%} < {tol.instance_match:.0%}"
        )


def compare_outcomes(
    expected: dict[str, Any], actual: dict[str, Any], tol: OutcomeTolerance | None = None
) -> Comparison:
    """Compare two detectron2 result dicts by their outcomes (the INT8 export check).

    Segments and confident instances are matched as :class:`OutcomeTolerance` says; ``sem_seg``
    is compared by its argmax only (values are not, INT8 rescales them).
    """
    tol = tol or OutcomeTolerance()
    out = Comparison()
    if set(expected) != set(actual):
        out.problems.append(f"result keys {sorted(actual)} instead of {sorted(expected)}")
    if "sem_seg" in expected and "sem_seg" in actual:
        exp, act = expected["sem_seg"].cpu(), actual["sem_seg"].cpu()
        if exp.shape != act.shape:
            out.problems.append(f"sem_seg shape {tuple(act.shape)} != {tuple(exp.shape)}")
        else:
            agree = _agreement(exp.argmax(0), act.argmax(0))
            out.figures["sem_seg_agreement"] = agree
            if agree < tol.pixel_agreement:
                out.problems.append(f"sem_seg argmax agrees on {agree:.2%} of pixels")
    if "instances" in expected and "instances" in actual:
        _outcome_instances(expected["instances"].to("cpu"), actual["instances"].to("cpu"), tol, out)
    if "panoptic_seg" in expected and "panoptic_seg" in actual:
        exp_ids, exp_info = expected["panoptic_seg"]
        act_ids, act_info = actual["panoptic_seg"]
        _outcome_segments((exp_ids.cpu(), exp_info), (act_ids.cpu(), act_info), tol, out)
    return out
