"""Model components; importing this module registers them into detectron2's registries."""

from . import anchor_generator, backbone, panoptic_fcn, roi_heads  # noqa: F401
from .semantic_fpn import SemanticFPNHead

__all__ = ["SemanticFPNHead"]
