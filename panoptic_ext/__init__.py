"""panoptic_ext: Panoptic FPN, PANet and Panoptic FCN as detectron2 components.

Importing the package registers every model component into detectron2's registries and the
built-in synthetic datasets into ``DatasetCatalog``; it never changes detectron2's global config.
"""

from . import data, modeling  # noqa: F401  (registration side effects)
from .config import add_panoptic_ext_config
from .data.datasets import register_panoptic_dataset

__version__ = "0.1.0"

__all__ = ["add_panoptic_ext_config", "register_panoptic_dataset", "__version__"]
