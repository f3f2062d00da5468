"""The gather + matmul deformable conv equals torchvision's ``deform_conv2d`` (float rounding),
also inside the DCNv2 block and at the borders; FrozenBN folding equals conv + FrozenBN."""

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torchvision.ops import deform_conv2d

from panoptic_ext.layers.conv_bn_fold import FoldedBNConv2d, fold_frozen_batchnorm
from panoptic_ext.layers.deform_conv import modulated_deform_conv3x3
from panoptic_ext.layers.modulated_deform_conv import ModulatedDeformConvBlock


def _case(n, c, cout, h, w, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    offset = torch.randn(n, 18, h, w, generator=g) * scale
    mask = torch.rand(n, 9, h, w, generator=g)
    weight = torch.randn(cout, c, 3, 3, generator=g) * 0.1
    bias = torch.randn(cout, generator=g)
    return x, offset, mask, weight, bias


@pytest.mark.parametrize(
    "n,c,cout,h,w,scale",
    [
        (1, 8, 5, 9, 11, 0.8),  # small offsets
        (2, 16, 16, 7, 6, 4.0),  # offsets past every border
        (1, 3, 4, 1, 1, 1.0),  # a 1x1 map (P7 of a small image)
        (1, 600, 8, 5, 5, 1.5),  # more channels than one chunk of positions holds
    ],
)
def test_gather_deform_conv_equals_torchvision(n, c, cout, h, w, scale):
    x, offset, mask, weight, bias = _case(n, c, cout, h, w, scale, seed=c + h)
    ref = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    got = modulated_deform_conv3x3(x, offset, mask, weight, bias)
    assert got.shape == ref.shape and got.is_contiguous()
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
    no_bias = modulated_deform_conv3x3(x, offset, mask, weight, None)
    assert torch.allclose(no_bias + bias.view(1, -1, 1, 1), got, atol=1e-5)
    cl = modulated_deform_conv3x3(
        x.contiguous(memory_format=torch.channels_last), offset, mask, weight, bias
    )
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(cl, got, rtol=1e-5, atol=1e-5)


def test_gather_deform_conv_exact_cases():
    x, offset, mask, weight, bias = _case(1, 4, 3, 6, 7, 1.0, seed=0)
    # Integer offsets: plain shifted 3x3 conv with a per-tap mask; far offsets: bias only.
    offset = offset.round()
    ref = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    assert torch.allclose(modulated_deform_conv3x3(x, offset, mask, weight, bias), ref, atol=1e-5)
    far = modulated_deform_conv3x3(x, torch.full_like(offset, 1e4), mask, weight, bias)
    assert torch.equal(far, bias.view(1, -1, 1, 1).expand_as(far))
    zero = modulated_deform_conv3x3(x, offset, torch.zeros_like(mask), weight, bias)
    assert torch.equal(zero, bias.view(1, -1, 1, 1).expand_as(zero))


def test_block_uses_the_gather_path_only_without_autograd():
    torch.manual_seed(0)
    block = ModulatedDeformConvBlock(6, 5, norm="", bias=True)
    torch.nn.init.normal_(block.offset_mask_conv.weight, std=0.5)
    x = torch.randn(2, 6, 9, 10, requires_grad=True)
    ref = block(x)
    block.gather_inference = True
    with torch.no_grad():
        fast = block(x)
    assert torch.allclose(fast, ref, atol=1e-5) and not torch.equal(fast, ref)
    again = block(x)  # autograd on: torchvision, bit-identical to before
    assert torch.equal(again, ref)
    again.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _conv_bn(cin=4, cout=6, bias=False, activation=None):
    conv = Conv2d(cin, cout, 3, padding=1, bias=bias, norm=FrozenBatchNorm2d(cout))
    conv.activation = activation
    g = torch.Generator().manual_seed(cout)
    with torch.no_grad():
        conv.weight.normal_(generator=g)
        conv.norm.weight.uniform_(0.5, 2.0, generator=g)
        conv.norm.bias.normal_(generator=g)
        conv.norm.running_mean.normal_(generator=g)
        conv.norm.running_var.uniform_(0.1, 3.0, generator=g)
        if bias:
            conv.bias.normal_(generator=g)
    return conv


@pytest.mark.parametrize("bias,activation", [(False, None), (True, torch.relu)])
def test_folded_frozen_bn_equals_conv_then_bn(bias, activation):
    conv = _conv_bn(bias=bias, activation=activation)
    x = torch.randn(2, 4, 8, 9)
    with torch.no_grad():
        ref = conv(x)
    keys = list(conv.state_dict())
    assert fold_frozen_batchnorm(torch.nn.Sequential(conv, Conv2d(2, 2, 1))) == 1
    assert isinstance(conv, FoldedBNConv2d) and list(conv.state_dict()) == keys
    with torch.no_grad():
        got = conv(x)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
    x.requires_grad_(True)  # with autograd: detectron2's Conv2d + FrozenBN, unchanged
    assert torch.equal(conv(x), Conv2d.forward(conv, x))


def test_folded_weights_follow_new_statistics():
    conv = _conv_bn()
    fold_frozen_batchnorm(conv)
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        first = conv(x)
        state = {k: v.clone() for k, v in conv.state_dict().items()}
        state["norm.running_mean"] += 1.0
        conv.load_state_dict(state)  # in-place copy_: the cache must see it
        second = conv(x)
    conv.__class__ = Conv2d
    with torch.no_grad():
        ref = conv(x)
    assert not torch.allclose(first, second) and torch.allclose(second, ref, atol=1e-5)
