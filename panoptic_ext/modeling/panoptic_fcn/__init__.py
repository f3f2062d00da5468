"""Panoptic FCN (kernel-based panoptic segmentation); importing registers its components.

Its backbone (P6/P7 from the FPN output P5) is ``modeling/backbone/fpn_p6p7.py``.
"""

from .config import add_panoptic_fcn_config
from .meta_arch import PanopticFCN
from .registry import (
    PANOPTIC_FCN_ENCODER_REGISTRY,
    PANOPTIC_FCN_KERNEL_HEAD_REGISTRY,
    PANOPTIC_FCN_POSITION_HEAD_REGISTRY,
)

__all__ = [
    "PANOPTIC_FCN_ENCODER_REGISTRY",
    "PANOPTIC_FCN_KERNEL_HEAD_REGISTRY",
    "PANOPTIC_FCN_POSITION_HEAD_REGISTRY",
    "PanopticFCN",
    "add_panoptic_fcn_config",
]
