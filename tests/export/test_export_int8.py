"""INT8 export: ``model_int8.onnx`` is derived from the checked fp32 model, checked by outcomes
(segments, confident instances, pixel agreement) and run by ``ExportedPredictor`` unchanged.

The tiny models here are random-init: their maps are flat, so many decisions are near-ties that
INT8 rounding flips. The tests therefore check the path (quantized graph, float layers, spec,
predictor, refusal) with a loose tolerance, not the accuracy of INT8 (DEPLOY.md).
"""

import dataclasses
import os

import onnx
import pytest
import torch
from export_helpers import family_model, mapped_inputs, val_dicts
from test_export_check import _copy, _results

from panoptic_ext.data import PanopticDatasetMapper
from panoptic_ext.export import (
    ExportCheckError,
    ExportedPredictor,
    ExportFormat,
    OutcomeTolerance,
    QuantizeOptions,
    compare_outcomes,
    export_model,
    families,
)
from panoptic_ext.utils.meta_arch import ExportFamily

# Random-init tiny models: what INT8 keeps of their near-tie outcomes (measured with S8S8
# activations: segments matched 0.55-0.80, panoptic pixels 0.71-0.91, sem_seg argmax >= 0.95).
LOOSE = OutcomeTolerance(segment_match=0.4, pixel_agreement=0.6, instance_match=0.3)
# The tiny Panoptic FCN's panoptic maps hold only 2 segments (its stuff argmax is flat, sem_seg
# agreement 0.73-0.80), so one extra segment is a share of 1/3; its confident instances match
# 0.86 (2 calibration images, the check's two sizes).
FCN_LOOSE = dataclasses.replace(LOOSE, segment_match=0.3)


def _calibration(cfg, count=2) -> QuantizeOptions:
    mapper = PanopticDatasetMapper(cfg, is_train=False)
    dicts = val_dicts()[2 : 2 + count]  # not the checked images
    return QuantizeOptions([mapper(d)["image"] for d in dicts], dataset="synthetic_panoptic_val")


def _int8_export(folder, tolerance: OutcomeTolerance, family: str, *opts):
    """The tiny ``family`` model exported to ``folder`` in fp32 and INT8: (cfg, model, result)."""
    cfg, model = family_model(family, *opts)
    result = export_model(
        model, cfg, ExportFormat.ONNX, str(folder), mapped_inputs(cfg, (0,)),
        quantize=_calibration(cfg), int8_tolerance=tolerance,
    )  # fmt: skip
    return cfg, model, result


@pytest.fixture(scope="module")
def panoptic_fpn_int8(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    return _int8_export(folder, LOOSE, "panoptic_fpn", "TEST.DETECTIONS_PER_IMAGE", 20)


def _weight_dequantized(graph, op_types=("Conv", "ConvTranspose", "Gemm")) -> set[str]:
    """Names of the ``op_types`` nodes whose weight (second input) comes out of a
    DequantizeLinear."""
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in graph.node if n.op_type in op_types and n.input[1] in dq}


