"""PANet ROI heads: all-level pooling, level fusion, FF branch, single-level equality with
detectron2's standard heads, zero proposals, and loading a detectron2 state dict."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ROIAlign, ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage
from helpers import TINY_OPTS, load_cfg

from panoptic_ext.checkpoint.load_report import load_d2_state_dict
from panoptic_ext.modeling.roi_heads import AdaptiveFeaturePooler, PANetBoxHead, PANetMaskHead
from panoptic_ext.modeling.roi_heads.per_level_first_layer import fuse_levels

STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
D2_HEADS = [
    "MODEL.ROI_HEADS.NAME",
    "StandardROIHeads",
    "MODEL.ROI_BOX_HEAD.NAME",
    "FastRCNNConvFCHead",
    "MODEL.ROI_MASK_HEAD.NAME",
    "MaskRCNNConvUpsampleHead",
]


def _features(num_images=2, channels=64, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(num_images, channels, size // s, size // s, generator=g)
        for k, s in STRIDES.items()
    }


def _boxes(n, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size / 2
    return Boxes(torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * size / 2], dim=1))


def _panet_cfg(*opts):
    return load_cfg("quick_schedules/panet_synthetic.yaml", *TINY_OPTS, *opts)


def test_afp_pooler_pools_every_box_from_every_level():
    pooler = ROIPooler(7, tuple(1 / s for s in STRIDES.values()), 2, "ROIAlignV2")
    afp = AdaptiveFeaturePooler.from_roi_pooler(pooler)
    feats = list(_features().values())
    boxes = [_boxes(3), _boxes(2, seed=1)]
    out = afp(feats, boxes)
    assert out.shape == (4, 5, 64, 7, 7)
    rois = torch.cat(
        [torch.cat([torch.full((len(b), 1), float(i)), b.tensor], 1) for i, b in enumerate(boxes)]
    )
    for level, (feat, stride) in enumerate(zip(feats, STRIDES.values())):
        expected = ROIAlign((7, 7), 1 / stride, 2, aligned=True)(feat, rois)
        assert torch.equal(out[level], expected)
    # No boxes at all (and no images) still give a level-major empty stack.
    assert afp(feats, [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))]).shape == (
        4,
        0,
        64,
        7,
        7,
    )
    assert afp([f[:0] for f in feats], []).shape == (4, 0, 64, 7, 7)


def test_fuse_levels_max_and_sum():
    x = torch.tensor([[1.0, -2.0], [3.0, -1.0], [0.0, 5.0]])  # (L=3, M=2)
    assert torch.equal(fuse_levels(x, "max"), torch.tensor([3.0, 5.0]))
    assert torch.equal(fuse_levels(x, "sum"), torch.tensor([4.0, 2.0]))
    with pytest.raises(ValueError, match="MODEL.PANET.FUSE"):
        fuse_levels(x, "mean")


@pytest.mark.parametrize("shared, fuse", [(False, "max"), (True, "sum")])
def test_box_head_first_layer_per_level_then_fusion(shared, fuse):
    torch.manual_seed(0)
    head = PANetBoxHead(
        ShapeSpec(channels=8, height=7, width=7),
        conv_dims=[],
        fc_dims=[16, 16],
        num_levels=4,
        shared_first_layer=shared,
        fuse=fuse,
    )
    names = {n.rsplit(".", 1)[0] for n, _ in head.named_parameters()}
    assert names == (
        {"fc1", "fc2"}
        if shared
        else {"fc1_levels.0", "fc1_levels.1", "fc1_levels.2", "fc1_levels.3", "fc2"}
    )
    x = torch.randn(4, 5, 8, 7, 7)
    first = [head.fc1] * 4 if shared else list(head.fc1_levels)
    per_level = torch.stack([F.relu(fc(x[i].flatten(1))) for i, fc in enumerate(first)])
    expected = F.relu(head.fc2(fuse_levels(per_level, fuse)))
    torch.testing.assert_close(head(x), expected)
    if not shared:  # the copies are initialised independently
        assert not torch.equal(head.fc1_levels[0].weight, head.fc1_levels[1].weight)
    with pytest.raises(ValueError, match="expects 4 pooled level"):
        head(x[:2])
    assert head(x[:, :0]).shape == (0, 16)


def test_box_head_fc_norm_is_the_official_2fc_head():
    """roi_2mlp_head_gn_panet: per level relu(GN(fc1_l(x))), max over levels, relu(GN(fc2))."""
    torch.manual_seed(0)
    head = PANetBoxHead(
        ShapeSpec(channels=8, height=7, width=7),
        conv_dims=[],
        fc_dims=[64, 64],
        num_levels=4,
        fc_norm="GN",
    )
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    x = torch.randn(4, 5, 8, 7, 7)

    def gn_fc(fc, t):
        return F.relu(
            F.group_norm(F.linear(t, fc.weight, fc.bias), 32, fc.norm.weight, fc.norm.bias)
        )

    per_level = torch.stack([gn_fc(fc, x[i].flatten(1)) for i, fc in enumerate(head.fc1_levels)])
    expected = gn_fc(head.fc2, per_level.amax(dim=0))
    torch.testing.assert_close(head(x), expected)
    assert {n for n, _ in head.named_parameters() if n.startswith("fc2")} == {
        "fc2.weight", "fc2.bias", "fc2.norm.weight", "fc2.norm.bias"
    }  # fmt: skip
    with pytest.raises(ValueError, match="MODEL.PANET.BOX_FC_NORM must be one of"):
        PANetBoxHead(ShapeSpec(channels=8, height=7, width=7), conv_dims=[], fc_dims=[64],
                     fc_norm="BN")  # fmt: skip


def test_mask_head_ff_adds_one_fg_map_to_every_class():
    torch.manual_seed(0)
    head = PANetMaskHead(
        ShapeSpec(channels=8, height=14, width=14),
        num_classes=3,
        conv_dims=[8, 8, 8, 8, 8],
        num_levels=2,
        ff_from_conv=3,
    )
    assert head.fc_mask.in_features == 4 * 14 * 14 and head.fc_mask.out_features == 28 * 28
    x = torch.randn(2, 5, 8, 14, 14)
    with torch.no_grad():
        head.fc_mask.weight.zero_()
        head.fc_mask.bias.zero_()
        fcn_only = head.layers(x)
        head.fc_mask.bias.copy_(torch.arange(784.0))
        with_ff = head.layers(x)
    assert with_ff.shape == (5, 3, 28, 28)
    # The fc's 784 outputs are a row-major 28x28 map added to every class's mask logits.
    torch.testing.assert_close(
        with_ff - fcn_only, torch.arange(784.0).view(1, 1, 28, 28).expand(5, 3, 28, 28)
    )
    with pytest.raises(ValueError, match="MODEL.PANET.FF_FROM_CONV"):
        PANetMaskHead(
            ShapeSpec(channels=8, height=14, width=14),
            num_classes=3,
            conv_dims=[8, 8, 8],
            ff_from_conv=3,
        )


def _single_level_pair():
    """(detectron2 StandardROIHeads, PANetROIHeads with AFP on one level, FF off), same weights."""
    opts = ["MODEL.ROI_HEADS.IN_FEATURES", ["p3"], "MODEL.PANET.FF", False]
    shapes = {k: ShapeSpec(channels=64, stride=s) for k, s in STRIDES.items()}
    torch.manual_seed(0)
    d2 = build_roi_heads(_panet_cfg(*opts, *D2_HEADS), shapes)
    panet = build_roi_heads(_panet_cfg(*opts), shapes)
    assert type(panet).__name__ == "PANetROIHeads" and isinstance(
        panet.box_pooler, AdaptiveFeaturePooler
    )
    panet.load_state_dict(d2.state_dict(), strict=True)
    return d2, panet


def _proposals(counts, size=64):
    out = []
    for i, n in enumerate(counts):
        inst = Instances((size, size))
        inst.proposal_boxes = _boxes(n, seed=i)
        inst.objectness_logits = torch.zeros(n)
        out.append(inst)
    return out


def test_single_level_afp_equals_detectron2_standard_heads():
    d2, panet = _single_level_pair()
    images = ImageList(torch.zeros(2, 3, 64, 64), [(64, 64), (64, 64)])
    feats = _features()
    d2.eval(), panet.eval()
    with torch.no_grad():
        a, _ = d2(images, feats, _proposals([6, 4]))
        b, _ = panet(images, feats, _proposals([6, 4]))
    for x, y in zip(a, b):
        assert len(x) == len(y) > 0
        assert torch.equal(x.pred_boxes.tensor, y.pred_boxes.tensor)
        assert torch.equal(x.scores, y.scores)
        assert torch.equal(x.pred_masks, y.pred_masks)
    # Training: same sampling (same seed) gives the same losses.
    targets = []
    for i in range(2):
        t = Instances((64, 64))
        t.gt_boxes = _boxes(2, seed=10 + i)
        t.gt_classes = torch.tensor([0, 2])
        masks = torch.zeros(2, 64, 64, dtype=torch.bool)
        masks[:, 8:40, 8:40] = True
        t.gt_masks = BitMasks(masks)
        targets.append(t)
    losses = []
    for heads in (d2, panet):
        heads.train()
        torch.manual_seed(0)
        with EventStorage():
            losses.append(heads(images, feats, _proposals([6, 4]), targets)[1])
    assert losses[0].keys() == losses[1].keys() == {"loss_cls", "loss_box_reg", "loss_mask"}
    for k in losses[0]:
        torch.testing.assert_close(losses[0][k], losses[1][k], rtol=0, atol=0)


def test_panet_roi_heads_zero_proposals():
    shapes = {k: ShapeSpec(channels=64, stride=s) for k, s in STRIDES.items()}
    torch.manual_seed(0)
    heads = build_roi_heads(_panet_cfg(), shapes).eval()
    images = ImageList(torch.zeros(2, 3, 64, 64), [(64, 64), (64, 64)])
    with torch.no_grad():
        out, _ = heads(images, _features(), _proposals([0, 3]))
        empty, _ = heads(images, _features(), _proposals([0, 0]))
    assert len(out[0]) == 0 and out[0].pred_masks.shape == (0, 1, 28, 28)
    assert len(out[1]) > 0 and out[1].pred_masks.shape[1:] == (1, 28, 28)
    assert [len(x) for x in empty] == [0, 0]


def test_detectron2_state_dict_initialises_shared_modules():
    panet_cfg = _panet_cfg()
    d2_cfg = _panet_cfg(*D2_HEADS, "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone")
    torch.manual_seed(0)
    source = build_model(d2_cfg).state_dict()
    model = build_model(panet_cfg)
    report = load_d2_state_dict(model, source)
    assert report.unused == [] and report.shape_mismatch == []
    new_modules = {k.rsplit(".", 1)[0].removesuffix(".norm") for k in report.new}
    assert new_modules == {
        "backbone.pa_down2",
        "backbone.pa_down3",
        "backbone.pa_down4",
        "backbone.pa_out3",
        "backbone.pa_out4",
        "backbone.pa_out5",
        "roi_heads.mask_head.fc_branch_conv1",
        "roi_heads.mask_head.fc_branch_conv2",
        "roi_heads.mask_head.fc_mask",
    }
    state = model.state_dict()
    for key in (
        "roi_heads.box_head.fc2.weight",
        "roi_heads.box_predictor.cls_score.weight",
        "sem_seg_head.predictor.weight",
    ):
        assert torch.equal(state[key], source[key])
    for level in range(4):  # every per-level first layer starts from detectron2's single one
        assert torch.equal(
            state[f"roi_heads.box_head.fc1_levels.{level}.weight"],
            source["roi_heads.box_head.fc1.weight"],
        )
        assert torch.equal(
            state[f"roi_heads.mask_head.mask_fcn1_levels.{level}.weight"],
            source["roi_heads.mask_head.mask_fcn1.weight"],
        )


def test_afp_rejects_heads_that_cannot_fuse_levels():
    shapes = {k: ShapeSpec(channels=64, stride=s) for k, s in STRIDES.items()}
    with pytest.raises(ValueError, match="MODEL.ROI_BOX_HEAD.NAME is 'FastRCNNConvFCHead'"):
        build_roi_heads(_panet_cfg("MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead"), shapes)
    with pytest.raises(ValueError, match="MODEL.ROI_MASK_HEAD.POOLER_TYPE"):
        build_roi_heads(_panet_cfg("MODEL.ROI_MASK_HEAD.POOLER_TYPE", ""), shapes)


def test_fuse_before_first_layer_keeps_detectron2_names():
    torch.manual_seed(0)
    shape = ShapeSpec(channels=8, height=7, width=7)
    head = PANetBoxHead(
        shape, conv_dims=[], fc_dims=[16, 16], num_levels=4, fuse_before_first_layer=True
    )
    assert {n.rsplit(".", 1)[0] for n, _ in head.named_parameters()} == {"fc1", "fc2"}
    x = torch.randn(4, 5, 8, 7, 7)
    expected = F.relu(head.fc2(F.relu(head.fc1(x.amax(0).flatten(1)))))
    torch.testing.assert_close(head(x), expected)


def test_pixel_index_pooling_pools_detectron_coordinates():
    """POOL_PIXEL_INDEX_BOXES: a continuous box (x1, y1, x2, y2) is pooled at (x1, y1, x2-1, y2-1),
    the numbers Detectron pools for the same box (its x2 is the last pixel)."""
    feats = [f for f in _features(1).values()]
    ops = torch.nn.ModuleList(ROIAlign((7, 7), 1.0 / s, 2, aligned=False) for s in STRIDES.values())
    boxes = _boxes(5)
    shifted = Boxes(boxes.tensor - torch.tensor([0.0, 0.0, 1.0, 1.0]))
    detectron = AdaptiveFeaturePooler(ops, (7, 7), pixel_index_boxes=True)(feats, [boxes])
    plain = AdaptiveFeaturePooler(ops, (7, 7))
    torch.testing.assert_close(detectron, plain(feats, [shifted]), rtol=0, atol=0)
    assert not torch.equal(detectron, plain(feats, [boxes]))
    with pytest.raises(ValueError, match="POOL_PIXEL_INDEX_BOXES needs MODEL.PANET.AFP True"):
        build_roi_heads(
            _panet_cfg("MODEL.PANET.AFP", False, "MODEL.PANET.POOL_PIXEL_INDEX_BOXES", True),
            {k: ShapeSpec(channels=64, stride=s) for k, s in STRIDES.items()},
        )
