"""Every family exported to ONNX (and TorchScript) gives the eager model's results.

Eager PyTorch vs the exported model run by ``ExportedPredictor`` on synthetic val images at two
sizes (64x64 and a 64x48 crop, which the predictor reads and resizes itself): same segments
(pixel agreement >= 99.9 %, same categories), scores within 1e-3, and outputs that are not
degenerate (several classes, things and stuff).
"""

import cv2
import pytest
import torch
from export_helpers import cropped_image, family_model, mapped_inputs

from panoptic_ext.data import PanopticDatasetMapper
from panoptic_ext.export import ExportedPredictor, ExportFormat, compare_results, export_model

FAMILIES = ["semantic_fpn", "panoptic_fpn", "panet", "panoptic_fcn"]


def _assert_same(expected, actual):
    result = compare_results(expected, actual)
    assert result.ok, result.problems
    f = result.figures
    if "panoptic_seg" in expected:
        assert f["panoptic_agreement"] >= 0.999
        assert f["segment_score_max_diff"] <= 1e-3
    if "instances" in expected and len(expected["instances"]):
        assert f["mask_agreement_min"] >= 0.999
        assert f["instance_score_max_diff"] <= 1e-3
    if "sem_seg" in expected:
        assert f["sem_seg_agreement_beyond_ties"] >= 0.999
    return f


def _assert_informative(result):
    """The comparison is only meaningful if the outputs have content."""
    if "panoptic_seg" in result:
        kinds = {s["isthing"] for s in result["panoptic_seg"][1]}
        assert kinds == {True, False}, result["panoptic_seg"][1]
        assert len(result["instances"]) > 0
    else:
        assert result["sem_seg"].argmax(0).unique().numel() >= 2


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, tmp_path_factory):
    cfg, model = family_model(request.param)
    out = tmp_path_factory.mktemp(request.param)
    result = export_model(model, cfg, ExportFormat.ONNX, str(out), mapped_inputs(cfg, (0,)))
    return cfg, model, result


@torch.no_grad()
def test_onnxruntime_matches_eager_at_two_sizes(exported, tmp_path):
    cfg, model, result = exported
    predictor = ExportedPredictor(result.path)
    mapper = PanopticDatasetMapper(cfg, is_train=False)
    dicts = [mapped_inputs(cfg, (1,))[0], mapper(cropped_image(str(tmp_path), 2, 64, 48))]
    sizes = set()
    for d in dicts:
        expected = model([d])[0]
        actual = predictor(cv2.imread(d["file_name"]))  # reads and resizes on its own
        sizes.add(tuple(d["image"].shape[-2:]))
        _assert_informative(expected)
        _assert_same(expected, actual)
    assert sizes == {(64, 64), (64, 48)}


def test_export_records_its_checks(exported):
    _, _, result = exported
    spec = ExportedPredictor(result.path).spec
    assert spec == result.spec
    # The sample at its size and at a second size that pads differently, both checked.
    assert [c["size"] for c in spec.checks] == [[64, 64], [97, 131]]
    # Network outputs at 1 thread vs the default count: float rounding at most (a box figure
    # of tens of pixels once came from post-processing rescaling the compared boxes in place).
    assert all(0 <= c["thread_output_max_diff"] <= 1e-3 for c in spec.checks)


@torch.no_grad()
def test_postprocess_leaves_the_network_outputs_unchanged(exported):
    cfg, _, result = exported
    predictor = ExportedPredictor(result.path)
    image = mapped_inputs(cfg, (1,))[0]["image"]
    outputs = predictor.backend(image)
    before = {k: v.clone() for k, v in outputs.items()}
    predictor.postprocess(outputs, tuple(image.shape[-2:]), 128, 96)  # rescaled output size
    assert all(torch.equal(outputs[k], v) for k, v in before.items())


@torch.no_grad()
@pytest.mark.parametrize("family", ["panoptic_fpn", "panoptic_fcn"])
def test_torchscript_matches_eager(family, tmp_path):
    cfg, model = family_model(family)
    inputs = mapped_inputs(cfg, (0, 1))
    result = export_model(model, cfg, ExportFormat.TORCHSCRIPT, str(tmp_path), inputs[:1])
    assert result.path.endswith("model.ts")
    predictor = ExportedPredictor(result.path)
    expected = model([inputs[1]])[0]
    actual = predictor.run_tensor(inputs[1]["image"], 64, 64)
    _assert_informative(expected)
    _assert_same(expected, actual)


@torch.no_grad()
def test_zero_detections_export_and_run(tmp_path):
    """No detection at all (the mask head's GroupNorm sees an empty batch in eager)."""
    cfg, model = family_model("panet", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 1.0)
    inputs = mapped_inputs(cfg, (1,))
    result = export_model(model, cfg, ExportFormat.ONNX, str(tmp_path), inputs)
    actual = ExportedPredictor(result.path).run_tensor(inputs[0]["image"], 64, 64)
    assert len(actual["instances"]) == 0
    assert actual["panoptic_seg"][1] and not any(s["isthing"] for s in actual["panoptic_seg"][1])
    _assert_same(model(inputs)[0], actual)
