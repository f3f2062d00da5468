"""``WarmupPolyLR``: warmup times polynomial decay, on detectron2's LRMultiplier.

detectron2 ships multi-step, cosine and fixed-gamma schedules; Panoptic FCN (and DeepLab) train
with ``lr = base_lr * warmup(iter) * (1 - iter / max_iter)^power``. The warmup factor multiplies
the poly factor (it does not blend into it as detectron2's ``WarmupParamScheduler`` does), so
the schedule is the one the official Panoptic FCN models were trained with.
"""

import torch
from detectron2.config import CfgNode
from detectron2.solver import LRMultiplier
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from fvcore.common.param_scheduler import ParamScheduler

__all__ = ["WarmupPolyParamScheduler", "build_lr_scheduler"]

WARMUP_METHODS = ("linear", "constant")


class WarmupPolyParamScheduler(ParamScheduler):
    """LR multiplier as a function of training progress ``where`` = iter / max_iter in [0, 1)."""

    def __init__(
        self,
        power: float,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
        constant_ending: float = 0.0,
    ):
        """
        Args:
            power: exponent of ``(1 - where)``.
            warmup_factor: multiplier at ``where = 0``.
            warmup_length: warmup as a fraction of training (WARMUP_ITERS / MAX_ITER).
            warmup_method: "linear" (factor rises to 1) or "constant".
            constant_ending: floor of the poly factor once warmup is over (0: none).
        """
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(
                f"SOLVER.WARMUP_METHOD must be one of {WARMUP_METHODS}, got {warmup_method!r}"
            )
        if power < 0:
            raise ValueError(f"SOLVER.POLY_LR_POWER must be >= 0, got {power}")
        if not 0.0 <= constant_ending <= 1.0:
            raise ValueError(
                f"SOLVER.POLY_LR_CONSTANT_ENDING must be in [0, 1], got {constant_ending}"
            )
        self.power = power
        self.warmup_factor = warmup_factor
        self.warmup_length = warmup_length
        self.warmup_method = warmup_method
        self.constant_ending = constant_ending

    def _warmup(self, where: float) -> float:
        if where >= self.warmup_length:
            return 1.0
        if self.warmup_method == "constant":
            return self.warmup_factor
        alpha = where / self.warmup_length
        return self.warmup_factor * (1.0 - alpha) + alpha

    def __call__(self, where: float) -> float:
        warmup = self._warmup(where)
        poly = max(0.0, 1.0 - where) ** self.power
        if self.constant_ending > 0 and warmup == 1.0:
            poly = max(poly, self.constant_ending)
        return warmup * poly


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """detectron2's ``build_lr_scheduler`` plus ``SOLVER.LR_SCHEDULER_NAME: "WarmupPolyLR"``."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    max_iter = cfg.SOLVER.MAX_ITER
    sched = WarmupPolyParamScheduler(
        power=cfg.SOLVER.POLY_LR_POWER,
        warmup_factor=cfg.SOLVER.WARMUP_FACTOR,
        warmup_length=min(cfg.SOLVER.WARMUP_ITERS / max_iter, 1.0),
        warmup_method=cfg.SOLVER.WARMUP_METHOD,
        constant_ending=cfg.SOLVER.POLY_LR_CONSTANT_ENDING,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=max_iter)
