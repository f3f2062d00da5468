"""Config values that cannot work, refused (or warned about) naming the key, before a run starts.

Without these checks, ``SOLVER.IMS_PER_BATCH 0`` stops in a bare ``AssertionError`` inside
detectron2's loader, ``SOLVER.CHECKPOINT_PERIOD 0`` in a ``ZeroDivisionError`` after the first
iteration, a negative learning rate trains uphill, and a stuff area limit larger than every image
removes every stuff segment from the panoptic output without a word.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from detectron2.config import CfgNode

from ..utils.config_keys import config_value
from ..utils.meta_arch import ModelOutput, meta_arch_info

__all__ = ["check_config_values", "check_stuff_area_limit"]

logger = logging.getLogger(__name__)


def _training_problems(cfg: CfgNode, world_size: int) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the keys only a training reads."""
    errors, warnings = [], []
    batch = cfg.SOLVER.IMS_PER_BATCH
    if batch <= 0:
        errors.append(f"SOLVER.IMS_PER_BATCH = {batch}: a batch needs at least one image")
    elif batch % world_size:
        errors.append(
            f"SOLVER.IMS_PER_BATCH = {batch} cannot be split over {world_size} processes "
            "(it must be a multiple of the number of GPUs)"
        )
    if cfg.SOLVER.CHECKPOINT_PERIOD <= 0:
        errors.append(
            f"SOLVER.CHECKPOINT_PERIOD = {cfg.SOLVER.CHECKPOINT_PERIOD}: need a period > 0 "
            "(a large value saves only the final model)"
        )
    if cfg.SOLVER.MAX_ITER < 0:
        errors.append(f"SOLVER.MAX_ITER = {cfg.SOLVER.MAX_ITER}: need 0 or more iterations")
    if cfg.SOLVER.BASE_LR < 0:
        errors.append(f"SOLVER.BASE_LR = {cfg.SOLVER.BASE_LR}: a negative rate trains uphill")
    elif cfg.SOLVER.BASE_LR == 0:
        warnings.append("SOLVER.BASE_LR = 0: the weights will not change")
    if not cfg.DATASETS.TRAIN:
        errors.append("DATASETS.TRAIN is empty: nothing to train on")
    sizes = list(cfg.INPUT.MIN_SIZE_TRAIN)
    if not sizes or min(sizes) <= 0:
        errors.append(f"INPUT.MIN_SIZE_TRAIN = {tuple(sizes)}: need one or more sizes > 0")
    return errors, warnings


def check_config_values(cfg: CfgNode, *, training: bool, world_size: int = 1) -> None:
    """Refuse values that cannot work, warn about values that silently do nothing useful.

    Raises:
        ValueError: listing each key with its value and why.
    """
    errors, warnings = _training_problems(cfg, world_size) if training else ([], [])
    if cfg.DATALOADER.NUM_WORKERS < 0:
        errors.append(f"DATALOADER.NUM_WORKERS = {cfg.DATALOADER.NUM_WORKERS}: need 0 or more")
    predicts_instances = ModelOutput.INSTANCE in meta_arch_info(cfg).outputs
    if cfg.TEST.DETECTIONS_PER_IMAGE <= 0 and predicts_instances:
        warnings.append(
            f"TEST.DETECTIONS_PER_IMAGE = {cfg.TEST.DETECTIONS_PER_IMAGE}: no instance will be "
            "predicted"
        )
    for warning in warnings:
        logger.warning(warning)
    if errors:
        raise ValueError("config values that cannot work:\n  " + "\n  ".join(errors))


def check_stuff_area_limit(
    cfg: CfgNode, records: Sequence[dict[str, Any]], dataset_name: str
) -> str | None:
    """Warn (and return the warning) when the model's stuff area limit exceeds every image.

    The limit is compared with each image's area at its original size (``height`` x
    ``width``), where the panoptic outputs are merged; no stuff segment can be larger.
    """
    key = meta_arch_info(cfg).stuff_area_limit_key
    sizes = [(r["height"], r["width"]) for r in records if "height" in r and "width" in r]
    if key is None or not sizes:
        return None
    limit = config_value(cfg, key)
    height, width = max(sizes, key=lambda s: s[0] * s[1])
    if limit <= height * width:
        return None
    warning = (
        f"{key} = {limit} is larger than every image of {dataset_name} (the largest is "
        f"{height}x{width} = {height * width} pixels): the panoptic output will hold no stuff"
    )
    logger.warning(warning)
    return warning
