"""Modulated deformable 3x3 convolution (DCNv2) as bilinear sampling + one matrix product.

The maths of ``torchvision.ops.deform_conv2d`` with a mask, stride 1, padding 1, dilation 1,
one weight group and one offset group (the Panoptic FCN heads): for output position p and tap
k = (i, j), the input is sampled bilinearly at p + (i - 1, j - 1) + offset_k (zero outside the
map, corner by corner), scaled by mask_k; the output is weight . samples + bias.

Why it exists (measured, 256 channels at 100x152, one thread): torchvision's CPU kernel
interpolates every (channel, tap, position) on its own; here the 4 corner indices and weights
are computed once per (tap, position) and shared by all channels. One ``embedding_bag`` (a
weighted gather-sum of input rows, vectorised over channels) builds the (positions, 9 C) column
matrix and one matmul applies the weights: 3.1x faster, max abs difference 1.7e-6 on outputs
of magnitude 4.7 (float rounding: the order of the sums differs).
"""

import torch
import torch.nn.functional as F

__all__ = ["modulated_deform_conv3x3"]

# Output positions per chunk: bounds the (positions, 9 C) column matrix (~20 MB at C = 256).
_CHUNK_ELEMENTS = 1 << 22


def _sampling(offset: torch.Tensor, mask: torch.Tensor, h: int, w: int):
    """Corner row indices and weights of every (image, position, tap).

    Args:
        offset: (N, 18, H, W) float32, (dy, dx) per tap; mask: (N, 9, H, W).
    Returns:
        indices (N H W 9, 4) int64 into the (N H W) input rows and weights (N H W 9, 4)
        (mask included, 0 for corners outside the map, whose index is then clamped).
    """
    n = offset.shape[0]
    dt, dev = offset.dtype, offset.device
    taps = torch.arange(3, dtype=dt, device=dev) - 1
    off = offset.reshape(n, 9, 2, h, w)
    py = torch.arange(h, dtype=dt, device=dev).view(1, 1, h, 1) + taps.repeat_interleave(3).view(
        1, 9, 1, 1
    )
    px = torch.arange(w, dtype=dt, device=dev).view(1, 1, 1, w) + taps.repeat(3).view(1, 9, 1, 1)
    py, px = py + off[:, :, 0], px + off[:, :, 1]
    y0, x0 = py.floor(), px.floor()
    ly, lx = py - y0, px - x0
    y0, x0 = y0.long(), x0.long()
    base = (torch.arange(n, device=dev) * (h * w)).view(n, 1, 1, 1)
    idx, wts = [], []
    for dy, dx, wt in (
        (0, 0, (1 - ly) * (1 - lx)),
        (0, 1, (1 - ly) * lx),
        (1, 0, ly * (1 - lx)),
        (1, 1, ly * lx),
    ):
        yc, xc = y0 + dy, x0 + dx
        inside = (yc >= 0) & (yc < h) & (xc >= 0) & (xc < w)
        idx.append(base + yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1))
        wts.append(torch.where(inside, wt * mask, 0.0))
    # (N, 9, H, W, 4) -> (N, H, W, 9, 4): a position's 9 taps are consecutive column blocks.
    idx = torch.stack(idx, -1).permute(0, 2, 3, 1, 4).reshape(-1, 4)
    wts = torch.stack(wts, -1).permute(0, 2, 3, 1, 4).reshape(-1, 4)
    return idx, wts


def modulated_deform_conv3x3(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)`` for 3x3 kernels.

    Args:
        x: (N, C, H, W) float32 (channels-last avoids one copy); offset: (N, 18, H, W);
        mask: (N, 9, H, W); weight: (Cout, C, 3, 3); bias: (Cout,) or None.
    Returns:
        (N, Cout, H, W), in the memory format of ``x``.
    """
    n, c, h, w = x.shape
    cout = weight.shape[0]
    # (N H W, C) rows, contiguous (a copy unless x is channels-last): embedding_bag is slow
    # on the transposed view that reshape would give for an (N, C, H, W) tensor.
    rows = x.permute(0, 2, 3, 1).contiguous().view(n * h * w, c)
    idx, wts = _sampling(offset, mask, h, w)
    wmat = weight.permute(0, 2, 3, 1).reshape(cout, 9 * c).t()  # (9 C, Cout), tap-major
    out = x.new_empty((n * h * w, cout))
    step = max(1, _CHUNK_ELEMENTS // (9 * c))
    for s in range(0, n * h * w, step):
        e = min(s + step, n * h * w)
        cols = F.embedding_bag(
            idx[9 * s : 9 * e], rows, per_sample_weights=wts[9 * s : 9 * e], mode="sum"
        ).view(e - s, 9 * c)
        if bias is None:
            torch.mm(cols, wmat, out=out[s:e])
        else:
            torch.addmm(bias, cols, wmat, out=out[s:e])
    out = out.view(n, h, w, cout).permute(0, 3, 1, 2)
    if x.is_contiguous(memory_format=torch.channels_last):
        return out
    return out.contiguous()
