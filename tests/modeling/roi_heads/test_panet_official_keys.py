"""Official PANet checkpoints -> ours: every tensor placed for the three released layouts, the
class-dependent tensors moved as detectron2 needs, the frozen affine "BN" exact, the converter
command (legacy PyTorch serialisation, the ``{'model': ...}`` container) and its refusals.

The official-layout files are written here from the official module structure
(ShuLiu1993/PANet: lib/modeling/{ResNet,FPN,fast_rcnn_heads,mask_rcnn_heads}.py); no official
code is needed.
"""

import os

import pytest
import torch
from detectron2.modeling import build_model
from helpers import REPO, one_thread

from panoptic_ext.cli import convert_panet_official
from panoptic_ext.config import build_cfg
from panoptic_ext.modeling.roi_heads.panet_official_keys import (
    convert_panet_official_state_dict,
    is_official_panet_state_dict,
    official_panet_variant,
)

NUM_CLASSES = 3  # ours; the official model counts the background too
VARIANTS = {
    "mask_2x": "COCO-InstanceSegmentation/panet_R_50_official_2x.yaml",
    "det_1x": "COCO-Detection/panet_R_50_official_1x.yaml",
    "det_2fc_1x": "COCO-Detection/panet_R_50_2fc_official_1x.yaml",
}
OPTS = ["MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES)]


def _conv_gn(prefix: str, cin: int, cout: int, k: int = 3, bias: bool = False) -> dict:
    shapes = {f"{prefix}.0.weight": (cout, cin, k, k), f"{prefix}.1.weight": (cout,)}
    shapes[f"{prefix}.1.bias"] = (cout,)
    if bias:
        shapes[f"{prefix}.0.bias"] = (cout,)
    return shapes


def _resnet50() -> dict:
    body = "Conv_Body.conv_body."
    shapes = {body + "res1.conv1.weight": (64, 3, 7, 7)}
    shapes.update({body + f"res1.bn1.{p}": (64,) for p in ("weight", "bias")})
    cin = 64
    for stage, (blocks, inner) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=2):
        for b in range(blocks):
            block = f"{body}res{stage}.{b}."
            dims = ((inner, cin, 1), (inner, inner, 3), (4 * inner, inner, 1))
            for i, (cout, c, k) in enumerate(dims, start=1):
                shapes[f"{block}conv{i}.weight"] = (cout, c, k, k)
                shapes.update({f"{block}bn{i}.{p}": (cout,) for p in ("weight", "bias")})
            if b == 0:
                shapes[f"{block}downsample.0.weight"] = (4 * inner, cin, 1, 1)
                shapes.update(
                    {f"{block}downsample.1.{p}": (4 * inner,) for p in ("weight", "bias")}
                )
            cin = 4 * inner
    return shapes


def _neck_and_rpn() -> dict:
    shapes = _conv_gn("Conv_Body.conv_top", 2048, 256, k=1)
    for i, cin in enumerate((1024, 512, 256)):
        shapes.update(_conv_gn(f"Conv_Body.topdown_lateral_modules.{i}.conv_lateral", cin, 256, 1))
    for i in range(4):
        shapes.update(_conv_gn(f"Conv_Body.posthoc_modules.{i}", 256, 256))
    for i in range(3):
        for j in (1, 2):
            shapes.update(
                _conv_gn(f"Conv_Body.panet_buttomup_conv{j}_modules.{i}", 256, 256, bias=True)
            )
    for name, cout, k in (("conv", 256, 3), ("cls_score", 3, 1), ("bbox_pred", 12, 1)):
        shapes[f"RPN.FPN_RPN_{name}.weight"] = (cout, 256, k, k)
        shapes[f"RPN.FPN_RPN_{name}.bias"] = (cout,)
    return shapes


