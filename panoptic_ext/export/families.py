"""The one table of exportable meta-architectures: ``MODEL.META_ARCHITECTURE`` -> ``Family``.

Adding an exportable model adds one entry here (and its family module).
"""

from __future__ import annotations

from .base import Family
from .panoptic_fcn import PANOPTIC_FCN
from .rcnn import RCNN
from .semantic import SEMANTIC

__all__ = ["FAMILIES", "family_of"]

FAMILIES: dict[str, Family] = {
    "SemanticSegmentor": SEMANTIC,
    "GeneralizedRCNN": RCNN,
    "PanopticFPN": RCNN,
    "PanopticFCN": PANOPTIC_FCN,
}


def family_of(meta_architecture: str, source: str = "MODEL.META_ARCHITECTURE") -> Family:
    """The family exporting ``meta_architecture``; ``source`` is named in the error."""
    try:
        return FAMILIES[meta_architecture]
    except KeyError:
        raise ValueError(
            f"{source}: {meta_architecture!r} cannot be exported; exportable meta-architectures "
            f"are {sorted(FAMILIES)}"
        ) from None
