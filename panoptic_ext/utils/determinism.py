"""Seeding, RNG-state capture and PyTorch's deterministic mode (``DETERMINISTIC``)."""

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from .config_keys import add_keys

__all__ = [
    "add_determinism_config",
    "derive_seed",
    "enable_deterministic_mode",
    "get_rng_state",
    "seeded_rng",
    "set_rng_state",
]

logger = logging.getLogger(__name__)


def add_determinism_config(cfg: CfgNode) -> None:
    """Add ``DETERMINISTIC`` (next to detectron2's ``SEED``)."""
    add_keys(
        cfg,
        "",
        {
            # Opt-in reproducible training: needs SEED >= 0; seeds every rank, every iteration and
            # every data sample from SEED, calls torch.use_deterministic_algorithms and makes
            # resumed runs bit-identical to uninterrupted ones on CPU.
            "DETERMINISTIC": False,
        },
    )


def derive_seed(*parts: int) -> int:
    """A 31-bit seed that depends on every part (e.g. SEED, rank, iteration), same on every host."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0]) & 0x7FFFFFFF


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with ``random``/numpy/torch-CPU seeded from ``seed``; restore them afterwards.

    Used per data sample so augmentation depends only on the sample's position in the stream,
    not on worker count, process or how often training was resumed. Unlike detectron2's
    ``seed_all_rng`` it leaves the CUDA generators and the environment alone and restores what
    it seeded, so the model's own random stream is not reset by every sample.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def get_rng_state() -> dict[str, Any]:
    """RNG states of Python, numpy and torch as tensors and plain types (``weights_only``-safe)."""
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, torch.tensor(keys, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(np_keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys.tolist()), gauss))
    kind, np_keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np_keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def enable_deterministic_mode(cfg: CfgNode) -> None:
    """Apply ``cfg.DETERMINISTIC``: seed this rank and make PyTorch pick deterministic kernels.

    Seeds ``random``/numpy/torch with a seed derived from ``(SEED, rank)``, calls
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (ops without a deterministic
    CUDA kernel, e.g. ROIAlign backward, warn instead of failing), turns off cuDNN autotuning and
    sets ``CUBLAS_WORKSPACE_CONFIG``. Data-loader samples and training iterations are reseeded by
    the data loader and ``ExactResumeHook``. No-op when ``cfg.DETERMINISTIC`` is False.

    Raises:
        ValueError: ``DETERMINISTIC`` is on but ``SEED`` is negative (random).
    """
    if not cfg.DETERMINISTIC:
        return
    if cfg.SEED < 0:
        raise ValueError(f"DETERMINISTIC True needs a fixed SEED >= 0, got SEED={cfg.SEED}.")
    # Must be set before the first cuBLAS call for deterministic GEMMs on CUDA >= 10.2.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    seed_all_rng(derive_seed(cfg.SEED, comm.get_rank()))
    logger.info(f"Deterministic mode on (SEED={cfg.SEED}, rank {comm.get_rank()}).")
