"""Panoptic FCN's encoder and heads come from registries: today's classes by default, a
registered replacement when the config names it, an unknown name refused with the name."""

import pytest
import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from helpers import TINY_OPTS, build_tiny_model, load_cfg
from torch import nn

from panoptic_ext.modeling.panoptic_fcn import (
    PANOPTIC_FCN_ENCODER_REGISTRY,
    PANOPTIC_FCN_KERNEL_HEAD_REGISTRY,
    PANOPTIC_FCN_POSITION_HEAD_REGISTRY,
)
from panoptic_ext.modeling.panoptic_fcn.encoder import FeatureEncoder
from panoptic_ext.modeling.panoptic_fcn.heads import KernelHead, PositionHead

CONFIG = "quick_schedules/panoptic_fcn_synthetic.yaml"


class _PlainPositionHead(nn.Module):
    """One 3x3 conv per output, no tower: the smallest position head with the same outputs."""

    @configurable
    def __init__(self, in_channels: int, num_thing_classes: int, num_stuff_classes: int):
        super().__init__()
        self.out_inst = nn.Conv2d(in_channels, num_thing_classes, 3, padding=1)
        self.out_sem = nn.Conv2d(in_channels, num_stuff_classes, 3, padding=1)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict:
        pos = cfg.MODEL.PANOPTIC_FCN.POSITION_HEAD
        return {
            "in_channels": input_shape.channels,
            "num_thing_classes": pos.THING.NUM_CLASSES,
            "num_stuff_classes": pos.STUFF.NUM_CLASSES,
        }

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.out_inst(x), self.out_sem(x)


if "_PlainPositionHead" not in PANOPTIC_FCN_POSITION_HEAD_REGISTRY:
    PANOPTIC_FCN_POSITION_HEAD_REGISTRY.register(_PlainPositionHead)


def test_defaults_are_todays_classes():
    model = build_tiny_model(load_cfg(CONFIG, *TINY_OPTS))
    assert type(model.encoder) is FeatureEncoder
    assert type(model.position_head) is PositionHead
    assert type(model.kernel_head) is KernelHead
    assert PANOPTIC_FCN_ENCODER_REGISTRY.get("FeatureEncoder") is FeatureEncoder
    assert PANOPTIC_FCN_KERNEL_HEAD_REGISTRY.get("KernelHead") is KernelHead


def test_a_config_swaps_the_position_head_and_the_model_trains():
    from detectron2.utils.events import EventStorage
    from helpers import register_tiny, tiny_batch

    register_tiny()
    cfg = load_cfg(
        CONFIG, *TINY_OPTS, "MODEL.PANOPTIC_FCN.POSITION_HEAD.NAME", "_PlainPositionHead"
    )
    model = build_tiny_model(cfg)
    assert type(model.position_head) is _PlainPositionHead
    model.train()
    with EventStorage():
        losses = model(tiny_batch(cfg))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.position_head.out_inst.weight.grad is not None


def test_unknown_name_is_refused_with_the_name():
    cfg = load_cfg(CONFIG, *TINY_OPTS, "MODEL.PANOPTIC_FCN.KERNEL_HEAD.NAME", "NoSuchHead")
    with pytest.raises(KeyError, match="NoSuchHead"):
        build_tiny_model(cfg)
