"""A 3x3 modulated deformable conv (DCNv2) block on ``torchvision.ops.deform_conv2d`` (or, at
inference, the equivalent gather + matmul of ``deform_conv.py``)."""

import torch
from detectron2.layers import get_norm
from torch import nn
from torchvision.ops import deform_conv2d

from .deform_conv import modulated_deform_conv3x3

__all__ = ["ModulatedDeformConvBlock"]


class ModulatedDeformConvBlock(nn.Module):
    """3x3 modulated deformable conv (DCNv2) with its own offset/mask conv, then norm and ReLU.

    Runs on CPU and GPU through ``torchvision.ops.deform_conv2d``; always computed in fp32 (also
    under autocast) because the bilinear sampling is unstable in half precision.
    The offset layout is (dy, dx) per tap, the mask is sigmoid of the last third of the
    offset/mask conv output (the DCNv2 / detectron2 convention).

    ``gather_inference``: without autograd, compute the deformable conv with
    :func:`~panoptic_ext.layers.deform_conv.modulated_deform_conv3x3` (same maths, faster on CPU;
    set by the model from its config).
    """

    gather_inference = False

    def __init__(self, in_channels: int, out_channels: int, norm: str = "", bias: bool = True):
        super().__init__()
        # Default PyTorch init for the offset/mask conv, as in the official model.
        self.offset_mask_conv = nn.Conv2d(in_channels, 27, 3, padding=1)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.norm = get_norm(norm, out_channels) if norm else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, Cin, H, W) -> (N, Cout, H, W)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            out = self.offset_mask_conv(x)
            o1, o2, m = out.chunk(3, dim=1)
            # torchvision's CPU kernel indexes memory with non-finite offsets (segfault). Any
            # |offset| >= H + W samples outside the map, so clamping there changes nothing.
            # The bound stays a size expression (not a Python float) so that a traced/exported
            # graph computes it for each input size.
            lim = x.shape[-2] + x.shape[-1]
            offset = torch.cat([o1, o2], dim=1).nan_to_num(0.0).clamp(-lim, lim)
            weight, bias = self.weight.float(), None if self.bias is None else self.bias.float()
            # Eager only: exporters trace torchvision's op (ONNX DeformConv).
            fast = self.gather_inference and not torch.is_grad_enabled()
            if fast and not torch.jit.is_tracing():
                y = modulated_deform_conv3x3(x, offset, m.sigmoid(), weight, bias)
            else:
                y = deform_conv2d(x, offset, weight, bias, padding=1, mask=m.sigmoid())
        if self.norm is not None:
            y = self.norm(y)
        return torch.relu(y)
