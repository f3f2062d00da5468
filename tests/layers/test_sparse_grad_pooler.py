"""``use_sparse_roi_align_grad``: detectron2's poolers with a fixed sampling ratio get the sparse
RoIAlign backward on CPU (same forward, same gradient up to float rounding); the Trainer applies
it under ``MODEL.ROI_HEADS.SPARSE_ROI_ALIGN_GRAD``."""

import torch
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from panoptic_ext.layers.roi_align_grad import SparseGradROIAlign, use_sparse_roi_align_grad


def _pool(pooler, feats, boxes):
    feats = [f.detach().clone().requires_grad_(True) for f in feats]
    out = pooler(feats, boxes)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), [f.grad for f in feats]


def test_fpn_pooler_with_sparse_grad_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 3, 32 // s, 40 // s, generator=g) for s in (1, 2, 4)]
    boxes = [Boxes(torch.tensor([[1.0, 2.0, 30.0, 25.0], [4.0, 4.0, 9.0, 7.5]])),
             Boxes(torch.tensor([[0.0, 0.0, 40.0, 32.0]]))]  # fmt: skip
    ref_pooler = ROIPooler(7, (1.0, 0.5, 0.25), 2, "ROIAlignV2")
    fast_pooler = ROIPooler(7, (1.0, 0.5, 0.25), 2, "ROIAlignV2")
    assert use_sparse_roi_align_grad(fast_pooler) == 3
    assert all(isinstance(p, SparseGradROIAlign) for p in fast_pooler.level_poolers)
    ref_out, ref_grads = _pool(ref_pooler, feats, boxes)
    out, grads = _pool(fast_pooler, feats, boxes)
    assert torch.equal(out, ref_out)  # the forward is torchvision's
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-6)
    assert ref_grads[0].abs().sum() > 0 and ref_grads[1].abs().sum() > 0  # boxes on 2 levels
    with torch.no_grad():  # no gradient: torchvision's own call
        assert torch.equal(fast_pooler(feats, boxes), ref_out)


def test_adaptive_sampling_ratio_is_left_alone():
    pooler = ROIPooler(7, (1.0,), 0, "ROIAlignV2")
    assert use_sparse_roi_align_grad(pooler) == 0
    assert type(pooler.level_poolers[0]) is ROIAlign


def test_trainer_switches_the_poolers_under_the_roi_heads_key():
    from helpers import TINY_OPTS, load_cfg, register_tiny

    from panoptic_ext.engine import Trainer

    register_tiny()
    for value, switched in (("True", True), ("False", False)):
        cfg = load_cfg(
            "quick_schedules/panoptic_fpn_synthetic.yaml",
            *TINY_OPTS,
            "MODEL.ROI_HEADS.SPARSE_ROI_ALIGN_GRAD",
            value,
        )
        model = Trainer.build_model(cfg)
        assert any(isinstance(m, SparseGradROIAlign) for m in model.modules()) is switched
