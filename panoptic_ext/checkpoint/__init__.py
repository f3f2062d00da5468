"""Reliability: safe checkpoint loading, atomic saves with fallback, exact resume, determinism,
input checks and a NaN guard. See the README's "Reliability" section."""

from .checkpointer import SafeCheckpointer, atomic_write
from .data import (
    BadSampleError,
    CheckedMapper,
    ResumableLoader,
    build_resumable_train_loader,
)
from .determinism import enable_deterministic_mode
from .hooks import ExactResumeHook, NanGuardHook
from .safe_load import UnsafeCheckpointError, load_checkpoint_file

__all__ = [
    "BadSampleError",
    "CheckedMapper",
    "ExactResumeHook",
    "NanGuardHook",
    "ResumableLoader",
    "SafeCheckpointer",
    "UnsafeCheckpointError",
    "atomic_write",
    "build_resumable_train_loader",
    "enable_deterministic_mode",
    "load_checkpoint_file",
]
