"""Backbones/necks (registered in detectron2's BACKBONE_REGISTRY on import)."""

from .fpn_p6p7 import build_resnet_fpn_p6p7_from_p5_backbone
from .pafpn import PAFPN, add_pafpn_config, build_resnet_pafpn_backbone

__all__ = [
    "PAFPN",
    "add_pafpn_config",
    "build_resnet_fpn_p6p7_from_p5_backbone",
    "build_resnet_pafpn_backbone",
]
