"""Learning-rate schedules beyond detectron2's (``WarmupPolyLR``)."""

from .config import add_solver_config
from .lr_scheduler import WarmupPolyParamScheduler, build_lr_scheduler

__all__ = ["WarmupPolyParamScheduler", "add_solver_config", "build_lr_scheduler"]
