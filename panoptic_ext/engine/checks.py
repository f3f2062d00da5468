"""Checks that a config agrees with its datasets, run before a model is built.

A wrong class count otherwise surfaces as a device-side assert deep inside a loss. Which keys
hold class counts is the meta-architecture table's knowledge (:mod:`panoptic_ext.utils.meta_arch`).
"""

from detectron2.config import CfgNode

from ..utils.meta_arch import expected_class_counts, mismatched_class_counts

__all__ = ["check_class_counts"]


def check_class_counts(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming the key, its value and the dataset when they disagree."""
    problems = []
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        for key, have, want in mismatched_class_counts(cfg, expected_class_counts(cfg, name)):
            problems.append(f"{key} = {have}, but dataset '{name}' implies {want}")
    if problems:
        raise ValueError("config does not match the dataset metadata: " + "; ".join(problems))
