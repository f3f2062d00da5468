"""The exporter refuses a model whose exported results differ; the comparison catches each kind
of difference; the spec stored in a model file is read strictly."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from export_helpers import family_model, mapped_inputs
from torch import nn

from panoptic_ext.export import (
    ExportCheckError,
    ExportedPredictor,
    ExportFormat,
    ExportSpec,
    Tolerance,
    compare_results,
    export_model,
)
from panoptic_ext.export.rcnn import RCNNSettings
from panoptic_ext.export.spec import settings_from_dict


class _SizeDependentHead(nn.Module):
    """Scales the logits by a Python float of the map width: tracing freezes that factor."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features, targets=None):
        logits, losses = self.head(features, targets)
        return logits * (float(logits.shape[-1]) / 64.0), losses


def test_export_refuses_a_trace_that_bakes_the_image_size(tmp_path):
    cfg, model = family_model("semantic_fpn")
    model.sem_seg_head = _SizeDependentHead(model.sem_seg_head)
    with pytest.raises(ExportCheckError) as err:
        export_model(model, cfg, ExportFormat.ONNX, str(tmp_path), mapped_inputs(cfg, (0,)))
    message = str(err.value)
    # The traced size itself passes; the second check size (97x131) fails.
    assert "check input 1 (97x131): sem_seg values differ" in message
    assert "check input 0" not in message
    assert os.listdir(tmp_path) == []  # neither the model nor a temporary file


def _results(num_pixels_h=40, num_pixels_w=50):
    h, w = num_pixels_h, num_pixels_w
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, :20, :20] = True
    masks[1, 20:, 25:] = True
    inst = Instances((h, w))
    inst.pred_masks = masks
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0], [25.0, 20.0, 50.0, 40.0]]))
    inst.scores = torch.tensor([0.9, 0.6])
    inst.pred_classes = torch.tensor([1, 2])
    ids = torch.zeros(h, w, dtype=torch.int32)
    ids[masks[0]], ids[masks[1]] = 1, 2
    ids[ids == 0] = 3
    info = [
        {"id": 1, "isthing": True, "category_id": 1, "score": 0.9},
        {"id": 2, "isthing": True, "category_id": 2, "score": 0.6},
        {"id": 3, "isthing": False, "category_id": 1, "area": int((ids == 3).sum())},
    ]
    sem = torch.randn(3, h, w, generator=torch.Generator().manual_seed(0))
    return {"instances": inst, "panoptic_seg": (ids, info), "sem_seg": sem}


def _copy(r):
    fields = r["instances"].get_fields()  # tensors and Boxes: both have clone()
    inst = Instances(r["instances"].image_size, **{k: v.clone() for k, v in fields.items()})
    ids, info = r["panoptic_seg"]
    return {
        "instances": inst,
        "panoptic_seg": (ids.clone(), [dict(s) for s in info]),
        "sem_seg": r["sem_seg"].clone(),
    }


def test_compare_accepts_float_rounding():
    a = _results()
    b = _copy(a)
    b["sem_seg"] += 1e-5
    b["instances"].scores += 5e-4
    b["instances"].pred_boxes.tensor += 0.01
    b["instances"].pred_masks[1, 39, 49] = False  # 1 pixel of 2000 = 0.05 %
    result = compare_results(a, b)
    assert result.ok, result.problems
    assert result.figures["mask_agreement_min"] == pytest.approx(1 - 1 / 2000)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda r: r["instances"].scores.__iadd__(2e-3), "2 instance(s) without a counterpart"),
        (lambda r: r["instances"].pred_classes.__setitem__(0, 0), "#0: class 1, score 0.9000"),
        (lambda r: r["instances"].pred_masks[0, :3, :].fill_(False), "mask equal on 97.00%"),
        (lambda r: r["instances"].pred_boxes.tensor[1].__iadd__(1.0), "boxes differ by 1.00 px"),
        (
            lambda r: r["instances"].scores[1:].__iadd__(2e-3),
            "#1: class 2, score 0.6000; nearest: score 0.6020, box 0.00 px away, mask equal on 100",
        ),
        (lambda r: r["panoptic_seg"][1][2].__setitem__("category_id", 2), "segment 3 is category"),
        (lambda r: r["panoptic_seg"][1][0].__setitem__("score", 0.8), "segment scores differ"),
        (lambda r: r["panoptic_seg"][0][:2].fill_(3), "panoptic segments agree"),
        (
            lambda r: r["panoptic_seg"][0].masked_fill_(r["panoptic_seg"][0] == 1, 3),
            "without counterpart: [1]",
        ),
        (lambda r: r["sem_seg"][0].__iadd__(100.0), "sem_seg argmax differs beyond near-ties"),
        (lambda r: r["sem_seg"].__imul__(1.01), "sem_seg values differ"),
        (lambda r: r.pop("sem_seg"), "result keys"),
    ],
)
def test_compare_reports_each_difference(edit, problem):
    a = _results()
    b = _copy(a)
    edit(b)
    result = compare_results(a, b)
    assert any(problem in p for p in result.problems), result.problems


