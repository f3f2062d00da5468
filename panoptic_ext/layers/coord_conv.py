"""CoordConv: normalised coordinate channels appended to a feature map."""

import torch

__all__ = ["add_coord_channels"]


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
