"""Shared pytest set-up: synthetic data in a per-session cache, CPU threads, quiet logs."""

import os
import tempfile

import pytest
import torch

# Generated datasets go to a throw-away folder unless the caller chose one (CI passes its own).
os.environ.setdefault(
    "DETECTRON2_DATASETS", os.path.join(tempfile.gettempdir(), "panoptic_ext_test_data")
)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def records():
    """Dataset dicts of the tiny synthetic train split (image 0 has no things)."""
    # Imported here: DETECTRON2_DATASETS must be set before panoptic_ext registers its datasets.
    from detectron2.data import DatasetCatalog
    from helpers import register_tiny

    register_tiny()
    return DatasetCatalog.get("synthetic_panoptic_train")
