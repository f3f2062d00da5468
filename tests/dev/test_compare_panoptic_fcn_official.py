"""The parts of dev/compare_panoptic_fcn_official.py that need no official code: the output
comparison (segment matching, tolerances) and the config translation tables."""

import types

import pytest
import torch
from detectron2.structures import Instances
from helpers import QUICK, config_path, refusal_pattern, tagged_chain

import dev.compare_panoptic_fcn_official
from panoptic_ext.config import build_cfg
from panoptic_ext.utils.yaml_config import UnsafeConfigError


@pytest.fixture(scope="module")
def tool():
    return dev.compare_panoptic_fcn_official


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


def test_identical_and_renumbered_outputs_agree(tool):
    res = tool.compare_outputs(_output(), _output())
    assert res.ok, res.problems
    assert (res.pixel_agreement, res.num_matched, res.num_segments) == (1.0, 3, (3, 3))
    assert res.max_score_diff == 0.0 and res.sem_seg_max_diff == 0.0
    # Segment ids are matched by pixels, not by number.
    res = tool.compare_outputs(_output(), _output(ids={1: 7, 2: 3, 3: 1}))
    assert res.ok, res.problems
    assert res.pixel_agreement == 1.0


def test_rounding_sized_differences_pass(tool):
    res = tool.compare_outputs(
        _output(), _output(score2=0.5 + 2e-5, sem=5e-5, flip=0), tool.Tolerance()
    )
    assert res.ok, res.problems
    assert res.max_score_diff == pytest.approx(2e-5, rel=0.01)
    # One flipped pixel of 4096 is not rounding sized at the default 99.99 %.
    res = tool.compare_outputs(_output(), _output(flip=1))
    assert not res.ok and res.pixel_agreement == pytest.approx(1 - 1 / 4096)
    res = tool.compare_outputs(
        _output(), _output(flip=1), tool.Tolerance(min_pixel_agreement=0.999)
    )
    assert res.ok, res.problems


@pytest.mark.parametrize(
    "change, message",
    [
        ({"score2": 0.501}, "max score difference"),
        ({"cat1": 1}, "matched segments differ"),
        ({"drop": 2}, "has no match in ours"),
        ({"sem": 1e-3}, "sem_seg max abs difference"),
    ],
)
def test_differences_fail(tool, change, message):
    res = tool.compare_outputs(_output(**change), _output())
    assert not res.ok
    assert any(message in p for p in res.problems), res.problems
    if "drop" in change:
        assert res.num_segments == (2, 3) and res.num_matched == 2
        assert res.pixel_agreement == pytest.approx(1 - 20 * 30 / 4096)


def test_official_empty_instances_match_ours(tool):
    ours, theirs = _output(drop=1), _output(drop=1)
    for out in (ours, theirs):
        out["panoptic_seg"][0][out["panoptic_seg"][0] == 2] = 0
        out["panoptic_seg"] = (out["panoptic_seg"][0], out["panoptic_seg"][1][-1:])
    ours["instances"] = Instances((64, 64), scores=torch.zeros(0), pred_classes=torch.zeros(0))
    # The official code returns list-valued fields when no thing survives.
    theirs["instances"] = Instances((64, 64), pred_masks=[], scores=[], pred_classes=[])
    res = tool.compare_outputs(ours, theirs)
    assert res.ok, res.problems
    assert res.num_instances == (0, 0)
    theirs["instances"] = _output()["instances"]
    assert "instance counts differ" in " ".join(tool.compare_outputs(ours, theirs).problems)


def test_translation_table_names_existing_keys(tool):
    cfg = tool.our_config(config_path("quick_schedules/panoptic_fcn_synthetic.yaml"), [])
    for key in list(tool.OFFICIAL_KEYS) + list(tool.HARD_CODED):
        tool._get(cfg, key)  # KeyError when a key of ours is renamed
    with pytest.raises(SystemExit, match="LEVEL_TOP_NUM"):
        tool.our_config(
            config_path("quick_schedules/panoptic_fcn_synthetic.yaml"),
            ["MODEL.PANOPTIC_FCN.POSITION_HEAD.THING.LEVEL_TOP_NUM", 10],
        )


def test_instance_order_of_tied_scores_is_free(tool):
    ours, theirs = _output(), _output()
    ours["instances"].scores = torch.tensor([0.7, 0.7])
    theirs["instances"].scores = torch.tensor([0.7, 0.7])
    theirs["instances"].pred_classes = torch.tensor([0, 2])  # same pairs, other order
    assert tool.compare_outputs(ours, theirs).ok
    theirs["instances"].pred_classes = torch.tensor([0, 1])
    assert "instance classes differ" in " ".join(tool.compare_outputs(ours, theirs).problems)


def test_official_yaml_is_read_by_the_safe_loader(tmp_path):
    """The official yaml is merged into the official cfg by the same safe reader as ours: a
    tagged ``_BASE_`` chain is refused and its payload never runs."""
    marker = tmp_path / "PWNED"
    top, middle = tagged_chain(str(tmp_path), marker)
    stub = types.SimpleNamespace(add_panopticfcn_config=lambda cfg: None)
    with pytest.raises(UnsafeConfigError, match=refusal_pattern(middle)):
        dev.compare_panoptic_fcn_official.official_config(stub, build_cfg(QUICK, []), top)
    assert not marker.exists()
