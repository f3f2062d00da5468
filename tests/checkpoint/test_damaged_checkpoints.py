"""Safe loading tells danger from damage: a damaged file is "cannot read <file>: <why>" (never
"unsafe"), resume falls back past it, and a real forbidden global is still refused and never
skipped."""

import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from panoptic_ext.checkpoint import SafeCheckpointer, UnsafeCheckpointError, load_checkpoint_file
from panoptic_ext.checkpoint.safe_load import TRUST_ENV_VAR, UnreadableCheckpointError

# kind -> the reason the message must give.
DAMAGE = {
    "truncated": r"the archive is truncated or corrupted",
    "empty": r"the file is empty \(0 bytes\)",
    "bitflip": r"the archive is corrupted: the checksum of its record '.*/data/\d+' does not match",
    "directory": r"it is a directory, not a checkpoint file",
    "html": r"it is an HTML/XML page \(\d+ bytes\), not a checkpoint",
    "lfs": r"it is a Git LFS pointer \(\d+ bytes\).*git lfs pull",
    "garbage": r"not a valid checkpoint: neither a torch.save archive nor a readable pickle",
    "missing": r"no such file",
}


def damage(path: str, kind: str) -> None:
    """Damage the checkpoint at ``path`` the way ``kind`` says (in place)."""
    data = open(path, "rb").read() if os.path.isfile(path) else b""
    if kind in ("directory", "missing"):
        os.remove(path)
        if kind == "directory":
            os.makedirs(path)
        return
    if kind == "bitflip":  # inside the tensor data, past the zip headers and data.pkl
        flipped = bytearray(data)
        for i in range(len(data) // 2, len(data) // 2 + 16):
            flipped[i] ^= 0xFF
        data = bytes(flipped)
    content = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "bitflip": data,
        "html": b"<!DOCTYPE html>\n<html><body><h1>404 Not Found</h1></body></html>\n",
        "lfs": b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\n"
        b"size 98765\n",
        "garbage": b"\x80\x02\xff" + bytes(range(200)),
    }[kind]
    with open(path, "wb") as f:
        f.write(content)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 64, 3))


@pytest.fixture(autouse=True)
def _no_trust_env(monkeypatch):
    monkeypatch.delenv(TRUST_ENV_VAR, raising=False)


@pytest.fixture
def two_checkpoints(tmp_path):
    """A folder with model_0000001.pth (older, weights of seed 1) and model_0000002.pth (last)."""
    for it, seed in ((1, 1), (2, 2)):
        SafeCheckpointer(_model(seed), str(tmp_path)).save(f"model_000000{it}")
        os.utime(tmp_path / f"model_000000{it}.pth", (it * 1000, it * 1000))
    return tmp_path


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_file_is_unreadable_not_unsafe(two_checkpoints, kind):
    path = str(two_checkpoints / "model_0000002.pth")
    damage(path, kind)
    message = rf"cannot read {path}: {DAMAGE[kind]}"
    with pytest.raises(UnreadableCheckpointError, match=message) as err:
        load_checkpoint_file(path)
    assert not isinstance(err.value, UnsafeCheckpointError) and "TRUST" not in str(err.value)
    # The checkpointer (MODEL.WEIGHTS, --eval-only) reports the same.
    with pytest.raises(UnreadableCheckpointError, match=message):
        SafeCheckpointer(_model()).load(path)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "html"])
def test_damaged_pkl_is_unreadable(tmp_path, kind):
    path = str(tmp_path / "zoo.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.arange(500.0)}, "__author__": "zoo"}, f)
    damage(path, kind)
    why = r"not a readable pickle" if kind != "html" else DAMAGE["html"]
    with pytest.raises(UnreadableCheckpointError, match=rf"cannot read {path}: {why}"):
        load_checkpoint_file(path)


@pytest.mark.parametrize("kind", ["truncated", "empty", "bitflip", "directory", "html", "lfs"])
def test_resume_falls_back_past_a_damaged_last_checkpoint(two_checkpoints, kind, caplog):
    damage(str(two_checkpoints / "model_0000002.pth"), kind)
    model = _model(0)
    SafeCheckpointer(model, str(two_checkpoints)).resume_or_load("", resume=True)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), _model(1).parameters()))
    assert "model_0000002.pth" in caplog.text and "falling back" in caplog.text
    assert (two_checkpoints / "model_0000001.pth").stat().st_size > 0  # nothing deleted


@pytest.mark.parametrize("tag", [b"\x80\x02\xff\xfe\x00binary", b"", b"model_0000009.pth"])
def test_unreadable_or_dangling_last_checkpoint_tag(two_checkpoints, tag):
    (two_checkpoints / "last_checkpoint").write_bytes(tag)
    model = _model(0)
    SafeCheckpointer(model, str(two_checkpoints)).resume_or_load("", resume=True)
    # The newest readable file is taken: model_0000002.pth (seed 2).
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), _model(2).parameters()))


class _Payload:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-panoptic-ext",))


def test_a_real_forbidden_global_is_unsafe_and_never_skipped(two_checkpoints):
    path = two_checkpoints / "model_0000002.pth"
    torch.save({"model": {}, "evil": _Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"shutil\.rmtree.*TRUST_PICKLE"):
        SafeCheckpointer(_model(), str(two_checkpoints)).resume_or_load("", resume=True)
