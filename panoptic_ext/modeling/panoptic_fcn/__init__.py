"""Panoptic FCN (kernel-based panoptic segmentation); importing registers its components."""

from .backbone import build_resnet_fpn_p6p7_from_p5_backbone
from .config import add_panoptic_fcn_config
from .meta_arch import PanopticFCN

__all__ = ["PanopticFCN", "add_panoptic_fcn_config", "build_resnet_fpn_p6p7_from_p5_backbone"]
