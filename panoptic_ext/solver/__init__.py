"""Learning-rate schedules: detectron2's, plus DeepLab's ``WarmupPolyLR`` (checked keys)."""

from .config import add_solver_config
from .lr_scheduler import build_lr_scheduler, check_poly_lr_config

__all__ = ["add_solver_config", "build_lr_scheduler", "check_poly_lr_config"]
