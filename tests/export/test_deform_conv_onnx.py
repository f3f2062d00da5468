"""``torchvision::deform_conv2d`` exported as ONNX ``DeformConv`` gives torchvision's outputs in
ONNX Runtime: borders, DCNv2 masks, groups, offset groups, stride/dilation, and Panoptic FCN's
``ModulatedDeformConvBlock`` itself."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torchvision.ops import deform_conv2d

from panoptic_ext.export.symbolics import OPSET, register_symbolics
from panoptic_ext.layers.modulated_deform_conv import ModulatedDeformConvBlock


def _run_onnx(module: nn.Module, inputs: tuple, path) -> list[np.ndarray]:
    register_symbolics()
    names = [f"x{i}" for i in range(len(inputs))]
    axes = {n: {0: "n", 2: "h", 3: "w"} for n in names}
    torch.onnx.export(
        module, inputs, str(path), dynamo=False, opset_version=OPSET, input_names=names,
        dynamic_axes=axes,
    )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [n.op_type for n in _graph_ops(path)].count("DeformConv") == 1
    return session


def _graph_ops(path):
    import onnx

    return onnx.load(str(path)).graph.node


class _Deform(nn.Module):
    def __init__(self, cin, cout, k, groups, stride, pad, dilation, use_mask):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(cout, cin // groups, k, k, generator=g) * 0.2)
        self.bias = nn.Parameter(torch.randn(cout, generator=g))
        self.args = dict(stride=stride, padding=pad, dilation=dilation)
        self.use_mask = use_mask

    def forward(self, x, offset, mask):
        mask = mask if self.use_mask else None
        return deform_conv2d(x, offset, self.weight, self.bias, mask=mask, **self.args)


CASES = [
    # k, groups, offset groups, stride, pad, dilation, mask, offset scale
    (3, 1, 1, 1, 1, 1, True, 3.0),
    (3, 1, 1, 1, 1, 1, False, 3.0),
    (3, 2, 2, 1, 1, 1, True, 3.0),
    (3, 1, 4, 2, 1, 1, True, 30.0),  # most taps far outside the map
    (3, 1, 1, 1, 2, 2, True, 3.0),
    (1, 1, 1, 1, 0, 1, True, 3.0),
]


@pytest.mark.parametrize("k, groups, offset_groups, stride, pad, dilation, use_mask, scale", CASES)
def test_deform_conv_matches_torchvision(
    tmp_path, k, groups, offset_groups, stride, pad, dilation, use_mask, scale
):
    cin, cout = 8, 8
    module = _Deform(cin, cout, k, groups, stride, pad, dilation, use_mask)
    g = torch.Generator().manual_seed(1)

    def inputs(h, w):
        ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
        wo = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
        x = torch.randn(2, cin, h, w, generator=g)
        off = torch.randn(2, 2 * offset_groups * k * k, ho, wo, generator=g) * scale
        off[:, :, 0] = off[:, :, 0].round()  # integer offsets: taps exactly on the grid/borders
        mask = torch.rand(2, offset_groups * k * k, ho, wo, generator=g)
        return x, off, mask

    session = _run_onnx(module, inputs(9, 11), tmp_path / "dcn.onnx")
    for h, w in [(9, 11), (13, 6)]:  # the traced size and another one
        args = inputs(h, w)
        used = {i.name for i in session.get_inputs()}  # an unused mask is not a graph input
        feeds = {f"x{i}": a.numpy() for i, a in enumerate(args) if f"x{i}" in used}
        (got,) = session.run(None, feeds)
        want = module(*args).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_panoptic_fcn_deformable_block_matches(tmp_path):
    torch.manual_seed(0)
    block = ModulatedDeformConvBlock(16, 32, norm="GN").eval()
    # Offsets of several pixels: the sampling leaves the taps' own cells and the map.
    block.offset_mask_conv.weight.data.mul_(20)
    x = torch.randn(1, 16, 6, 5)
    session = _run_onnx(block, (x,), tmp_path / "block.onnx")
    # The block clamps offsets to +-(H + W): at 20x18 that bound is not the traced one (11).
    for shape in [(6, 5), (20, 18)]:
        y = torch.randn(1, 16, *shape)
        (got,) = session.run(None, {"x0": y.numpy()})
        with torch.no_grad():
            want = block(y).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # after GroupNorm
