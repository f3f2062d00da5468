"""Training and evaluation engine: trainer, hooks, evaluator table, config checks, launch, and the
single-image predictor of the demo (:mod:`.predictor`)."""

from .evaluator_table import build_evaluators
from .hooks import ExactResumeHook, NanGuardHook
from .launch import main, setup_cfg
from .trainer import Trainer, wrap_ddp

__all__ = [
    "ExactResumeHook",
    "NanGuardHook",
    "Trainer",
    "build_evaluators",
    "main",
    "setup_cfg",
    "wrap_ddp",
]
