"""The one comparison at the parity tolerance (ours vs a reference implementation): segments
matched by content, rounding-sized differences accepted, each real difference reported; the
official Panoptic FCN's instances (no boxes, list-valued when empty) compared by class and score."""

import pytest
import torch
from detectron2.structures import Instances

from panoptic_ext.evaluation.compare import (
    PARITY_TOLERANCE,
    Tolerance,
    compare_results,
    match_segments,
)


def _output(ids: dict[int, int] | None = None, **changes) -> dict:
    """A 64x64 output: things #1 (cat 2, 0.9) and #2 (cat 0, 0.5), stuff #3 (cat 1) and void.

    ``ids`` renumbers segments; ``changes`` = {"score2": ..., "cat1": ..., "drop": id,
    "flip": n pixels of stuff turned void, "sem": value added to one sem_seg pixel}.
    """
    ids = ids or {1: 1, 2: 2, 3: 3}
    pan = torch.zeros((64, 64), dtype=torch.int32)
    pan[4:20, 4:20] = ids[1]
    pan[30:50, 10:40] = ids[2]
    pan[:, 44:] = ids[3]
    flip = changes.get("flip", 0)
    if flip:
        pan[:flip, 63] = 0
    info = [
        {"id": ids[1], "isthing": True, "category_id": changes.get("cat1", 2), "score": 0.9},
        {"id": ids[2], "isthing": True, "category_id": 0, "score": changes.get("score2", 0.5)},
        {"id": ids[3], "isthing": False, "category_id": 1, "area": 20 * 64},
    ]
    drop = changes.get("drop")
    if drop:
        pan[pan == ids[drop]] = 0
        info = [s for s in info if s["id"] != ids[drop]]
    inst = Instances((64, 64))
    inst.scores = torch.tensor([0.9, changes.get("score2", 0.5)])
    inst.pred_classes = torch.tensor([changes.get("cat1", 2), 0])
    sem = torch.linspace(0, 1, 2 * 64 * 64).view(2, 64, 64).clone()
    sem[1, 5, 5] += changes.get("sem", 0.0)
    return {"panoptic_seg": (pan, info), "instances": inst, "sem_seg": sem}


def _parity(ours: dict, theirs: dict, tol: Tolerance = PARITY_TOLERANCE):
    return compare_results(theirs, ours, tol)


def test_identical_and_renumbered_outputs_agree():
    res = _parity(_output(), _output())
    assert res.ok, res.problems
    fig = res.figures
    assert (fig["panoptic_agreement"], fig["segments_matched"], fig["segments"]) == (1.0, 3, 3)
    assert fig["segment_score_max_diff"] == 0.0 and fig["sem_seg_max_rel_diff"] == 0.0
    # Segment ids are matched by pixels, not by number.
    res = _parity(_output(), _output(ids={1: 7, 2: 3, 3: 1}))
    assert res.ok, res.problems
    assert res.figures["panoptic_agreement"] == 1.0


def test_rounding_sized_differences_pass():
    res = _parity(_output(), _output(score2=0.5 + 2e-5, sem=5e-5))
    assert res.ok, res.problems
    assert res.figures["segment_score_max_diff"] == pytest.approx(2e-5, rel=0.01)
    # One flipped pixel of 4096 is not rounding sized at the parity 99.99 %.
    res = _parity(_output(), _output(flip=1))
    assert not res.ok and res.figures["panoptic_agreement"] == pytest.approx(1 - 1 / 4096)
    res = _parity(_output(), _output(flip=1), Tolerance(pixel_agreement=0.999, score_atol=1e-4))
    assert res.ok, res.problems


@pytest.mark.parametrize(
    "change, message",
    [
        ({"score2": 0.501}, "segment scores differ"),
        ({"cat1": 1}, "segment 1 is category 1 not 2"),
        ({"drop": 2}, "without counterpart: [2]; #2 (thing 0 score 0.5000) missing"),
        ({"sem": 1e-3}, "sem_seg values differ"),
    ],
)
def test_differences_fail(change, message):
    res = _parity(_output(**change), _output())
    assert not res.ok
    assert any(message in p for p in res.problems), res.problems
    if "drop" in change:
        fig = res.figures
        assert (fig["segments_actual"], fig["segments"], fig["segments_matched"]) == (2, 3, 2)
        assert fig["panoptic_agreement"] == pytest.approx(1 - 20 * 30 / 4096)


def test_official_empty_instances_match_ours():
    ours, theirs = _output(drop=1), _output(drop=1)
    for out in (ours, theirs):
        out["panoptic_seg"][0][out["panoptic_seg"][0] == 2] = 0
        out["panoptic_seg"] = (out["panoptic_seg"][0], out["panoptic_seg"][1][-1:])
    ours["instances"] = Instances((64, 64), scores=torch.zeros(0), pred_classes=torch.zeros(0))
    # The official code returns list-valued fields when no thing survives.
    theirs["instances"] = Instances((64, 64), pred_masks=[], scores=[], pred_classes=[])
    res = _parity(ours, theirs)
    assert res.ok, res.problems
    assert (res.figures["instances"], res.figures["instances_actual"]) == (0, 0)
    theirs["instances"] = _output()["instances"]
    assert "0 instances instead of 2" in _parity(ours, theirs).problems


def test_instance_order_of_tied_scores_is_free():
    ours, theirs = _output(), _output()
    ours["instances"].scores = torch.tensor([0.7, 0.7])
    theirs["instances"].scores = torch.tensor([0.7, 0.7])
    theirs["instances"].pred_classes = torch.tensor([0, 2])  # same pairs, other order
    assert _parity(ours, theirs).ok
    theirs["instances"].pred_classes = torch.tensor([0, 1])
    problems = _parity(ours, theirs).problems
    assert any("1 instance(s) without a counterpart" in p for p in problems), problems


def test_matching_is_mutual_largest_overlap():
    """Every IoU > 0.5 pair matches; a small segment that lost half its pixels still matches
    itself; void is never matched; each segment has at most one counterpart."""
    exp = torch.zeros(10, 10, dtype=torch.int32)
    exp[:, :6], exp[0, 8:] = 1, 2  # a big segment and a 2-pixel one
    act = exp.clone()
    act[0, 9] = 0  # the small one loses half its pixels (IoU 0.5)
    assert match_segments(exp, act) == {1: 1, 2: 2}
    act[:, :2] = 5  # segment 1 split: its larger part is its one counterpart
    assert match_segments(exp, act) == {1: 1, 2: 2}
    assert match_segments(torch.zeros(4, 4), torch.zeros(4, 4)) == {}