def test_compare_lets_near_ties_pick_either_class():
    a = _results()
    a["sem_seg"][1] = a["sem_seg"][0] + 1e-6  # channels 0 and 1 tied up to rounding
    b = _copy(a)
    b["sem_seg"][0] += 2e-6  # ... and the exported map picks the other one everywhere
    result = compare_results(a, b)
    assert result.ok, result.problems
    assert result.figures["sem_seg_agreement"] < 0.9
    assert result.figures["sem_seg_agreement_beyond_ties"] == 1.0


def _two_stuff(flip_band: bool, flip_sem: bool, gap: float = 1e-6):
    """Stuff A (argmax channel 0, left) | stuff B (channel 1, right) and a thing (ids 1-3) on a
    40x40 image; columns 16-19 are tied between A and B within ``gap``. ``flip_band`` paints
    them B, ``flip_sem`` makes channel 1 win them in sem_seg."""
    sem = torch.zeros(2, 40, 40)
    sem[0, :, :20], sem[1, :, 20:] = 0.9, 0.9
    sem[:, :, 16:20] = 0.5
    sem[1 if flip_sem else 0, :, 16:20] += gap
    ids = torch.full((40, 40), 2, dtype=torch.int32)
    ids[:, (16 if flip_band else 20) :] = 3
    ids[:5, :5] = 1
    info = [
        {"id": 1, "isthing": True, "category_id": 0, "score": 0.9},
        {"id": 2, "isthing": False, "category_id": 0},
        {"id": 3, "isthing": False, "category_id": 1},
    ]
    return {"panoptic_seg": (ids, info), "sem_seg": sem}


def test_panoptic_stuff_ties_only_excuse_flipped_near_ties():
    """Panoptic FCN's stuff labels are the sem_seg argmax: where it flips at a near-tie (10 % of
    this image) the panoptic label may flip with it; nowhere else, and not for things."""
    ties = Tolerance(panoptic_stuff_ties=True)
    a = _two_stuff(False, False)
    b = _two_stuff(True, True)
    assert "panoptic segments agree on 90.0000% of pixels" in compare_results(a, b).problems
    result = compare_results(a, b, ties)
    assert result.ok, result.problems
    assert result.figures["panoptic_agreement"] == pytest.approx(0.9)
    assert result.figures["panoptic_agreement_beyond_stuff_ties"] == 1.0
    # The panoptic band flips but sem_seg does not: nothing excuses it.
    assert (
        "panoptic segments agree on 90.0000%"
        in compare_results(a, _two_stuff(True, False), ties).problems[0]
    )
    # A flip beyond the tie allowance (gap 0.01 > 2e-3).
    far = compare_results(_two_stuff(False, False, 0.01), _two_stuff(True, True, 0.01), ties)
    assert any("panoptic segments agree on 90.0000%" in p for p in far.problems), far.problems
    # A thing pixel never: the thing grows into the tied band.
    c = _two_stuff(True, True)
    c["panoptic_seg"][0][:5, 16:20] = 1
    thing = compare_results(_two_stuff(True, True), c, ties)
    assert any("panoptic segments agree on 98.7500%" in p for p in thing.problems), thing.problems


