"""PAFPN neck: output names/shapes/strides, equality with detectron2's FPN, the N recursion."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_backbone
from helpers import load_cfg

from panoptic_ext.modeling.backbone.pafpn import PAFPN

PAFPN_NAME = "build_resnet_pafpn_backbone"


def _cfg(*opts):
    # GroupNorm ResNet-18 with a 32-channel FPN (GN(32, 32) is valid), random init.
    return load_cfg(
        "quick_schedules/Base-Synthetic-Panoptic-FPN.yaml",
        "MODEL.FPN.OUT_CHANNELS",
        32,
        "MODEL.BACKBONE.NAME",
        PAFPN_NAME,
        *opts,
    )


def _build(cfg):
    torch.manual_seed(0)
    return build_backbone(cfg).eval()


@pytest.mark.parametrize(
    "top_levels, names",
    [
        ("P6", ["p2", "p3", "p4", "p5", "p6"]),
        ("P6P7", ["p2", "p3", "p4", "p5", "p6", "p7"]),
        ("", ["p2", "p3", "p4", "p5"]),
    ],
)
def test_pafpn_output_names_shapes_and_strides(top_levels, names):
    backbone = _build(_cfg("MODEL.PAFPN.TOP_LEVELS", top_levels))
    assert isinstance(backbone, PAFPN)
    assert backbone.size_divisibility == 32
    shapes = backbone.output_shape()
    assert list(shapes) == names
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = backbone(x)
    assert list(out) == names
    for name in names:
        stride = 2 ** int(name[1:])
        assert shapes[name].stride == stride and shapes[name].channels == 32
        assert out[name].shape == (2, 32, math.ceil(64 / stride), math.ceil(96 / stride))


def test_pafpn_without_bottom_up_equals_detectron2_fpn():
    cfg = _cfg("MODEL.PAFPN.BOTTOM_UP", False)
    pafpn = _build(cfg)
    fpn_cfg = cfg.clone()
    fpn_cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    fpn = _build(fpn_cfg)
    # Same parameter names: a detectron2 FPN state dict loads strictly.
    assert set(pafpn.state_dict()) == set(fpn.state_dict())
    torch.manual_seed(1)
    for p in fpn.parameters():  # non-default weights so that a wrong wiring shows
        p.data.normal_(0, 0.05)
    pafpn.load_state_dict(fpn.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        a, b = pafpn(x), fpn(x)
    assert list(a) == list(b) == ["p2", "p3", "p4", "p5", "p6"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_pafpn_bottom_up_recursion_on_fpn_outputs():
    cfg = _cfg("MODEL.PAFPN.ACTIVATION", True)
    pafpn = _build(cfg)
    fpn_cfg = cfg.clone()
    fpn_cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    fpn = _build(fpn_cfg)
    result = pafpn.load_state_dict(fpn.state_dict(), strict=False)
    assert result.unexpected_keys == []
    new = {k.split(".")[0] for k in result.missing_keys}
    assert new == {"pa_down2", "pa_down3", "pa_down4", "pa_out3", "pa_out4", "pa_out5"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        n, p = pafpn(x), fpn(x)
        # N2 = P2; N(i+1) = relu(gn(conv(relu(gn(conv_s2(N_i))) + P(i+1)))).
        assert torch.equal(n["p2"], p["p2"])
        expected = p["p2"]
        for i in (2, 3, 4):
            down, out = getattr(pafpn, f"pa_down{i}"), getattr(pafpn, f"pa_out{i + 1}")
            expected = out(down(expected) + p[f"p{i + 1}"])
            torch.testing.assert_close(n[f"p{i + 1}"], expected, rtol=0, atol=0)
        assert not torch.allclose(n["p5"], p["p5"])
        # The extra level comes from N5, not from FPN's P5.
        assert torch.equal(n["p6"], n["p5"][:, :, ::2, ::2])


@pytest.mark.parametrize(
    "norm, bias, expected",
    # 3 stride-2 + 3 stride-1 3x3 convs, 256 -> 256: 3,538,944 weights, + 1,536 biases,
    # + 3,072 GN affine parameters.
    [
        ("", True, 3_540_480),
        ("", False, 3_540_480),
        ("GN", True, 3_543_552),
        ("GN", False, 3_542_016),
    ],
)
def test_pafpn_bottom_up_parameter_count_matches_spec(norm, bias, expected):
    opts = ("MODEL.FPN.OUT_CHANNELS", 256, "MODEL.PAFPN.NORM", norm, "MODEL.PAFPN.CONV_BIAS", bias)
    backbone = _build(_cfg(*opts))
    count = sum(p.numel() for n, p in backbone.named_parameters() if n.startswith("pa_"))
    assert count == expected


def test_bottom_up_conv_bias_before_group_norm_is_the_official_function():
    """Official PANet: relu(GN(conv(x) + b)). The bias is not absorbed by GroupNorm (unlike BN):
    dropping it changes the output, so CONV_BIAS False is a different model. 64 channels: GN's
    32 groups then hold 2 channels each (with 1 per group GN would absorb a per-channel bias)."""
    opts = ("MODEL.FPN.OUT_CHANNELS", 64, "MODEL.PAFPN.NORM", "GN")
    pafpn = _build(_cfg(*opts, "MODEL.PAFPN.CONV_BIAS", True))
    down = pafpn.pa_down2
    with torch.no_grad():
        down.bias.normal_()
        down.norm.weight.normal_()
        down.norm.bias.normal_()
    x = torch.randn(2, 64, 16, 16)
    with torch.no_grad():
        conv = F.conv2d(x, down.weight, down.bias, stride=2, padding=1)
        expected = F.relu(F.group_norm(conv, 32, down.norm.weight, down.norm.bias, eps=1e-5))
        torch.testing.assert_close(down(x), expected)
        without_bias = F.conv2d(x, down.weight, None, stride=2, padding=1)
        dropped = F.relu(F.group_norm(without_bias, 32, down.norm.weight, down.norm.bias))
    assert (expected - dropped).abs().max() > 1e-2
    no_bias = _build(_cfg(*opts, "MODEL.PAFPN.CONV_BIAS", False))
    assert all(conv.bias is None for conv in no_bias.pa_down_convs + no_bias.pa_out_convs)


@pytest.mark.parametrize("key, value", [("TOP_LEVELS", "P7"), ("FUSE_TYPE", "max")])
def test_pafpn_rejects_bad_options(key, value):
    with pytest.raises(ValueError, match=f"MODEL.PAFPN.{key}"):
        _build(_cfg(f"MODEL.PAFPN.{key}", value))