def test_int8_file_is_quantized_except_the_float_heads(panoptic_fpn_int8):
    _, _, result = panoptic_fpn_int8
    assert os.path.isfile(result.path) and result.int8.path.endswith("model_int8.onnx")
    assert sorted(os.listdir(os.path.dirname(result.path))) == ["model.onnx", "model_int8.onnx"]
    q = result.int8.spec.quantization
    assert (q["precision"], q["method"], q["calibration_images"]) == ("int8", "minmax", 2)
    float_nodes = set(q["float_nodes"])
    assert {"/box_predictor/cls_score/Gemm", "/mask_head/predictor/Conv"} <= float_nodes
    assert "/sem_seg_head/predictor/Conv" in float_nodes
    assert len(float_nodes) == 14  # 5 RPN levels x 2, box predictor x 2, mask, semantic
    graph = onnx.load(result.int8.path).graph
    quantized = _weight_dequantized(graph)
    convs = {n.name for n in graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")}
    assert quantized == convs - float_nodes
    assert len(quantized) > 40
    assert not result.spec.quantization  # the fp32 file says it is float


@torch.no_grad()
def test_predictor_runs_the_int8_model(panoptic_fpn_int8):
    cfg, model, result = panoptic_fpn_int8
    predictor = ExportedPredictor(result.int8.path)
    assert predictor.spec == result.int8.spec
    assert [c["size"] for c in predictor.spec.checks] == [[64, 64], [97, 131]]
    sample = mapped_inputs(cfg, (1,))[0]
    actual = predictor.run_tensor(sample["image"], 64, 64)
    comparison = compare_outcomes(model([sample])[0], actual, LOOSE)
    assert comparison.ok, comparison.problems
    assert comparison.figures["sem_seg_agreement"] >= 0.9


def test_panet_int8_quantizes_the_bottom_up_path_and_keeps_the_fused_mask_logits_float(tmp_path):
    cfg, model = family_model("panet", "TEST.DETECTIONS_PER_IMAGE", 20)
    result = export_model(
        model, cfg, ExportFormat.ONNX, str(tmp_path), mapped_inputs(cfg, (0,)),
        quantize=_calibration(cfg), int8_tolerance=LOOSE,
    )  # fmt: skip
    float_nodes = set(result.int8.spec.quantization["float_nodes"])
    # PANet's fully-connected fusion: its fc mask logits are added to the FCN mask logits.
    assert any(n.startswith("/mask_head/fc_mask/") for n in float_nodes), float_nodes
    graph = onnx.load(result.int8.path).graph
    quantized = _weight_dequantized(graph)
    # The PAFPN bottom-up path (pa_down / pa_out convs) is INT8.
    convs = {n.name for n in graph.node if n.op_type == "Conv"}
    bottom_up = {n for n in convs if "/pa_down" in n or "/pa_out" in n}
    assert len(bottom_up) == 2 * (len(cfg.MODEL.FPN.IN_FEATURES) - 1)
    assert bottom_up <= quantized
    assert not quantized & float_nodes
    sample = mapped_inputs(cfg, (1,))[0]
    actual = ExportedPredictor(result.int8.path).run_tensor(sample["image"], 64, 64)
    comparison = compare_outcomes(model([sample])[0], actual, LOOSE)
    assert comparison.ok, comparison.problems


def test_int8_check_refuses_and_keeps_the_fp32_model(tmp_path):
    cfg, model = family_model("semantic_fpn")
    strict = OutcomeTolerance(pixel_agreement=1.0)
    with pytest.raises(ExportCheckError, match="model_int8.onnx not written") as err:
        export_model(
            model, cfg, ExportFormat.ONNX, str(tmp_path), mapped_inputs(cfg, (0,)),
            quantize=_calibration(cfg, 1), int8_tolerance=strict,
        )  # fmt: skip
    assert "sem_seg argmax agrees on" in str(err.value)
    assert os.listdir(tmp_path) == ["model.onnx"]  # checked fp32 written, no INT8, no temp file


def test_int8_needs_onnx(tmp_path):
    cfg, model = family_model("semantic_fpn")
    with pytest.raises(ValueError, match="needs --format onnx"):
        export_model(
            model, cfg, ExportFormat.TORCHSCRIPT, str(tmp_path), mapped_inputs(cfg, (0,)),
            quantize=_calibration(cfg, 1),
        )  # fmt: skip


@pytest.fixture(scope="module")
def panoptic_fcn_int8(tmp_path_factory):
    # The tiny config's position head is DCNv2: ONNX DeformConv.
    return _int8_export(tmp_path_factory.mktemp("int8_fcn"), FCN_LOOSE, "panoptic_fcn")


def test_panoptic_fcn_int8_keeps_its_decision_layers_float(panoptic_fcn_int8):
    _, _, result = panoptic_fcn_int8
    graph = onnx.load(result.int8.path).graph
    float_nodes = set(result.int8.spec.quantization["float_nodes"])
    levels = 5  # P3-P7: the position and kernel heads are called once per level
    for head in ("position_head/out_inst", "position_head/out_sem", "kernel_head/out_conv"):
        assert sum(f"/{head}" in n for n in float_nodes) == levels, head
    assert {"/thing_generator/MatMul", "/stuff_generator/MatMul"} <= float_nodes
    # lowres_predictions: fusion similarity, fusion mean, thing and stuff mask logits
    assert {"/MatMul", "/MatMul_1", "/MatMul_2", "/MatMul_3"} <= float_nodes
    assert len(float_nodes) == 3 * levels + 2 + 4
    quantized = _weight_dequantized(graph, ("Conv", "MatMul"))
    layers = {n.name for n in graph.node if n.op_type in ("Conv", "MatMul")}
    assert quantized == layers - float_nodes
    assert len(quantized) > 60  # backbone, FPN, encoder, head towers, DCN offset convs
    deform = [n for n in graph.node if n.op_type == "DeformConv"]
    assert len(deform) == 3 * levels  # not a quantized op type: a float op with float weights
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert not any(n.input[1] in dq for n in deform)


@torch.no_grad()
def test_predictor_runs_the_panoptic_fcn_int8_model(panoptic_fcn_int8):
    cfg, model, result = panoptic_fcn_int8
    predictor = ExportedPredictor(result.int8.path)
    assert predictor.spec == result.int8.spec
    sample = mapped_inputs(cfg, (1,))[0]
    expected = model([sample])[0]
    actual = predictor.run_tensor(sample["image"], 64, 64)
    comparison = compare_outcomes(expected, actual, FCN_LOOSE)
    assert comparison.ok, comparison.problems
    assert comparison.figures["confident_instances"] >= 5  # decided things, not an empty map
    assert comparison.figures["instance_match_share"] >= 0.7


def test_family_without_float_layers_is_refused(tmp_path, monkeypatch):
    """A family that has not chosen its float layers (``int8_float_nodes`` None) is refused
    before anything is exported."""
    cfg, model = family_model("semantic_fpn")
    family = families.IMPLEMENTATIONS[ExportFamily.SEMANTIC]
    unchosen = dataclasses.replace(family, int8_float_nodes=None)
    monkeypatch.setitem(families.IMPLEMENTATIONS, ExportFamily.SEMANTIC, unchosen)
    with pytest.raises(ValueError, match="Semantic FPN has no INT8 export yet"):
        export_model(
            model, cfg, ExportFormat.ONNX, str(tmp_path), mapped_inputs(cfg, (0,)),
            quantize=_calibration(cfg, 1),
        )  # fmt: skip
    assert not os.listdir(tmp_path)


def test_outcomes_accept_value_changes():
    a = _results()
    b = _copy(a)
    b["sem_seg"] *= 1.3  # INT8 rescales values: only the argmax counts
    b["instances"].scores -= 0.05
    b["instances"].pred_boxes.tensor += 1.0
    result = compare_outcomes(a, b)
    assert result.ok, result.problems
    assert result.figures["segment_match_share"] == 1.0
    assert result.figures["instance_match_share"] == 1.0


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda r: r["instances"].pred_classes.__setitem__(0, 0), "1 of 2 instances scoring"),
        (lambda r: r["instances"].pred_boxes.tensor[0].__iadd__(15.0), "1 of 2 instances"),
        (lambda r: r["panoptic_seg"][1][2].__setitem__("category_id", 2), "2 of 3 segments"),
        (lambda r: r["panoptic_seg"][0].masked_fill_(r["panoptic_seg"][0] == 1, 3), "2 of 3"),
        (lambda r: r["panoptic_seg"][0][:20].fill_(3), "panoptic segments agree on 80.00%"),
        (lambda r: r["sem_seg"].__setitem__(0, r["sem_seg"].max() + 1), "sem_seg argmax agrees"),
    ],
)
def test_outcomes_report_each_change(edit, problem):
    a = _results()
    b = _copy(a)
    edit(b)
    result = compare_outcomes(a, b)
    assert any(problem in p for p in result.problems), result.problems


def test_outcomes_ignore_unconfident_instances():
    a = _results()
    b = _copy(a)
    a["instances"].scores[1] = 0.4  # below 0.5: may be missing or moved on the other side
    b["instances"] = b["instances"][:1]
    result = compare_outcomes(a, b)
    assert result.figures["instance_match_share"] == 1.0
    assert not any("instances" in p for p in result.problems), result.problems