def test_only_panoptic_fcn_checks_with_stuff_ties():
    """The other families keep the pixel-for-pixel panoptic check."""
    from panoptic_ext.export import FAMILIES

    relaxed = {name for name, f in FAMILIES.items() if f.tolerance != Tolerance()}
    assert relaxed == {"PanopticFCN"}
    assert FAMILIES["PanopticFCN"].tolerance == Tolerance(panoptic_stuff_ties=True)


def test_compare_matches_by_content_not_order():
    """Near-tie detections may swap places and panoptic ids may be numbered differently."""
    a = _results()
    b = _copy(a)
    b["instances"] = b["instances"][torch.tensor([1, 0])]
    ids, info = b["panoptic_seg"]
    renumbered = ids.clone()
    for old, new in [(1, 7), (2, 5), (3, 9)]:
        renumbered[ids == old] = new
    info = [{**s, "id": {1: 7, 2: 5, 3: 9}[s["id"]]} for s in info]
    b["panoptic_seg"] = (renumbered, info)
    result = compare_results(a, b)
    assert result.ok, result.problems
    assert result.figures["panoptic_agreement"] == 1.0 and result.figures["box_max_diff"] == 0


def _whole_image_instances(scores: torch.Tensor) -> Instances:
    inst = Instances((8, 8))
    inst.pred_masks = torch.ones(len(scores), 8, 8, dtype=torch.bool)
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(len(scores), 1))
    inst.scores = scores
    inst.pred_classes = torch.zeros(len(scores), dtype=torch.long)
    return inst


def test_compare_matches_many_equal_masks_by_score():
    """A weak model (Panoptic FCN at random init) gives dozens of same-class whole-image masks
    with scores 1e-4 apart: boxes and masks all tie, so the score decides the counterpart. (The
    first ten by box alone once left an instance without its own counterpart: a result
    differed from itself.)"""
    scores = 0.06 + 1e-4 * torch.arange(30, dtype=torch.float32).flip(0)
    a = {"instances": _whole_image_instances(scores)}
    assert compare_results(a, a).ok, compare_results(a, a).problems
    b = {"instances": _whole_image_instances(scores + 1e-6)}  # rounding of another runtime
    result = compare_results(a, b)
    assert result.ok, result.problems
    assert result.figures["instance_score_max_diff"] < 2e-6
    c = {"instances": _whole_image_instances(torch.cat([scores[:-1], scores[-1:] - 2e-3]))}
    assert "1 instance(s) without a counterpart" in compare_results(a, c).problems[0]


def test_compare_accepts_a_mask_box_moved_by_one_border_pixel():
    """Boxes from masks (Panoptic FCN) move a pixel when a border pixel rounds the other way."""
    a = _results()
    b = _copy(a)
    b["instances"].pred_masks[0, :20, 20] = True  # one more column of 20 px = 1 % of the mask
    b["instances"].pred_boxes.tensor[0, 2] += 1.0
    result = compare_results(a, b, Tolerance(pixel_agreement=0.99))
    assert result.ok, result.problems
    assert result.figures["box_max_diff"] == 1.0
    assert not compare_results(a, b).ok  # 20 px of 2000 is beyond the default 0.1 %


def test_compare_counts_instances():
    a, b = _results(), _results()
    b["instances"] = b["instances"][:1]
    assert compare_results(a, b).problems[0] == "1 instances instead of 2"
    assert not compare_results(a, b, Tolerance(pixel_agreement=0.5)).ok


