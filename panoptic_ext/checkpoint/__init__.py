"""Checkpoints: safe loading (no code from pickles), atomic saves with fallback on resume, and the
report of which keys a detectron2 checkpoint initialises. See RELIABILITY.md."""

from .checkpointer import SafeCheckpointer, atomic_write
from .load_report import LoadReport, load_d2_state_dict, read_d2_checkpoint
from .safe_load import UnreadableCheckpointError, UnsafeCheckpointError, load_checkpoint_file

__all__ = [
    "LoadReport",
    "SafeCheckpointer",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "atomic_write",
    "load_checkpoint_file",
    "load_d2_state_dict",
    "read_d2_checkpoint",
]