def _box_head(variant: str) -> dict:
    shapes = {}
    if variant == "det_2fc_1x":  # roi_2mlp_head_gn_panet
        for lvl in range(4):
            shapes.update({f"Box_Head.fc1.{lvl}.0.weight": (1024, 256 * 49)})
            shapes.update({f"Box_Head.fc1.{lvl}.{i}.bias": (1024,) for i in (0, 1)})
            shapes[f"Box_Head.fc1.{lvl}.1.weight"] = (1024,)
        shapes.update({"Box_Head.fc2.0.weight": (1024, 1024), "Box_Head.fc2.0.bias": (1024,)})
        shapes.update({f"Box_Head.fc2.1.{p}": (1024,) for p in ("weight", "bias")})
    else:  # roi_Xconv1fc_gn_head_panet
        for lvl in range(4):
            shapes.update(_conv_gn(f"Box_Head.conv1_head.{lvl}", 256, 256))
        for i in range(3):
            shapes[f"Box_Head.convs.{3 * i}.weight"] = (256, 256, 3, 3)
            shapes.update({f"Box_Head.convs.{3 * i + 1}.{p}": (256,) for p in ("weight", "bias")})
        shapes.update({"Box_Head.fc.weight": (1024, 256 * 49), "Box_Head.fc.bias": (1024,)})
    k = NUM_CLASSES + 1
    shapes.update({"Box_Outs.cls_score.weight": (k, 1024), "Box_Outs.cls_score.bias": (k,)})
    shapes.update({"Box_Outs.bbox_pred.weight": (4 * k, 1024), "Box_Outs.bbox_pred.bias": (4 * k,)})
    return shapes


def _mask_head() -> dict:
    shapes = {}
    for lvl in range(4):
        shapes.update(_conv_gn(f"Mask_Head.mask_conv1.{lvl}", 256, 256))
    for i in range(2):
        shapes[f"Mask_Head.conv_fcn.{3 * i}.weight"] = (256, 256, 3, 3)
        shapes.update({f"Mask_Head.conv_fcn.{3 * i + 1}.{p}": (256,) for p in ("weight", "bias")})
    shapes.update(_conv_gn("Mask_Head.mask_conv4", 256, 256))
    shapes.update(_conv_gn("Mask_Head.mask_conv4_fc", 256, 256))
    shapes.update(_conv_gn("Mask_Head.mask_conv5_fc", 256, 128))
    shapes.update(
        {"Mask_Head.mask_fc.0.weight": (784, 128 * 196), "Mask_Head.mask_fc.0.bias": (784,)}
    )
    shapes.update({"Mask_Head.upconv.weight": (256, 256, 2, 2), "Mask_Head.upconv.bias": (256,)})
    k = NUM_CLASSES + 1
    shapes.update({"Mask_Outs.classify.weight": (k, 256, 1, 1), "Mask_Outs.classify.bias": (k,)})
    return shapes


def official_state(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded random state dict in the official layout of ``variant``."""
    shapes = {**_resnet50(), **_neck_and_rpn(), **_box_head(variant)}
    if variant == "mask_2x":
        shapes.update(_mask_head())
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def expected():
    """Our model's state dict per variant (random init, CPU)."""
    with one_thread():
        return {
            v: build_model(
                build_cfg(os.path.join(REPO, "configs", c), OPTS, device="cpu")
            ).state_dict()
            for v, c in VARIANTS.items()
        }


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_tensor_is_placed_and_class_layouts_follow_detectron2(variant, expected):
    official = official_state(variant)
    assert is_official_panet_state_dict(official)
    assert official_panet_variant(official) == VARIANTS[variant]
    converted, report = convert_panet_official_state_dict(official, expected[variant])
    assert (report["unmatched"], report["shape_mismatch"], report["missing"]) == ([], [], [])
    assert len(report["matched"]) == len(official)
    assert set(converted) == set(expected[variant])

    # Background first (Detectron) -> last (detectron2); no background deltas.
    cls_w = official["Box_Outs.cls_score.weight"]
    torch.testing.assert_close(converted["roi_heads.box_predictor.cls_score.weight"][-1], cls_w[0])
    torch.testing.assert_close(
        converted["roi_heads.box_predictor.cls_score.weight"][:-1], cls_w[1:]
    )
    torch.testing.assert_close(
        converted["roi_heads.box_predictor.bbox_pred.bias"], official["Box_Outs.bbox_pred.bias"][4:]
    )
    if variant == "mask_2x":
        torch.testing.assert_close(
            converted["roi_heads.mask_head.predictor.weight"],
            official["Mask_Outs.classify.weight"][1:],
        )
    # The bottom-up convs keep their bias (official: conv with bias, then GN).
    torch.testing.assert_close(
        converted["backbone.pa_down2.bias"],
        official["Conv_Body.panet_buttomup_conv1_modules.0.0.bias"],
    )
    torch.testing.assert_close(
        converted["backbone.pa_out5.norm.weight"],
        official["Conv_Body.panet_buttomup_conv2_modules.2.1.weight"],
    )


def test_affine_channel_becomes_an_exact_frozen_bn(expected):
    """The converted stem computes conv * scale + bias with the official scale and bias."""
    official = official_state("det_1x", seed=1)
    converted, _ = convert_panet_official_state_dict(official, expected["det_1x"])
    cfg = build_cfg(os.path.join(REPO, "configs", VARIANTS["det_1x"]), OPTS, device="cpu")
    model = build_model(cfg).eval()
    model.load_state_dict(converted)
    x = torch.randn(1, 3, 32, 32)
    conv = model.backbone.bottom_up.stem.conv1
    scale, bias = (
        official["Conv_Body.conv_body.res1.bn1.weight"],
        official["Conv_Body.conv_body.res1.bn1.bias"],
    )
    raw = torch.nn.functional.conv2d(x, conv.weight, stride=2, padding=3)
    expected_out = raw * scale[None, :, None, None] + bias[None, :, None, None]
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected_out, rtol=1e-5, atol=1e-5)


