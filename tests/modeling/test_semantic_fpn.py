"""SemanticFPNHead: detectron2 parity with the standard convs, and the separable variant."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead

import panoptic_ext
from panoptic_ext.modeling import SemanticFPNHead

SHAPES = {f"p{i}": ShapeSpec(channels=32, stride=2**i) for i in range(2, 6)}


def _cfg(**ext):
    cfg = get_cfg()
    panoptic_ext.add_panoptic_ext_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7
    for k, v in ext.items():
        cfg.MODEL.SEMANTIC_FPN[k] = v
    return cfg


def _features(n=2, size=64):
    g = torch.Generator().manual_seed(0)
    return {
        k: torch.randn(n, 32, size // s.stride, size // s.stride, generator=g)
        for k, s in SHAPES.items()
    }


def test_loads_detectron2_weights_and_matches_outputs():
    cfg = _cfg()
    torch.manual_seed(0)
    ref = SemSegFPNHead(cfg, SHAPES)
    ours = SemanticFPNHead(cfg, SHAPES)
    # A model-zoo checkpoint's sem_seg_head.* keys are exactly these: strict load must succeed.
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    feats = _features()
    ref.eval(), ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(feats)[0], ref(feats)[0])
    ref.train(), ours.train()
    targets = torch.randint(0, 7, (2, 64, 64))
    targets[0, :8] = 255
    loss_ref = ref(feats, targets)[1]["loss_sem_seg"]
    loss_ours = ours(feats, targets)[1]["loss_sem_seg"]
    assert loss_ours.item() == pytest.approx(loss_ref.item(), rel=1e-5)


def test_all_void_targets_give_zero_loss_not_nan():
    head = SemanticFPNHead(_cfg(), SHAPES).train()
    loss = head(_features(), torch.full((2, 64, 64), 255))[1]["loss_sem_seg"]
    assert loss.item() == 0.0
    loss.backward()  # still connected to the graph


def test_separable_variant_is_lighter_and_trains():
    std = SemanticFPNHead(_cfg(), SHAPES)
    sep = SemanticFPNHead(_cfg(CONV_TYPE="separable"), SHAPES)
    n_std = sum(p.numel() for p in std.parameters())
    n_sep = sum(p.numel() for p in sep.parameters())
    assert n_sep < 0.5 * n_std
    sep.train()
    loss = sep(_features(), torch.randint(0, 7, (2, 64, 64)))[1]["loss_sem_seg"]
    loss.backward()
    assert all(p.grad is not None for p in sep.parameters())
    sep.eval()
    assert sep(_features())[0].shape == (2, 7, 64, 64)


def test_nearest_upsampling_option():
    head = SemanticFPNHead(_cfg(UPSAMPLE_MODE="nearest"), SHAPES).eval()
    out = head(_features())[0]
    assert out.shape == (2, 7, 64, 64)
    # nearest x4: every 4x4 block of the output is constant
    assert torch.equal(out[..., ::4, ::4].repeat_interleave(4, -1).repeat_interleave(4, -2), out)


def test_bad_conv_type_is_named():
    with pytest.raises(ValueError, match="CONV_TYPE.*'dw'"):
        SemanticFPNHead(_cfg(CONV_TYPE="dw"), SHAPES)


def test_fused_upsampling_equals_detectron2_with_same_weights():
    cfg = _cfg(FUSED_UPSAMPLE=True)
    torch.manual_seed(0)
    ref = SemSegFPNHead(cfg, SHAPES)
    fused = SemanticFPNHead(cfg, SHAPES)
    fused.load_state_dict(ref.state_dict(), strict=True)
    feats = _features()
    ref.eval(), fused.eval()
    with torch.no_grad():
        a, b = ref(feats)[0], fused(feats)[0]
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.equal(a, torch.zeros_like(a))
    fused.train()
    targets = torch.randint(0, 7, (2, 64, 64))
    fused(feats, targets)[1]["loss_sem_seg"].backward()
    assert all(p.grad is not None for p in fused.parameters())
