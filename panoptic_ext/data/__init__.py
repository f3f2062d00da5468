"""Data: dataset registration, target derivation and the dataset mapper."""

from . import datasets  # noqa: F401  (registers the synthetic datasets)
from .mapper import PanopticDatasetMapper, build_augmentations

__all__ = ["PanopticDatasetMapper", "build_augmentations"]
