"""PanopticFCN end to end on CPU: one train step + inference per config, batched inference equal
to per-image inference, output formats, autocast."""

import pytest
import torch
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from helpers import DEVICES, TINY_OPTS, build_tiny_model, full_fp32, load_cfg, tiny_batch

from panoptic_ext.layers.modulated_deform_conv import ModulatedDeformConvBlock

CONFIGS = [
    "quick_schedules/panoptic_fcn_synthetic.yaml",
    "COCO-PanopticSegmentation/panoptic_fcn_R_50_1x.yaml",
    "COCO-PanopticSegmentation/panoptic_fcn_R_50_3x.yaml",
    "COCO-PanopticSegmentation/panoptic_fcn_R_50_3x_FAST.yaml",
    "COCO-PanopticSegmentation/panoptic_fcn_R_50_400_3x.yaml",
    "COCO-PanopticSegmentation/panoptic_fcn_R_50_512_3x.yaml",
    "COCO-PanopticSegmentation/panoptic_fcn_R_50_600_3x.yaml",
    "Cityscapes/panoptic_fcn_R_50.yaml",
]
# Shrinks any Panoptic FCN config to a from-scratch R18 with small heads on 64 px images while
# keeping its head settings (DCN, POS_NUM, thresholds); the synthetic set has 3 + 3 classes.
SHRINK = [
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.RESNETS.NORM", "GN",
    "MODEL.RESNETS.STRIDE_IN_1X1", False,
    "MODEL.BACKBONE.FREEZE_AT", 0,
    "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.PANOPTIC_FCN.SEMANTIC_FPN.CONVS_DIM", 32,
    "MODEL.PANOPTIC_FCN.FEATURE_ENCODER.CONVS_DIM", 16,
    # 64 = 2 channels per GroupNorm(32) group: P7 is 1x1 on 64 px images.
    "MODEL.PANOPTIC_FCN.POSITION_HEAD.CONVS_DIM", 64,
    "MODEL.PANOPTIC_FCN.KERNEL_HEAD.CONVS_DIM", 64,
    "MODEL.PANOPTIC_FCN.POSITION_HEAD.THING.NUM_CLASSES", 3,
    "MODEL.PANOPTIC_FCN.POSITION_HEAD.STUFF.NUM_CLASSES", 4,
    "MODEL.PANOPTIC_FCN.INFERENCE.COMBINE.STUFF_AREA_LIMIT", 16,
    "DATASETS.TRAIN", ("synthetic_panoptic_train",),
    "DATASETS.TEST", ("synthetic_panoptic_val",),
    *TINY_OPTS,
]  # fmt: skip


def _perturb(model: torch.nn.Module) -> None:
    """Spread the position logits and kernels so random-init outputs are not all ties."""
    g = torch.Generator().manual_seed(1)
    head = model.position_head
    for conv in (head.out_inst, head.out_sem, model.kernel_head.out_conv):
        conv.weight.data.copy_(torch.randn(conv.weight.shape, generator=g) * 0.2)
    emb = model.thing_generator.embed_extractor
    emb.weight.data.copy_(torch.randn(emb.weight.shape, generator=g))


def _check_outputs(outputs, inputs, num_stuff=4):
    for out, x in zip(outputs, inputs):
        h, w = x["height"], x["width"]
        pan, info = out["panoptic_seg"]
        assert pan.dtype == torch.int32 and pan.shape == (h, w)
        assert sorted(s["id"] for s in info) == sorted(set(pan.unique().tolist()) - {0})
        for s in info:
            assert 0 <= s["category_id"] < 3 if s["isthing"] else 1 <= s["category_id"] < 4
        inst = out["instances"]
        assert isinstance(inst, Instances) and inst.image_size == (h, w)
        assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape[1:] == (h, w)
        assert inst.scores.shape == inst.pred_classes.shape == (len(inst),)
        assert inst.pred_boxes.tensor.shape == (len(inst), 4)
        assert out["sem_seg"].shape == (num_stuff, h, w)


