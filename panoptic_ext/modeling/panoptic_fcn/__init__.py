"""Panoptic FCN (kernel-based panoptic segmentation); importing registers its components.

Its backbone (P6/P7 from the FPN output P5) is ``modeling/backbone/fpn_p6p7.py``.
"""

from .config import add_panoptic_fcn_config
from .meta_arch import PanopticFCN

__all__ = ["PanopticFCN", "add_panoptic_fcn_config"]
