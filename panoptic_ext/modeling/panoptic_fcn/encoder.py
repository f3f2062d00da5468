"""Feature encoder of Panoptic FCN: semantic FPN (P2-P5 -> stride 4) + CoordConv conv tower."""

from typing import Any

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from torch import nn

from .conv_tower import ConvTower
from .registry import PANOPTIC_FCN_ENCODER_REGISTRY

__all__ = ["FeatureEncoder"]


@PANOPTIC_FCN_ENCODER_REGISTRY.register()
class FeatureEncoder(nn.Module):
    """Encodes the backbone features into the high-resolution map the dynamic kernels act on.

    ``semantic_fpn`` is detectron2's Panoptic-FPN semantic branch (``SemSegFPNHead``) without its
    predictor: per level a tower of conv+norm+ReLU(+x2 upsample) blocks, summed at
    ``common_stride``. ``tower`` then applies CoordConv and ``num_convs`` conv+ReLU layers.
    """

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        fpn_dim: int,
        fpn_norm: str,
        common_stride: int,
        out_dim: int,
        num_convs: int,
        norm: str,
        deform: bool,
        coord: bool,
    ):
        """
        Args:
            input_shape: shapes of the backbone levels the semantic FPN merges (e.g. p2..p5).
            fpn_dim / fpn_norm: width and norm of the semantic-FPN towers.
            common_stride: output stride of the encoded feature.
            out_dim: E, channels of the encoded feature (= kernel length).
            num_convs / norm / deform / coord: the encoder tower.
        """
        super().__init__()
        self.in_features = list(input_shape.keys())
        self.semantic_fpn = SemSegFPNHead(
            input_shape,
            num_classes=1,
            conv_dims=fpn_dim,
            common_stride=common_stride,
            norm=fpn_norm,
        )
        # Only the merged feature is needed, not the per-pixel classifier.
        self.semantic_fpn.predictor = nn.Identity()
        self.tower = ConvTower(fpn_dim, out_dim, num_convs, norm=norm, deform=deform, coord=coord)
        self.common_stride = common_stride

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        """``input_shape``: every backbone level; the ``SEMANTIC_FPN.IN_FEATURES`` are used."""
        p = cfg.MODEL.PANOPTIC_FCN
        fpn, enc = p.SEMANTIC_FPN, p.FEATURE_ENCODER
        return {
            "input_shape": {f: input_shape[f] for f in fpn.IN_FEATURES},
            "fpn_dim": fpn.CONVS_DIM,
            "fpn_norm": fpn.NORM,
            "common_stride": fpn.COMMON_STRIDE,
            "out_dim": enc.CONVS_DIM,
            "num_convs": enc.NUM_CONVS,
            "norm": enc.NORM,
            "deform": enc.DEFORM,
            "coord": enc.COORD,
        }

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """features[name]: (N, C, H/s, W/s) -> encoded feature (N, E, H/common_stride, W/...)."""
        return self.tower(self.semantic_fpn.layers(features))
