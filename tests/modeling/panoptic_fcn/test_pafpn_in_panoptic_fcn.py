"""The PAFPN neck plugs into Panoptic FCN by config alone (P6/P7 computed from N5)."""

import pytest
import torch
from detectron2.utils.events import EventStorage
from helpers import build_tiny_model, load_cfg, tiny_batch
from test_panoptic_fcn_model import SHRINK, _check_outputs

from panoptic_ext.modeling.backbone.pafpn import PAFPN

PAFPN_OPTS = [
    "MODEL.BACKBONE.NAME", "build_resnet_pafpn_backbone",
    "MODEL.PAFPN.TOP_LEVELS", "P6P7",
    "MODEL.PAFPN.NORM", "GN",
]  # fmt: skip


def test_panoptic_fcn_with_pafpn_trains_and_infers():
    cfg = load_cfg("COCO-PanopticSegmentation/panoptic_fcn_R_50_1x.yaml", *SHRINK, *PAFPN_OPTS)
    model = build_tiny_model(cfg)
    assert isinstance(model.backbone, PAFPN)
    shapes = model.backbone.output_shape()
    assert {f: shapes[f].stride for f in ("p3", "p4", "p5", "p6", "p7")} == {
        "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128
    }  # fmt: skip

    model.train()
    with EventStorage():
        losses = model(tiny_batch(cfg, (0, 1)))  # image 0 has no things
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    bottom_up = [p for n, p in model.named_parameters() if ".pa_" in n]
    assert len(bottom_up) >= 6 and all(p.grad.abs().sum() > 0 for p in bottom_up)

    model.eval()
    inputs = tiny_batch(cfg, (0, 1), is_train=False)
    with torch.no_grad():
        _check_outputs(model(inputs), inputs)


def test_panoptic_fcn_needs_p6p7_from_pafpn():
    opts = [*PAFPN_OPTS[:2], "MODEL.PAFPN.TOP_LEVELS", "P6"]
    cfg = load_cfg("COCO-PanopticSegmentation/panoptic_fcn_R_50_1x.yaml", *SHRINK, *opts)
    with pytest.raises(ValueError, match="p7"):
        build_tiny_model(cfg)
