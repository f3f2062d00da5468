"""ONNX translations that the TorchScript-based exporter lacks or gets wrong.

* ``torchvision::deform_conv2d`` -> ``DeformConv``: torchvision registers ``roi_align`` / ``nms``
  itself but not this one. ONNX Runtime's CPU ``DeformConv`` (opset 19) computes torchvision's
  function exactly (same bilinear sampling, zero outside the map, DCNv2 masks, groups) and was
  measured ~10x faster than torchvision's CPU kernel (64 channels, 50x76: 8.5 ms vs 81 ms), so
  no decomposition is used.
* ``count_nonzero`` and in-place ``&=`` have no translation.
* ``cumsum`` and ``diagonal`` of a bool tensor produce ill-typed graphs (CumSum has no bool
  input; diagonal multiplies by a float mask).
* ``linspace`` with one step divides by zero (NaN) where torch gives ``[start]`` (CoordConv on a
  1-pixel map).
Each translation gives torch's values; ``tests/export/test_symbolics.py`` checks them in ONNX
Runtime.
"""

from __future__ import annotations

import torch
from torch.onnx import symbolic_helper, symbolic_opset9, symbolic_opset11, symbolic_opset13

__all__ = ["OPSET", "register_symbolics"]

# ONNX DeformConv exists from opset 19.
OPSET = 19
_FLOAT, _BOOL, _INT64 = 1, 9, 7  # ONNX TensorProto data types


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def _deform_conv2d(
    g,
    input,
    weight,
    offset,
    mask,
    bias,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dilation_h,
    dilation_w,
    groups,
    offset_groups,
    use_mask,
):
    # torchvision always passes a bias tensor (zeros when the layer has none).
    inputs = [input, weight, offset, bias] + ([mask] if use_mask else [])
    return g.op(
        "DeformConv",
        *inputs,
        dilations_i=[dilation_h, dilation_w],
        group_i=groups,
        offset_group_i=offset_groups,
        pads_i=[pad_h, pad_w, pad_h, pad_w],
        strides_i=[stride_h, stride_w],
    )


def _count_nonzero(g, input, dim):
    # Both overloads: ``dim`` an int or a list of ints (a traced constant either way).
    dims = [int(v) for v in torch.as_tensor(symbolic_helper._maybe_get_const(dim, "t")).flatten()]
    nonzero = g.op("Cast", g.op("Not", g.op("Equal", input, _zero_like(g, input))), to_i=_INT64)
    axes = g.op("Constant", value_t=torch.tensor(dims, dtype=torch.long))
    return g.op("ReduceSum", nonzero, axes, keepdims_i=0)


def _zero_like(g, input):
    return g.op("CastLike", g.op("Constant", value_t=torch.tensor(0)), input)


def _iand(g, self, other):
    # In-place ``a &= b``: the traced graph uses the result as the new ``a``.
    return g.op("And" if self.type().scalarType() == "Bool" else "BitwiseAnd", self, other)


def _cumsum(g, input, dim, dtype):
    # ONNX CumSum has no bool input; torch sums bools as int64.
    if input.type().scalarType() == "Bool":
        input = g.op("Cast", input, to_i=_INT64)
    return symbolic_opset11.cumsum(g, input, dim, dtype)


def _diagonal(g, input, offset, dim1, dim2):
    # torch's translation multiplies by a float eye mask: wrong type for a bool input.
    if input.type().scalarType() != "Bool":
        return symbolic_opset13.diagonal(g, input, offset, dim1, dim2)
    out = symbolic_opset13.diagonal(g, g.op("Cast", input, to_i=_FLOAT), offset, dim1, dim2)
    return g.op("Cast", out, to_i=_BOOL)


def _linspace(g, start, end, steps, dtype, layout, device, pin_memory):
    # torch's translation divides by steps - 1: NaN for a 1-pixel map (CoordConv on P7 of a
    # small image), where torch gives [start].
    one = g.op("Constant", value_t=torch.tensor(1, dtype=torch.int64))
    steps_64 = g.op("Cast", steps, to_i=_INT64)
    step = symbolic_opset9.div(
        g, symbolic_opset9.sub(g, end, start), g.op("Max", g.op("Sub", steps_64, one), one)
    )
    positions = symbolic_helper._arange_helper(g, steps, None)
    return symbolic_opset9.add(g, symbolic_opset9.mul(g, positions, step), start)


_TRANSLATIONS = {
    "torchvision::deform_conv2d": _deform_conv2d,
    "aten::count_nonzero": _count_nonzero,
    "aten::__iand_": _iand,
    "aten::cumsum": _cumsum,
    "aten::diagonal": _diagonal,
    "aten::linspace": _linspace,
}
_registered = False


def register_symbolics() -> None:
    """Register the translations above for ``OPSET`` (idempotent)."""
    global _registered
    if not _registered:
        for name, fn in _TRANSLATIONS.items():
            torch.onnx.register_custom_op_symbolic(name, fn, OPSET)
        _registered = True
