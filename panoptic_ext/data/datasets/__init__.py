"""Dataset registration: the built-in synthetic set and any COCO-panoptic dataset."""

from ..metadata import metadata_from_categories
from .builtin import register_builtin_panoptic_datasets
from .register import load_panoptic_json, register_panoptic_dataset
from .synthetic import register_synthetic_datasets

# The synthetic sets are registered with their default size; Trainer/setup re-registers them
# with the sizes in cfg.DATASETS.SYNTHETIC.
register_synthetic_datasets()

__all__ = [
    "register_builtin_panoptic_datasets",
    "load_panoptic_json",
    "metadata_from_categories",
    "register_panoptic_dataset",
    "register_synthetic_datasets",
]
