"""FrozenBatchNorm folded into the preceding conv, for inference.

A detectron2 ``Conv2d`` whose ``norm`` is a ``FrozenBatchNorm2d`` computes
``conv(x, W) * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)`` (the affine form that
``FrozenBatchNorm2d`` itself uses under autograd). Folding ``s`` into ``W`` makes it one conv:
the same maths up to float rounding, one pass over the activation less per conv.

:func:`fold_frozen_batchnorm` switches every such conv of a module to :class:`FoldedBNConv2d`
(a subclass: parameters, buffers and ``state_dict`` keys stay as they are). Without autograd
it runs the folded conv, whose weights are cached and recomputed when a parameter or buffer it
depends on changes (checkpoint loads, optimizer steps); with autograd it is detectron2's
``Conv2d``. The cache costs one more copy of those conv weights.
"""

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn

__all__ = ["FoldedBNConv2d", "fold_frozen_batchnorm"]


class FoldedBNConv2d(Conv2d):
    """detectron2 ``Conv2d`` + ``FrozenBatchNorm2d``, as one conv when no gradient is needed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, Cin, H, W) -> (N, Cout, H', W')."""
        if torch.is_grad_enabled() or not isinstance(self.norm, FrozenBatchNorm2d):
            return super().forward(x)
        weight, bias = self._folded()
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return x if self.activation is None else self.activation(x)

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.norm
        sources = [self.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var]
        if self.bias is not None:
            sources.append(self.bias)
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in sources)
        if getattr(self, "_fold_key", None) != key:
            scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
            bias = bn.bias - bn.running_mean * scale
            if self.bias is not None:
                bias = bias + self.bias * scale
            weight = self.weight * scale.view(-1, 1, 1, 1).to(self.weight.dtype)
            fmt = (
                torch.channels_last
                if self.weight.is_contiguous(memory_format=torch.channels_last)
                else torch.contiguous_format
            )
            self._fold_cache = (weight.contiguous(memory_format=fmt), bias.to(self.weight.dtype))
            self._fold_key = key
        return self._fold_cache


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Switch every detectron2 ``Conv2d`` with a ``FrozenBatchNorm2d`` norm in ``module`` to
    :class:`FoldedBNConv2d` (in place); returns how many."""
    count = 0
    for m in module.modules():
        if type(m) is Conv2d and isinstance(m.norm, FrozenBatchNorm2d):
            m.__class__ = FoldedBNConv2d
            count += 1
    return count
