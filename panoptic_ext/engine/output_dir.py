"""One run per ``OUTPUT_DIR``: an exclusive lock, no silent reuse of another run's checkpoints,
and no temporary files left over from a killed save.

Without this, two trainings started with the same ``OUTPUT_DIR`` overwrite each other's
checkpoints, ``config.yaml`` and ``last_checkpoint`` and interleave their logs, and a second
training started without ``--resume`` in a finished run's folder replaces its checkpoints.

The claim is made by rank 0 before anything is written (detectron2's ``default_setup`` writes
``config.yaml`` and ``log.txt``); its outcome is shared with every rank so that all of them stop
with the same message. The lock is an ``fcntl.flock`` on ``OUTPUT_DIR/.panoptic_ext.lock``: the
operating system drops it when the process ends, however it ends (``kill -9`` included).
Forked children (data loader workers) close their copy of the lock file at once: an flock belongs
to the open file, so a worker that outlives a killed trainer would otherwise keep the folder
locked until it notices its parent is gone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import sys
import time
from typing import IO

from detectron2.utils import comm

from ..checkpoint.checkpointer import is_local_path

__all__ = [
    "LOCK_NAME",
    "OutputDirError",
    "claim_output_dir",
    "claim_output_dir_all_ranks",
    "release_output_dir",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".panoptic_ext.lock"
# Temporary files of checkpointer.atomic_write: ".<name>.<pid>.<8 hex>.tmp".
_ATOMIC_TMP = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")
# What marks a folder as holding a run's checkpoints (detectron2's checkpointer writes these).
_TAG = "last_checkpoint"

# Locks this process holds: real path of OUTPUT_DIR -> the open lock file.
_held: dict[str, IO[str]] = {}


def _close_in_forked_child() -> None:
    """Drop the inherited lock descriptors in a forked child (the parent keeps its lock)."""
    for handle in _held.values():
        handle.close()
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_forked_child)


class OutputDirError(RuntimeError):
    """``OUTPUT_DIR`` cannot be used for this run (in use, holds another run, not a folder)."""


def _lock(folder: str) -> None:
    """Take the exclusive lock of ``folder`` (re-entrant within this process)."""
    key = os.path.realpath(folder)
    if key in _held:
        return
    path = os.path.join(folder, LOCK_NAME)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise OutputDirError(
            f"OUTPUT_DIR {folder} is in use by another run ({owner}); wait for it to finish or "
            "give this run another OUTPUT_DIR"
        ) from None
    except OSError as e:  # e.g. a file system without locks: run, but say so
        handle.close()
        logger.warning(f"cannot lock OUTPUT_DIR {folder} ({e}); concurrent runs are not detected")
        return
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    command = " ".join(sys.argv)
    command = command if len(command) <= 160 else command[:157] + "..."
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}: {command}\n")
    handle.flush()
    _held[key] = handle


def release_output_dir(folder: str) -> None:
    """Release this process's lock of ``folder`` (if it holds one)."""
    handle = _held.pop(os.path.realpath(folder), None)
    if handle is not None:
        handle.close()  # closing the descriptor drops the flock


def _remove_stale_temporaries(folder: str) -> None:
    """Delete what a save killed half-way left (only the lock holder writes here)."""
    for name in sorted(os.listdir(folder)):
        if _ATOMIC_TMP.match(name) and os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
            logger.info(f"removed {os.path.join(folder, name)}, left over by an interrupted save")


def _refuse_reuse(folder: str, resume: bool, overwrite: bool) -> None:
    """A training may not start over in a folder holding another run's checkpoints."""
    names = sorted(os.listdir(folder))
    blocked = [n for n in names if n.endswith(".pth") and os.path.isdir(os.path.join(folder, n))]
    if blocked:
        raise OutputDirError(
            f"OUTPUT_DIR {folder} holds a folder named {blocked[0]}: saving the checkpoint of "
            "that name would fail at the end of training; rename or remove it"
        )
    checkpoints = [n for n in names if n == _TAG or n.endswith(".pth")]
    if not checkpoints or resume:
        return
    if overwrite:
        if _TAG in checkpoints:  # the new run must not be resumed from the old run's checkpoint
            os.remove(os.path.join(folder, _TAG))
        logger.warning(
            f"--overwrite-output: starting a new run in {folder}; the earlier run's checkpoints "
            f"({', '.join(checkpoints)}) are replaced as this run saves its own"
        )
        return
    shown = ", ".join(checkpoints[:4]) + (", ..." if len(checkpoints) > 4 else "")
    raise OutputDirError(
        f"OUTPUT_DIR {folder} holds the checkpoints of an earlier run ({shown}). Pass --resume "
        "to continue that run, give this run another OUTPUT_DIR, or pass --overwrite-output to "
        "start a new run there (its checkpoints will replace the earlier ones)"
    )


def claim_output_dir(folder: str, *, training: bool, resume: bool, overwrite: bool) -> None:
    """Create and lock ``folder`` for this process, clean it, and refuse a clashing reuse.

    Args:
        folder: ``cfg.OUTPUT_DIR``. Folders on other storage (``scheme://``) are not locked.
        training: a training run (``--eval-only`` runs only take the lock).
        resume: ``--resume``: continuing the run whose checkpoints are there is intended.
        overwrite: ``--overwrite-output``: start a new training even though checkpoints are there.
    Raises:
        OutputDirError: naming the folder and what to do.
    """
    if not folder or not is_local_path(folder):
        logger.info(f"OUTPUT_DIR {folder!r} is not a local folder: not locked")
        return
    folder = folder.removeprefix("file://")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputDirError(f"OUTPUT_DIR {folder} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        _lock(folder)
    except PermissionError as e:
        raise OutputDirError(f"OUTPUT_DIR {folder} cannot be created or written: {e}") from None
    _remove_stale_temporaries(folder)
    if training:
        _refuse_reuse(folder, resume, overwrite)


def claim_output_dir_all_ranks(
    folder: str, *, training: bool, resume: bool, overwrite: bool
) -> None:
    """:func:`claim_output_dir` on rank 0; every rank raises the same error if it fails."""
    error = None
    if comm.is_main_process():
        try:
            claim_output_dir(folder, training=training, resume=resume, overwrite=overwrite)
        except OutputDirError as e:
            error = str(e)
    if comm.get_world_size() > 1:
        error = comm.all_gather(error)[0]
    if error is not None:
        raise OutputDirError(error)
