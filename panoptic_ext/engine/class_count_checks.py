"""Checks that a config agrees with its datasets, run before a model is built.

A wrong class count otherwise surfaces as a device-side assert deep inside a loss. Which keys
hold class counts is the meta-architecture table's knowledge (:mod:`panoptic_ext.utils.meta_arch`).
"""

from detectron2.config import CfgNode

from ..utils.meta_arch import (
    ROI_HEADS_CLASSES,
    expected_class_counts,
    meta_arch_info,
    mismatched_class_counts,
    roi_heads_counts,
)

__all__ = ["check_class_counts"]


def _no_thing_classes(cfg: CfgNode) -> str | None:
    """Why a model with ROI heads cannot have ``ROI_HEADS.NUM_CLASSES`` < 1, or None.

    detectron2's box predictor with 0 classes builds a 0-output box regressor that fails in a
    reshape at the first image; the count matches a stuff-only dataset, so the count check
    alone lets it through.
    """
    if roi_heads_counts not in meta_arch_info(cfg).class_count_rules:
        return None
    count = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if count >= 1:
        return None
    return (
        f"{ROI_HEADS_CLASSES} = {count}: {cfg.MODEL.META_ARCHITECTURE} detects thing instances "
        "and needs at least one thing class. For a dataset with stuff classes only, train a "
        'semantic model (MODEL.META_ARCHITECTURE "SemanticSegmentor", e.g. '
        "configs/quick_schedules/semantic_fpn_synthetic.yaml)"
    )


def check_class_counts(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming the key, its value and the dataset when they disagree, or
    when a model with ROI heads is given no thing class."""
    problems = []
    no_things = _no_thing_classes(cfg)
    if no_things:
        problems.append(no_things)
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        for key, have, want in mismatched_class_counts(cfg, expected_class_counts(cfg, name)):
            problems.append(f"{key} = {have}, but dataset '{name}' implies {want}")
    if problems:
        raise ValueError("config does not match the dataset metadata: " + "; ".join(problems))
