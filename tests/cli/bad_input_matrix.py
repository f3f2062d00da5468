"""Helpers of the bad-input matrix (tests/cli/test_bad_inputs*.py): the tiny training command
and a digest of a run folder, to prove that a refused command changed nothing."""

import hashlib
import os

from helpers import TINY_OPTS, config_path, one_thread

from panoptic_ext.cli import train

CFG = config_path("quick_schedules/panoptic_fpn_synthetic.yaml")
# Tiny training without evaluation: checkpoints after iterations 0 and 1 (+ model_final).
TRAIN = [str(v) for v in (*TINY_OPTS, "DATASETS.TEST", "()", "SOLVER.MAX_ITER", 2,
                          "SOLVER.CHECKPOINT_PERIOD", 1, "SOLVER.WARMUP_ITERS", 1)]  # fmt: skip


def train_tiny(out: str, *extra: str, options: tuple[str, ...] = ()) -> int:
    with one_thread():
        return train.main(["--config-file", CFG, *options, *TRAIN, "OUTPUT_DIR", out, *extra])


def digest(folder: str) -> dict[str, str]:
    """SHA-1 of every file below ``folder`` (the lock file aside)."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name != ".panoptic_ext.lock":
                path = os.path.join(root, name)
                found[os.path.relpath(path, folder)] = hashlib.sha1(
                    open(path, "rb").read()
                ).hexdigest()
    return found
