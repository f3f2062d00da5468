"""Deterministic mode and the resumable data stream."""

import itertools
import random

import numpy as np
import pytest
import torch
from helpers import TINY_OPTS, load_cfg, register_tiny

from panoptic_ext.data.train_loader import PositionalDataset
from panoptic_ext.engine import Trainer
from panoptic_ext.utils.determinism import enable_deterministic_mode, get_rng_state, set_rng_state


def _cfg(*opts):
    register_tiny()
    # Random flips on: the augmentation RNG is part of what must be reproduced.
    return load_cfg(
        "quick_schedules/panoptic_fpn_synthetic.yaml",
        *TINY_OPTS,
        "INPUT.RANDOM_FLIP",
        "horizontal",
        "DETERMINISTIC",
        True,
        "SEED",
        3,
        *opts,
    )


def _images(loader, n: int) -> list[torch.Tensor]:
    return [torch.stack([d["image"] for d in batch]) for batch in itertools.islice(loader, n)]


def test_stream_is_independent_of_workers_and_resumes_mid_stream():
    """Same batches with 0 or 2 workers, and starting at iteration 3 gives batches 3, 4, ..."""
    straight = _images(Trainer.build_train_loader(_cfg()), 6)  # 12 samples > 8 images: 2 epochs
    with_workers = _images(Trainer.build_train_loader(_cfg("DATALOADER.NUM_WORKERS", 2)), 6)
    assert all(torch.equal(a, b) for a, b in zip(straight, with_workers))
    resumed_loader = Trainer.build_train_loader(_cfg())
    resumed_loader.set_start_iter(3)
    resumed = _images(resumed_loader, 3)
    assert all(torch.equal(a, b) for a, b in zip(straight[3:], resumed))


def test_ranks_read_disjoint_positions():
    ranks = [PositionalDataset([], None, 0, True, 2, rank, 2) for rank in (0, 1)]
    read = [p for it in (5, 6, 7) for r in ranks for p in r.positions(it)]
    assert read == list(range(20, 32))  # iterations 5, 6, 7 of 2 ranks x 2 images, no overlap


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    state = get_rng_state()
    torch.save({"rng": state}, tmp_path / "rng.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_deterministic_mode_needs_a_seed_and_turns_on_deterministic_kernels():
    cfg = _cfg("SEED", -1)
    with pytest.raises(ValueError, match="SEED=-1"):
        enable_deterministic_mode(cfg)
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        enable_deterministic_mode(_cfg())
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