def _spec_json(**changes):
    spec = ExportSpec(
        meta_architecture="PanopticFPN",
        input_format="BGR",
        min_size_test=64,
        max_size_test=64,
        output_names=("boxes",),
        settings={"mask_on": True, "panoptic": False},
    )
    data = json.loads(spec.to_json())
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not ...})


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "m.onnx: export spec is not valid JSON"),
        ("[1]", "m.onnx: export spec must be a JSON object"),
        (_spec_json(spec_version=7), "m.onnx: export spec version 7"),
        (_spec_json(extra=1), "m.onnx: unknown export spec key(s) ['extra']"),
        (_spec_json(min_size_test=...), "m.onnx: export spec lacks key(s) ['min_size_test']"),
        (_spec_json(min_size_test=True), "key 'min_size_test' must be int, got True"),
        (_spec_json(output_names="boxes"), "key 'output_names' must be tuple[str, ...]"),
        (_spec_json(output_names=["boxes", 3]), "key 'output_names' must be tuple[str, ...]"),
        (_spec_json(input_format="YUV"), "input_format must be 'BGR' or 'RGB', got 'YUV'"),
    ],
)
def test_spec_is_read_strictly(text, message):
    with pytest.raises(ValueError) as err:
        ExportSpec.from_json(text, "m.onnx")
    assert message in str(err.value)


def test_settings_are_read_strictly():
    ok = settings_from_dict(RCNNSettings, {"mask_on": True, "panoptic": False}, "m.onnx")
    assert ok == RCNNSettings(mask_on=True, panoptic=False)
    with pytest.raises(ValueError, match="m.onnx: unknown RCNNSettings setting key"):
        settings_from_dict(RCNNSettings, {"mask_on": True, "panoptic": False, "x": 1}, "m.onnx")
    with pytest.raises(ValueError, match="key 'overlap_thresh' must be float | None"):
        settings_from_dict(
            RCNNSettings, {"mask_on": True, "panoptic": True, "overlap_thresh": "0.5"}, "m.onnx"
        )


@dataclasses.dataclass(frozen=True)
class _Settings:
    sizes: tuple[int, ...]  # a real class annotation, as in modeling's dataclasses
    channel: int | None
    thres: float


def test_settings_tuples_and_optionals():
    data = json.loads(json.dumps(dataclasses.asdict(_Settings((3, 5), None, 0.5))))
    assert settings_from_dict(_Settings, data, "m.onnx") == _Settings((3, 5), None, 0.5)
    for bad in ({"sizes": [3, True]}, {"sizes": [3.5]}, {"channel": 1.0}, {"thres": None}):
        with pytest.raises(ValueError, match="m.onnx: _Settings setting key"):
            settings_from_dict(_Settings, {**data, **bad}, "m.onnx")


def test_predictor_refuses_files_that_are_not_exports(tmp_path):
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(nn.ReLU(), (torch.zeros(3, 4, 4),), str(plain), dynamo=False)
    with pytest.raises(ValueError, match="plain.onnx: not a panoptic_ext export"):
        ExportedPredictor(str(plain))
    with pytest.raises(ValueError, match="expected a .onnx"):
        (tmp_path / "model.bin").write_bytes(b"")
        ExportedPredictor(str(tmp_path / "model.bin"))
    with pytest.raises(FileNotFoundError, match="missing.onnx does not exist"):
        ExportedPredictor(str(tmp_path / "missing.onnx"))


def test_predictor_checks_the_image_it_is_given(tmp_path):
    cfg, model = family_model("semantic_fpn")
    result = export_model(model, cfg, ExportFormat.ONNX, str(tmp_path), mapped_inputs(cfg, (0,)))
    predictor = ExportedPredictor(result.path)
    with pytest.raises(ValueError, match="expected an \\(H, W, 3\\) uint8 BGR image"):
        predictor(np.zeros((8, 8), np.uint8))


def test_family_check_names_the_class_and_the_config_key():
    """A model of another meta-architecture, or an R-CNN without an RPN, is refused up front
    with the expected class or the key; subclasses (PanopticFPN of GeneralizedRCNN) pass."""
    from panoptic_ext.export.families import family_of

    _, semantic = family_model("semantic_fpn")
    with pytest.raises(ValueError, match="Panoptic FCN export expects a PanopticFCN, got Seman"):
        family_of("PanopticFCN").check(semantic)
    _, panoptic_fpn = family_model("panoptic_fpn")
    family_of("PanopticFPN").check(panoptic_fpn)
    panoptic_fpn.proposal_generator = None
    with pytest.raises(ValueError, match="MODEL.PROPOSAL_GENERATOR.NAME"):
        family_of("PanopticFPN").check(panoptic_fpn)
