"""Building blocks shared by the Panoptic FCN encoder and heads: CoordConv and DCNv2 conv towers."""

import torch
from detectron2.layers import Conv2d, get_norm
from fvcore.nn import weight_init
from torch import nn
from torchvision.ops import deform_conv2d

__all__ = ["add_coord_channels", "ModulatedDeformConvBlock", "ConvTower"]


def add_coord_channels(x: torch.Tensor) -> torch.Tensor:
    """Append two coordinate channels (CoordConv) to ``x``.

    Channel C is linspace(-1, 1, H) along rows (y), channel C+1 linspace(-1, 1, W) along columns
    (x), both ends included: the official Panoptic FCN order, which its weights depend on.

    Args:
        x: (N, C, H, W) float.
    Returns:
        (N, C + 2, H, W), same dtype/device.
    """
    n, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    grid_y = ys.view(1, 1, h, 1).expand(n, 1, h, w)
    grid_x = xs.view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([x, grid_y, grid_x], dim=1)


class ModulatedDeformConvBlock(nn.Module):
    """3x3 modulated deformable conv (DCNv2) with its own offset/mask conv, then norm and ReLU.

    Runs on CPU and GPU through ``torchvision.ops.deform_conv2d``; always computed in fp32 (also
    under autocast) because the bilinear sampling is unstable in half precision.
    The offset layout is (dy, dx) per tap, the mask is sigmoid of the last third of the
    offset/mask conv output (the DCNv2 / detectron2 convention).
    """

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
            lim = float(x.shape[-2] + x.shape[-1])
            offset = torch.cat([o1, o2], dim=1).nan_to_num(0.0, lim, -lim).clamp(-lim, lim)
            y = deform_conv2d(
                x,
                offset,
                self.weight.float(),
                None if self.bias is None else self.bias.float(),
                padding=1,
                mask=m.sigmoid(),
            )
        if self.norm is not None:
            y = self.norm(y)
        return torch.relu(y)


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
