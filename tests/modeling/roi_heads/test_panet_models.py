"""Every PANet config: one train step (a zero-instance image included) in which every trainable
parameter gets a gradient -- so DDP needs no find_unused_parameters -- then inference."""

import pytest
import torch
from detectron2.utils.events import EventStorage
from helpers import TINY_OPTS, build_tiny_model, load_cfg, tiny_batch

# Shrink the R50 paper configs to a few-second GroupNorm ResNet-18 on 64 px synthetic images.
SHRINK = [
    "MODEL.WEIGHTS",
    "",
    "MODEL.RESNETS.DEPTH",
    18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    64,
    "MODEL.RESNETS.NORM",
    "GN",
    "MODEL.RESNETS.STRIDE_IN_1X1",
    False,
    "MODEL.FPN.OUT_CHANNELS",
    32,
    "MODEL.ANCHOR_GENERATOR.SIZES",
    [[8], [16], [32], [64], [128]],
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    64,
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    32,
    "MODEL.ROI_HEADS.NUM_CLASSES",
    3,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    32,
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM",
    64,  # the FF branch halves it: GN(32) needs >= 32 channels
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
    4,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM",
    32,
    "TEST.DETECTIONS_PER_IMAGE",
    10,
    "DATASETS.TRAIN",
    ("synthetic_panoptic_train",),
    "DATASETS.TEST",
    ("synthetic_panoptic_val",),
]

CASES = {
    "pafpn_neck_only": ("COCO-InstanceSegmentation/mask_rcnn_R_50_PAFPN_1x.yaml", []),
    "panet": ("COCO-InstanceSegmentation/panet_R_50_1x.yaml", []),
    "panet_shared_sum_ffrelu_conv_box_head": (
        "COCO-InstanceSegmentation/panet_R_50_1x.yaml",
        [
            *("MODEL.PANET.SHARED_FIRST_LAYER", True, "MODEL.PANET.FUSE", "sum"),
            *("MODEL.PANET.FF_RELU", True, "MODEL.ROI_BOX_HEAD.NORM", "GN"),
            *("MODEL.ROI_BOX_HEAD.NUM_CONV", 2, "MODEL.ROI_BOX_HEAD.NUM_FC", 1),
        ],
    ),
    "panet_ff_only": ("COCO-InstanceSegmentation/panet_R_50_1x.yaml", ["MODEL.PANET.AFP", False]),
    "panoptic_fpn_panet": ("COCO-PanopticSegmentation/panoptic_fpn_R_50_panet_1x.yaml", []),
    "quick_schedule": ("quick_schedules/panet_synthetic.yaml", ["MODEL.FPN.OUT_CHANNELS", 32]),
    "official_mask_2x": (
        "COCO-InstanceSegmentation/panet_R_50_official_2x.yaml",
        ["MODEL.ROI_BOX_HEAD.CONV_DIM", 32],
    ),
    "official_det_1x": (
        "COCO-Detection/panet_R_50_official_1x.yaml",
        ["MODEL.ROI_BOX_HEAD.CONV_DIM", 32],
    ),
    "official_det_2fc_1x": ("COCO-Detection/panet_R_50_2fc_official_1x.yaml", []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_panet_config_train_step_and_inference(case):
    path, opts = CASES[case]
    extra = [] if case == "quick_schedule" else SHRINK
    cfg = load_cfg(path, *TINY_OPTS, *extra, *opts)
    model = build_tiny_model(cfg)
    assert type(model.backbone).__name__ == "PAFPN"
    batch = tiny_batch(cfg)
    assert len(batch[0]["instances"]) == 0 < len(batch[1]["instances"])

    model.train()
    with EventStorage():
        losses = model(batch)
    expected = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    if cfg.MODEL.MASK_ON:
        expected.add("loss_mask")
    if cfg.MODEL.META_ARCHITECTURE == "PanopticFPN":
        expected.add("loss_sem_seg")
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    # The new PANet modules really learn (non-zero gradient), not just sit in the graph.
    new = [
        (n, p)
        for n, p in model.named_parameters()
        if "pa_" in n or "_levels." in n or "fc_branch" in n
    ]
    assert new and all(p.grad.abs().sum() > 0 for _, p in new)

    model.eval()
    inputs = tiny_batch(cfg, is_train=False)
    with torch.no_grad():
        outputs = model(inputs)
    for inp, out in zip(inputs, outputs):
        inst = out["instances"]
        assert inst.pred_boxes.tensor.shape[1] == 4
        if cfg.MODEL.MASK_ON:
            assert inst.pred_masks.shape[1:] == (inp["height"], inp["width"])
        if cfg.MODEL.META_ARCHITECTURE == "PanopticFPN":
            assert out["panoptic_seg"][0].shape == (inp["height"], inp["width"])


def test_cityscapes_config_builds_the_paper_setting():
    # Same model as panet_R_50_1x (trained above); only classes, data and solver differ.
    cfg = load_cfg("Cityscapes/panet_R_50.yaml")
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 8
    assert cfg.DATASETS.TRAIN == ("cityscapes_fine_instance_seg_train",)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER) == (0.01, (18000,), 24000)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (800, 1024) and cfg.INPUT.MIN_SIZE_TEST == 1024
    cfg.merge_from_list(SHRINK[:-4])
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 8
    model = build_tiny_model(cfg)
    assert model.roi_heads.box_predictor.cls_score.out_features == 8 + 1
    assert type(model.roi_heads.mask_head).__name__ == "PANetMaskHead"
