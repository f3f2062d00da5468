"""Backbones/necks (registered in detectron2's BACKBONE_REGISTRY on import)."""

from .pafpn import PAFPN, add_pafpn_config, build_resnet_pafpn_backbone

__all__ = ["PAFPN", "add_pafpn_config", "build_resnet_pafpn_backbone"]
