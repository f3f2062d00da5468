"""ROI heads: PANet's adaptive feature pooling and fully-connected fusion (registered on import)."""

from .afp_pooler import AdaptiveFeaturePooler
from .panet import PANetBoxHead, PANetMaskHead, PANetROIHeads, add_panet_config

__all__ = [
    "AdaptiveFeaturePooler",
    "PANetBoxHead",
    "PANetMaskHead",
    "PANetROIHeads",
    "add_panet_config",
]
