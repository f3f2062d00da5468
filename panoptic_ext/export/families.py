"""The export family of each meta-architecture: ``MODEL.META_ARCHITECTURE`` -> ``Family``.

Which family exports a model is a fact of the meta-architecture table
(:data:`~panoptic_ext.utils.meta_arch.META_ARCHITECTURES`, ``export_family``); this module only
holds the implementation of each family. Adding an exportable model of an existing family adds
its entry to that table; a new family adds its module and one line here.
"""

from __future__ import annotations

from ..utils.meta_arch import META_ARCHITECTURES, ExportFamily
from .base import Family
from .panoptic_fcn import PANOPTIC_FCN
from .rcnn import RCNN
from .semantic import SEMANTIC

__all__ = ["FAMILIES", "IMPLEMENTATIONS", "family_of"]

# The implementation of each family named by the table.
IMPLEMENTATIONS: dict[ExportFamily, Family] = {
    ExportFamily.SEMANTIC: SEMANTIC,
    ExportFamily.RCNN: RCNN,
    ExportFamily.PANOPTIC_FCN: PANOPTIC_FCN,
}

# Meta-architecture -> family, as the table says when this module is imported (family_of reads
# the table itself).
FAMILIES: dict[str, Family] = {
    name: IMPLEMENTATIONS[info.export_family]
    for name, info in META_ARCHITECTURES.items()
    if info.export_family is not None
}


def family_of(meta_architecture: str, source: str = "MODEL.META_ARCHITECTURE") -> Family:
    """The family exporting ``meta_architecture``; ``source`` is named in the error."""
    info = META_ARCHITECTURES.get(meta_architecture)
    if info is None or info.export_family is None:
        exportable = [name for name, i in META_ARCHITECTURES.items() if i.export_family]
        raise ValueError(
            f"{source}: {meta_architecture!r} cannot be exported; exportable meta-architectures "
            f"are {sorted(exportable)}"
        )
    return IMPLEMENTATIONS[info.export_family]
