"""Shared bits of the reliability tests."""

import contextlib
from collections.abc import Iterator

import torch

# One quick schedule per model family.
QUICK_SCHEDULES = [
    "panoptic_fpn_synthetic.yaml",
    "panet_synthetic.yaml",
    "semantic_fpn_synthetic.yaml",
    "panoptic_fcn_synthetic.yaml",
]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run with one intra-op thread.

    On 2 cores shared with other processes, 2 spin-waiting OpenMP threads made a tiny model's
    train step 110 s instead of 2 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
