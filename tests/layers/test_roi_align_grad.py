"""The sparse-matrix RoIAlign backward used by AFP on CPU equals torchvision's gradient."""

import pytest
import torch
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes
from torchvision.ops import roi_align

from panoptic_ext.layers.roi_align_grad import (
    roi_align_weight_matrix,
    roi_align_with_sparse_grad,
)
from panoptic_ext.modeling.roi_heads.afp_pooler import AdaptiveFeaturePooler


def _rois(num: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    wh = torch.rand(num, 2, generator=g, dtype=dtype) * 60
    xy = torch.rand(num, 2, generator=g, dtype=dtype) * 90 - 15  # some boxes leave the map
    rois = torch.cat([torch.randint(0, 2, (num, 1), generator=g).to(dtype), xy, xy + wh], 1)
    rois[0, 1:] = torch.tensor([10.0, 10.0, 10.0, 10.0])  # empty box
    rois[1, 1:] = torch.tensor([-50.0, -50.0, -20.0, -20.0])  # entirely outside
    rois[2, 1:] = torch.tensor([60.0, 40.0, 90.0, 70.0])  # crosses the bottom-right border
    return rois


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("output_size", [7, (14, 14), (5, 3)])
def test_same_output_and_gradient_as_torchvision(aligned, sampling_ratio, output_size):
    x = torch.randn(2, 8, 13, 17, dtype=torch.float64, requires_grad=True)
    rois = _rois(40, torch.float64)
    ref = roi_align(x, rois, output_size, 0.25, sampling_ratio, aligned)
    out = roi_align_with_sparse_grad(x, rois, output_size, 0.25, sampling_ratio, aligned)
    assert torch.equal(out, ref)
    grad = torch.randn_like(ref)
    (want,) = torch.autograd.grad(ref, x, grad)
    (got,) = torch.autograd.grad(out, x, grad)
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_no_boxes_and_reduced_precision():
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    out = roi_align_with_sparse_grad(x, torch.zeros(0, 5), 7, 0.5, 2, True)
    assert out.shape == (0, 4, 7, 7)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.shape == x.shape and not grad.any()

    xb = torch.randn(2, 4, 9, 9).to(torch.bfloat16).requires_grad_()
    rois = _rois(6, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align_with_sparse_grad(xb, rois, 7, 0.25, 2, True)
    (grad,) = torch.autograd.grad(out.float().sum(), xb)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()


def test_adaptive_pooler_uses_it_in_cpu_training_only():
    pooler = ROIPooler((7, 7), (1 / 4, 1 / 8), sampling_ratio=2, pooler_type="ROIAlignV2")
    afp = AdaptiveFeaturePooler.from_roi_pooler(pooler)
    feats = [torch.randn(2, 8, 32, 32, requires_grad=True), torch.randn(2, 8, 16, 16)]
    feats[1].requires_grad_()
    boxes = [Boxes(torch.tensor([[4.0, 4.0, 60.0, 50.0], [0.0, 0.0, 127.0, 127.0]])), Boxes(
        torch.tensor([[30.0, 20.0, 31.0, 90.0]])
    )]  # fmt: skip
    out = afp(feats, boxes)
    assert out.shape == (2, 3, 8, 7, 7)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, feats, grad)
    # Reference: detectron2's per-level RoIAlign modules (torchvision's backward).
    rois = convert_boxes_to_pooler_format(boxes)
    ref = torch.stack([p(f, rois) for p, f in zip(pooler.level_poolers, feats)])
    assert torch.equal(out, ref)
    want = torch.autograd.grad(ref, feats, grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert type(out.grad_fn).__name__ == "StackBackward0"
    with torch.no_grad():
        assert torch.equal(afp(feats, boxes), ref)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="sampling ratio"):
        roi_align_weight_matrix(torch.zeros(1, 5), (1, 8, 8), (7, 7), 1.0, 0, True)
    bad_batch = torch.tensor([[3.0, 0.0, 0.0, 4.0, 4.0]])  # image 3 of a batch of 1
    with pytest.raises(RuntimeError, match="index"):
        roi_align_weight_matrix(bad_batch, (1, 8, 8), (7, 7), 1.0, 2, True)
