"""Fixtures of the bad-input matrix (tests/cli/test_bad_inputs*.py): a finished tiny training to
damage, and a private copy of it per test."""

import os
import shutil

import pytest
from bad_input_matrix import train_tiny
from helpers import register_tiny


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny training: its folder (checkpoints, config.yaml, log.txt, metrics.json)."""
    register_tiny()
    out = str(tmp_path_factory.mktemp("bad_inputs") / "run")
    assert train_tiny(out) == 0
    assert {"model_0000000.pth", "model_0000001.pth", "model_final.pth", "last_checkpoint",
            "config.yaml"} <= set(os.listdir(out))  # fmt: skip
    return out


@pytest.fixture
def run_copy(run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(run, out)
    os.remove(os.path.join(out, ".panoptic_ext.lock"))
    return out


@pytest.fixture
def images(records, tmp_path):
    """a.jpg, b.jpg, c.jpg in in/ (copies of synthetic images 1-3)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, record in zip("abc", records[1:4]):
        shutil.copy(record["file_name"], folder / f"{name}.jpg")
    return folder