@pytest.mark.parametrize("name", CONFIGS)
def test_train_step_and_inference(name):
    cfg = load_cfg(name, *SHRINK)
    model = build_tiny_model(cfg)
    assert cfg.INPUT.SEM_SEG_FORMAT == "things_as_one"
    batch = tiny_batch(cfg, (0, 1))  # image 0 has no things
    model.train()
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_pos_th", "loss_pos_st", "loss_seg_th", "loss_seg_st"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    inputs = tiny_batch(cfg, (0, 1), is_train=False)
    with torch.no_grad():
        _check_outputs(model(inputs), inputs)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_inference_equals_single_images(device):
    opts = ("MODEL.PANOPTIC_FCN.POSITION_HEAD.DEFORM", True, "MODEL.DEVICE", device)
    cfg = load_cfg(CONFIGS[0], *SHRINK, *opts)
    model = build_tiny_model(cfg).eval()
    _perturb(model)
    inputs = tiny_batch(cfg, (1, 2, 3), is_train=False)
    with torch.no_grad(), full_fp32():
        batched = model(inputs)
        single = [model([x])[0] for x in inputs]
    _check_outputs(batched, inputs)
    assert sum(len(b["instances"]) for b in batched) > 0
    for b, s in zip(batched, single):
        # Scores include maskness (mean over thresholded pixels): one borderline pixel that
        # rounds differently between batch sizes moves it by ~1/area, as the 0.1% mask
        # tolerance below allows. A batching bug shows up as whole-image differences.
        assert torch.allclose(b["instances"].scores, s["instances"].scores, atol=1e-3)
        assert torch.equal(b["instances"].pred_classes, s["instances"].pred_classes)
        agree = (b["instances"].pred_masks == s["instances"].pred_masks).float().mean()
        assert agree > 0.999
        assert torch.allclose(b["sem_seg"], s["sem_seg"], atol=1e-4)
        assert (b["panoptic_seg"][0] == s["panoptic_seg"][0]).float().mean() > 0.999
        strip = [{k: v for k, v in d.items() if k != "score"} for d in b["panoptic_seg"][1]]
        assert strip == [{k: v for k, v in d.items() if k != "score"} for d in s["panoptic_seg"][1]]


def test_pixel_normalisation_is_a_buffer_and_autocast_keeps_losses_fp32():
    cfg = load_cfg(CONFIGS[0], *SHRINK, "MODEL.PANOPTIC_FCN.POSITION_HEAD.DEFORM", True)
    model = build_tiny_model(cfg)
    buffers = dict(model.named_buffers())
    assert "pixel_mean" in buffers and "pixel_mean" not in model.state_dict()
    model.to(torch.float64)
    assert model.pixel_mean.dtype == torch.float64  # moved by .to(), unlike a lambda
    model.to(torch.float32).train()
    batch = tiny_batch(cfg, (0, 1))
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(tiny_batch(cfg, (1,), is_train=False))
    assert out[0]["sem_seg"].dtype == torch.float32


def test_bad_config_names_the_key():
    cfg = load_cfg(CONFIGS[0], *SHRINK, "MODEL.PANOPTIC_FCN.HEAD_IN_FEATURES", ["p3", "p9"])
    with pytest.raises(ValueError, match="p9"):
        build_tiny_model(cfg)
    cfg = load_cfg(CONFIGS[0], *SHRINK, "MODEL.PANOPTIC_FCN.KERNEL_HEAD.INSTANCE_SCALES", [[1, 2]])
    with pytest.raises(ValueError, match="INSTANCE_SCALES"):
        build_tiny_model(cfg)


def test_deformable_conv_survives_non_finite_offsets():
    # torchvision's CPU deform_conv2d reads out of bounds (segfault) on inf/NaN offsets, which a
    # random-init R50 (identity FrozenBN) produces; the block sanitises them.
    block = ModulatedDeformConvBlock(4, 4, norm="", bias=True)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        block.offset_mask_conv.bias[:9] = float("inf")
        block.offset_mask_conv.bias[9:18] = float("nan")
        y = block(x)
        block.offset_mask_conv.bias[:18] = 1e6  # far outside the map: every sample is zero
        far = block(x)
    assert torch.isfinite(y).all()
    assert torch.equal(far, torch.relu(block.bias.view(1, -1, 1, 1).expand_as(far)))
