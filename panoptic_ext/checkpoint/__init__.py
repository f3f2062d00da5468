"""Checkpoints: safe loading (no code from pickles), atomic saves with fallback on resume, the
report of which keys a detectron2 checkpoint initialises, and the refusal of weights that cannot
be right (NaN/Inf, nothing filled, heads at random init for inference, resume into another
model). See RELIABILITY.md."""

from .checkpointer import SafeCheckpointer, atomic_write
from .load_report import LoadReport, load_d2_state_dict, read_d2_checkpoint
from .safe_load import (
    PlainPickleCheckpointError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint_file,
)
from .weight_checks import (
    NonFiniteWeightsError,
    ResumeMismatchError,
    WeightsError,
    WeightsMismatchError,
)

__all__ = [
    "LoadReport",
    "NonFiniteWeightsError",
    "PlainPickleCheckpointError",
    "ResumeMismatchError",
    "SafeCheckpointer",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "WeightsError",
    "WeightsMismatchError",
    "atomic_write",
    "load_checkpoint_file",
    "load_d2_state_dict",
    "read_d2_checkpoint",
]