def test_module_prefix_of_data_parallel_is_accepted(expected):
    official = {f"module.{k}": v for k, v in official_state("det_1x").items()}
    assert is_official_panet_state_dict(official)
    _, report = convert_panet_official_state_dict(official, expected["det_1x"])
    assert (report["unmatched"], report["missing"]) == ([], [])


def test_command_converts_a_legacy_official_file_and_the_result_loads(tmp_path, capsys):
    """A Detectron.pytorch file (old serialisation, optimizer and step beside the model) ->
    a checkpoint that the config loads with every key matched."""
    official = official_state("det_2fc_1x", seed=2)
    src, out = str(tmp_path / "panet_2fc.pth"), str(tmp_path / "converted.pth")
    payload = {"step": 89999, "train_size": 118287, "model": official, "optimizer": {"state": {}}}
    torch.save(payload, src, _use_new_zipfile_serialization=False)
    with one_thread():
        assert convert_panet_official.main([src, out, *OPTS[2:]]) == 0
    text = capsys.readouterr().out
    assert VARIANTS["det_2fc_1x"] in text and "missing:   0" in text
    cfg = build_cfg(os.path.join(REPO, "configs", VARIANTS["det_2fc_1x"]), OPTS, device="cpu")
    model = build_model(cfg)
    result = model.load_state_dict(torch.load(out, weights_only=True)["model"], strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    torch.testing.assert_close(
        model.roi_heads.box_head.fc1_levels[3].norm.bias, official["Box_Head.fc1.3.1.bias"]
    )


def test_command_refuses_a_checkpoint_of_another_layout_and_writes_nothing(tmp_path):
    src, out = str(tmp_path / "d2.pth"), str(tmp_path / "out.pth")
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7)}}, src)
    with pytest.raises(SystemExit, match=r"d2\.pth: not an official PANet checkpoint: expected"):
        convert_panet_official.main([src, out])
    assert not os.path.exists(out)


def test_command_refuses_a_config_the_checkpoint_does_not_fit(tmp_path, capsys):
    """The 2fc checkpoint given the 4conv1fc config: unmatched and missing names, no output."""
    src, out = str(tmp_path / "panet_2fc.pth"), str(tmp_path / "out.pth")
    torch.save({"model": official_state("det_2fc_1x")}, src)
    config = os.path.join(REPO, "configs", VARIANTS["det_1x"])
    with one_thread():
        assert convert_panet_official.main([src, out, "--config-file", config, *OPTS[2:]]) == 1
    text = capsys.readouterr().out
    assert "Box_Head.fc1.0.0.weight" in text and "roi_heads.box_head.conv1_levels.0.weight" in text
    assert "NOT writing" in text and not os.path.exists(out)
