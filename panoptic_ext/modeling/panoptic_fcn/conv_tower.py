"""The conv tower shared by the Panoptic FCN encoder and heads: CoordConv + conv or DCNv2 layers."""

import torch
from detectron2.layers import Conv2d, get_norm
from fvcore.nn import weight_init
from torch import nn

from ...layers.coord_conv import add_coord_channels
from ...layers.modulated_deform_conv import ModulatedDeformConvBlock

__all__ = ["ConvTower"]


class ConvTower(nn.Module):
    """Optional CoordConv followed by ``num_convs`` 3x3 conv (or DCNv2) + norm + ReLU layers.

    Layers are named ``layer{1..num_convs}``. Convs carry a bias only when ``norm`` is "".
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_convs: int,
        norm: str = "",
        deform: bool = False,
        coord: bool = False,
    ):
        super().__init__()
        self.coord = coord
        c_in = in_channels + (2 if coord else 0)
        bias = not norm
        for i in range(num_convs):
            if deform:
                layer = ModulatedDeformConvBlock(c_in, channels, norm=norm, bias=bias)
            else:
                layer = Conv2d(
                    c_in,
                    channels,
                    kernel_size=3,
                    padding=1,
                    bias=bias,
                    norm=get_norm(norm, channels) if norm else None,
                    activation=nn.ReLU(),
                )
                weight_init.c2_msra_fill(layer)
            self.add_module(f"layer{i + 1}", layer)
            c_in = channels
        self.out_channels = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, out_channels, H, W)."""
        if self.coord:
            x = add_coord_channels(x)
        for layer in self.children():
            x = layer(x)
        return x
