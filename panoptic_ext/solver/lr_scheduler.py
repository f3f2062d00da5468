"""The learning-rate schedule Panoptic FCN trains with, from ``detectron2.projects.deeplab``.

``SOLVER.LR_SCHEDULER_NAME: "WarmupPolyLR"`` is DeepLab's ``WarmupPolyLR`` (warmup factor times
``(1 - iter / max_iter)^POLY_LR_POWER``, floored at ``POLY_LR_CONSTANT_ENDING`` after warmup), the
schedule of the official Panoptic FCN models; every other name is detectron2's own. What this
module adds is a check of the keys, so that a bad value is named before training starts.
"""

import torch
from detectron2.config import CfgNode
from detectron2.projects.deeplab import build_lr_scheduler as deeplab_build_lr_scheduler
from detectron2.solver import LRScheduler

__all__ = ["WARMUP_METHODS", "build_lr_scheduler", "check_poly_lr_config"]

# Warmup methods of detectron2's schedules.
WARMUP_METHODS = ("linear", "constant")


def check_poly_lr_config(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming the key when a ``WarmupPolyLR`` setting cannot work."""
    solver = cfg.SOLVER
    if solver.WARMUP_METHOD not in WARMUP_METHODS:
        raise ValueError(
            f"SOLVER.WARMUP_METHOD must be one of {WARMUP_METHODS}, got {solver.WARMUP_METHOD!r}"
        )
    if solver.POLY_LR_POWER < 0:
        raise ValueError(f"SOLVER.POLY_LR_POWER must be >= 0, got {solver.POLY_LR_POWER}")
    ending = solver.POLY_LR_CONSTANT_ENDING
    if not 0.0 <= ending <= 1.0:
        raise ValueError(f"SOLVER.POLY_LR_CONSTANT_ENDING must be in [0, 1], got {ending}")


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """detectron2's schedules plus DeepLab's ``"WarmupPolyLR"`` (its keys checked first)."""
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR":
        check_poly_lr_config(cfg)
    return deeplab_build_lr_scheduler(cfg, optimizer)
