"""Panoptic FCN speed options (MODEL.PANOPTIC_FCN.INFERENCE.DEFORM_CONV_GATHER / FOLD_FROZEN_BN /
CHANNELS_LAST): same outputs as without them (float rounding), training untouched."""

import torch
from detectron2.layers import FrozenBatchNorm2d
from helpers import build_tiny_model, load_cfg, tiny_batch
from test_panoptic_fcn_model import CONFIGS, SHRINK, _perturb

from panoptic_ext.layers.conv_bn_fold import FoldedBNConv2d

P = "MODEL.PANOPTIC_FCN.INFERENCE."
OFF = [P + "DEFORM_CONV_GATHER", False, P + "FOLD_FROZEN_BN", False, P + "CHANNELS_LAST", False]
ON = [P + "DEFORM_CONV_GATHER", True, P + "FOLD_FROZEN_BN", True, P + "CHANNELS_LAST", True]
# FrozenBN backbone (as the COCO configs) with DCN heads, so every option has work to do.
MODEL = [
    "MODEL.RESNETS.NORM",
    "FrozenBN",
    "MODEL.BACKBONE.FREEZE_AT",
    2,
    "MODEL.PANOPTIC_FCN.POSITION_HEAD.DEFORM",
    True,
]


def _model(options):
    cfg = load_cfg(CONFIGS[0], *SHRINK, *MODEL, *options)
    model = build_tiny_model(cfg)
    _perturb(model)
    g = torch.Generator().manual_seed(2)
    for m in model.backbone.modules():  # non-trivial statistics: folding has work to do
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0, 0.1, generator=g)
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    return cfg, model


def test_speed_options_keep_outputs_and_training():
    cfg, slow = _model(OFF)
    _, fast = _model(ON)
    fast.load_state_dict(slow.state_dict())
    assert sum(isinstance(m, FoldedBNConv2d) for m in fast.modules()) > 10
    assert list(fast.state_dict()) == list(slow.state_dict())
    inputs = tiny_batch(cfg, (1, 2), is_train=False)
    slow.eval(), fast.eval()
    conv = fast.backbone.bottom_up.stem.conv1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a, b = slow(inputs), fast(inputs)
    assert sum(len(x["instances"]) for x in a) > 0
    for x, y in zip(a, b):
        assert torch.allclose(x["sem_seg"], y["sem_seg"], atol=1e-4)
        assert torch.allclose(x["instances"].scores, y["instances"].scores, atol=1e-4)
        assert (x["panoptic_seg"][0] == y["panoptic_seg"][0]).float().mean() > 0.999
        assert [s["category_id"] for s in x["panoptic_seg"][1]] == [
            s["category_id"] for s in y["panoptic_seg"][1]
        ]
    # Training: contiguous parameters again, the same losses bit for bit.
    slow.train(), fast.train()
    assert conv.weight.is_contiguous()
    batch = tiny_batch(cfg, (0, 1))
    torch.manual_seed(1)
    la = slow(batch)
    torch.manual_seed(1)
    lb = fast(batch)
    assert {k: float(v) for k, v in la.items()} == {k: float(v) for k, v in lb.items()}
