"""Training and evaluation engine."""

from .evaluators import build_evaluators
from .launch import main, setup_cfg
from .trainer import Trainer, wrap_ddp

__all__ = ["Trainer", "build_evaluators", "main", "setup_cfg", "wrap_ddp"]
