"""The ONNX translations added by ``panoptic_ext.export.symbolics`` give torch's values in ONNX
Runtime, at the traced size and at another one."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from panoptic_ext.export.symbolics import OPSET, register_symbolics
from panoptic_ext.layers.coord_conv import add_coord_channels


class _CountNonzero(nn.Module):
    def forward(self, x):
        return torch.count_nonzero(x > 0, -1), torch.count_nonzero(x > 0.5, (1, 2))


class _InplaceAnd(nn.Module):
    def forward(self, x):
        a = x > 0
        a &= x < 0.5
        b = (x * 10).long()
        b &= 6
        return a, b


class _BoolCumsumDiagonal(nn.Module):
    def forward(self, x):
        square = x[..., : x.shape[-2]] > 0  # (N, H, H)
        first = square & (square.cumsum(1) == 1)
        return first.diagonal(dim1=1, dim2=2), x.diagonal(dim1=1, dim2=2)


class _Coord(nn.Module):
    def forward(self, x):
        return add_coord_channels(x)


CASES = [
    (_CountNonzero(), (2, 5, 7), (3, 1, 4)),
    (_InplaceAnd(), (2, 5, 7), (1, 3, 9)),
    (_BoolCumsumDiagonal(), (2, 5, 7), (3, 4, 6)),
    (_Coord(), (1, 2, 5, 6), (1, 2, 1, 1)),  # 1x1 map: linspace of one step
    (_Coord(), (1, 2, 1, 1), (1, 2, 3, 7)),
]


@pytest.mark.parametrize("module, traced, other", CASES)
def test_translation_matches_torch(tmp_path, module, traced, other):
    register_symbolics()
    path = str(tmp_path / "m.onnx")
    axes = {"x": {i: f"d{i}" for i in range(len(traced))}}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(traced, generator=g)
    torch.onnx.export(
        module, (x,), path, dynamo=False, opset_version=OPSET, input_names=["x"], dynamic_axes=axes
    )
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for shape in (traced, other):
        x = torch.randn(shape, generator=g)
        want = (
            [t.numpy() for t in module(x)] if isinstance(module(x), tuple) else [module(x).numpy()]
        )
        got = session.run(None, {"x": x.numpy()})
        for w, o in zip(want, got):
            assert w.dtype == o.dtype and w.shape == o.shape
            np.testing.assert_allclose(o, w, rtol=1e-6, atol=1e-6)
