"""Position head (thing centers + stuff regions) and kernel head of Panoptic FCN.

Both heads are shared over the head levels (P3-P7): they are called once per level. They are
the defaults of their registries (:mod:`.registry`).
"""

from typing import Any

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from torch import nn

from .conv_tower import ConvTower
from .registry import PANOPTIC_FCN_KERNEL_HEAD_REGISTRY, PANOPTIC_FCN_POSITION_HEAD_REGISTRY

__all__ = ["PositionHead", "KernelHead", "KernelEmbedding"]


@PANOPTIC_FCN_POSITION_HEAD_REGISTRY.register()
class PositionHead(nn.Module):
    """Conv tower (optionally DCNv2) -> thing-center logits and stuff-region logits."""

    @configurable
    def __init__(
        self, tower: ConvTower, num_thing_classes: int, num_stuff_classes: int, bias_value: float
    ):
        """
        Args:
            tower: the shared conv tower (DCNv2 in the paper).
            num_thing_classes / num_stuff_classes: output channels of the two predictors.
            bias_value: prior bias of both predictors.
        """
        super().__init__()
        self.tower = tower
        channels = tower.out_channels
        self.out_inst = nn.Conv2d(channels, num_thing_classes, 3, padding=1)
        self.out_sem = nn.Conv2d(channels, num_stuff_classes, 3, padding=1)
        for conv in (self.out_inst, self.out_sem):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, bias_value)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict[str, Any]:
        pos = cfg.MODEL.PANOPTIC_FCN.POSITION_HEAD
        return {
            "tower": ConvTower(
                input_shape.channels, pos.CONVS_DIM, pos.NUM_CONVS, pos.NORM, pos.DEFORM, pos.COORD
            ),
            "num_thing_classes": pos.THING.NUM_CLASSES,
            "num_stuff_classes": pos.STUFF.NUM_CLASSES,
            "bias_value": pos.THING.BIAS_VALUE,
        }

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) -> center logits (N, T, H, W), region logits (N, S, H, W)."""
        x = self.tower(x)
        return self.out_inst(x), self.out_sem(x)


@PANOPTIC_FCN_KERNEL_HEAD_REGISTRY.register()
class KernelHead(nn.Module):
    """CoordConv + conv tower + linear 3x3 conv -> kernel map (N, D, H, W)."""

    @configurable
    def __init__(self, tower: ConvTower):
        """``tower``: the shared conv tower (with CoordConv in the paper); D = its width."""
        super().__init__()
        self.tower = tower
        channels = tower.out_channels
        self.out_conv = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.normal_(self.out_conv.weight, std=0.01)
        nn.init.constant_(self.out_conv.bias, 0.0)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict[str, Any]:
        kh = cfg.MODEL.PANOPTIC_FCN.KERNEL_HEAD
        tower = ConvTower(
            input_shape.channels, kh.CONVS_DIM, kh.NUM_CONVS, kh.NORM, kh.DEFORM, kh.COORD
        )
        return {"tower": tower}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, D, H, W)."""
        return self.out_conv(self.tower(x))


class KernelEmbedding(nn.Module):
    """Thing or stuff kernel generator: a 1x1 conv D -> E applied to gathered kernel vectors.

    Stored as a 1x1 conv (official parameter shapes), applied as a linear map on (..., D).
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.embed_extractor = nn.Conv2d(in_dim, out_dim, 1)
        nn.init.normal_(self.embed_extractor.weight, std=0.01)
        nn.init.constant_(self.embed_extractor.bias, 0.0)

    def forward(self, kernels: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., E)."""
        w = self.embed_extractor.weight.flatten(1)
        return nn.functional.linear(kernels, w, self.embed_extractor.bias)
