"""Safe checkpoint loading: pickles cannot run code, model-zoo files still load, atomic saves."""

import os
import pickle
import re

import numpy as np
import pytest
import torch
from detectron2.engine import AMPTrainer
from detectron2.engine.hooks import LRScheduler
from helpers import REPO
from torch import nn

from panoptic_ext.checkpoint import SafeCheckpointer, UnsafeCheckpointError, load_checkpoint_file
from panoptic_ext.checkpoint.safe_load import TRUST_ENV_VAR, PlainPickleCheckpointError
from panoptic_ext.engine.hooks import ExactResumeHook


class _CreatesFile:
    """Pickle payload that would create ``path`` when unpickled (via os.system)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


@pytest.fixture(autouse=True)
def _no_trust_env(monkeypatch):
    monkeypatch.delenv(TRUST_ENV_VAR, raising=False)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = str(tmp_path / f"evil{suffix}")
    payload = {"model": {"w": np.zeros(2)}, "__author__": "x", "evil": _CreatesFile(marker)}
    if suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    else:
        torch.save(payload, path)
    checkpointer = SafeCheckpointer(_tiny_model())
    with pytest.raises(UnsafeCheckpointError) as err:
        checkpointer.load(path)
    msg = str(err.value)
    assert path in msg
    assert "system" in msg  # the offending global (posix.system / nt.system)
    assert "CHECKPOINT.TRUST_PICKLE" in msg
    assert not marker.exists()
    # The trust flag really switches to full pickle: the payload runs (so the guard above matters).
    load_checkpoint_file(path, trust=True)
    assert marker.exists()


def test_model_zoo_pkl_loads_into_model(tmp_path):
    """detectron2 model-zoo layout: {"model": numpy arrays, "__author__", "matching_heuristics"}."""
    source = _tiny_model()
    weights = {k: v.numpy() for k, v in source.state_dict().items()}
    path = str(tmp_path / "zoo.pkl")
    with open(path, "wb") as f:
        pickle.dump(
            {"model": weights, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, f
        )
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    SafeCheckpointer(target).load(path)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    # Caffe2 layout ("blobs"), numpy scalars and protocol-5 buffers also pass the unpickler.
    blobs = {"blobs": {"a": np.float32(1.5), "b": np.arange(3.0)}, "note": np.int64(3)}
    for protocol in (2, 5):
        with open(path, "wb") as f:
            pickle.dump(blobs, f, protocol=protocol)
        loaded = load_checkpoint_file(path)
        assert loaded["blobs"]["a"] == np.float32(1.5) and loaded["note"] == 3
        assert np.array_equal(loaded["blobs"]["b"], np.arange(3.0))


def test_env_var_trusts(tmp_path, monkeypatch):
    path = str(tmp_path / "obj.pkl")
    with open(path, "wb") as f:
        pickle.dump({"x": complex(1, 2), "f": np.float64}, f)
    with pytest.raises(UnsafeCheckpointError, match="numpy.float64"):
        load_checkpoint_file(path)
    monkeypatch.setenv(TRUST_ENV_VAR, "1")
    assert load_checkpoint_file(path)["f"] is np.float64


def test_save_is_atomic_and_resume_falls_back(tmp_path, caplog):
    model = _tiny_model()
    checkpointer = SafeCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    first = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    checkpointer.save("model_0000002")
    assert open(tmp_path / "last_checkpoint").read() == "model_0000002.pth"

    # A save that fails half-way (an unpicklable extra) leaves no file and keeps the last tag.
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        checkpointer.save("model_0000003", bad=lambda: None)
    assert not (tmp_path / "model_0000003.pth").exists()
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000001.pth",
        "model_0000002.pth",
    ]

    # Truncate the last checkpoint: resume warns and falls back to the previous one.
    last = tmp_path / "model_0000002.pth"
    last.write_bytes(last.read_bytes()[:100])
    os.utime(tmp_path / "model_0000001.pth")
    fresh = _tiny_model()
    with torch.no_grad():
        fresh[0].weight.zero_()
    SafeCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(fresh[0].weight, first["0.weight"])

    # Nothing readable left: a clear error listing every file tried.
    (tmp_path / "model_0000001.pth").write_bytes(b"junk")
    with pytest.raises(RuntimeError, match="model_0000001.pth"):
        SafeCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)


def _python_sources() -> list[str]:
    """Every .py file of the package, tools/, dev/, demo/ and the repo root, but the safe loader."""
    found = [os.path.join(REPO, n) for n in os.listdir(REPO) if n.endswith(".py")]
    for folder in ("panoptic_ext", "tools", "dev", "demo"):
        for dirpath, _, files in os.walk(os.path.join(REPO, folder)):
            if not dirpath.startswith(os.path.join(REPO, "panoptic_ext", "checkpoint")):
                found += [os.path.join(dirpath, n) for n in files if n.endswith(".py")]
    return found


def test_no_code_path_bypasses_the_safe_loader():
    """Checkpoints are read only through panoptic_ext.checkpoint (a guard for new scripts)."""
    # A call, not a mention in ``backticks``.
    unsafe = re.compile(
        r"(?<!`)\b(torch\.load|pickle\.loads?|DetectionCheckpointer|DefaultPredictor)\("
    )
    offenders = [
        f"{os.path.relpath(path, REPO)}:{i}: {line.strip()}"
        for path in _python_sources()
        for i, line in enumerate(open(path, encoding="utf-8"), 1)
        if unsafe.search(line)
    ]
    assert not offenders, "use SafeCheckpointer / load_checkpoint_file:\n" + "\n".join(offenders)


def _amp_trainer(model: nn.Module):
    """AMPTrainer (CUDA is needed only to step) with a CPU grad scaler and stateful hooks."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2, 5])
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer = AMPTrainer(model, [], optimizer, grad_scaler=scaler)
    trainer.register_hooks([LRScheduler(optimizer, scheduler), ExactResumeHook(0, False)])
    return trainer, scheduler, scaler


def test_checkpoint_restores_every_training_state(tmp_path):
    """Optimizer, scheduler, iteration, grad scaler and RNG survive a weights_only round trip."""
    model = _tiny_model()
    trainer, scheduler, scaler = _amp_trainer(model)
    model(torch.rand(1, 3, 8, 8)).sum().backward()
    trainer.optimizer.step()  # momentum buffers
    for _ in range(3):
        scheduler.step()
    scaler.scale(torch.ones(()))
    scaler.update(new_scale=512.0)
    trainer.iter = 7
    SafeCheckpointer(model, str(tmp_path), trainer=trainer).save("model_0000007")
    expected_rng = torch.rand(3)

    fresh = _tiny_model()
    trainer2, scheduler2, scaler2 = _amp_trainer(fresh)
    torch.manual_seed(123)
    SafeCheckpointer(fresh, str(tmp_path), trainer=trainer2).resume_or_load("", resume=True)
    assert trainer2.iter == 7
    assert scheduler2.last_epoch == 3 and scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert scaler2.get_scale() == 512.0
    momentum = [s["momentum_buffer"] for s in trainer.optimizer.state.values()]
    momentum2 = [s["momentum_buffer"] for s in trainer2.optimizer.state.values()]
    assert len(momentum) == 6 and all(torch.equal(a, b) for a, b in zip(momentum, momentum2))
    assert torch.equal(torch.rand(3), expected_rng)


# ------------------------------------------------------------- plain pickles (not torch.save)
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_pickle_of_tensors_says_what_it_is(tmp_path, protocol):
    """``pickle.dump(model.state_dict())`` saved as .pth: was "not a valid checkpoint
    (UnpicklingError)"; now named as a plain pickle of tensors, with how to convert it."""
    path = str(tmp_path / "plain.pth")
    state = _tiny_model().state_dict()
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=protocol)
    with pytest.raises(PlainPickleCheckpointError) as err:
        load_checkpoint_file(path)
    msg = str(err.value)
    assert f"'{path}': it is a plain Python pickle of tensors (written with pickle.dump" in msg
    assert "torch.save(pickle.load(open(" in msg and "CHECKPOINT.TRUST_PICKLE True" in msg
    assert isinstance(err.value, UnsafeCheckpointError)  # never skipped as "damaged"
    loaded = load_checkpoint_file(path, trust=True)  # trusted: read with pickle itself
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize("protocol", [2, 4])
def test_raw_payload_is_unsafe_not_damaged(tmp_path, protocol):
    """A bare pickle payload under a checkpoint's name (no torch.save container)."""
    marker = tmp_path / "pwned"
    path = str(tmp_path / "model_0000001.pth")
    with open(path, "wb") as f:
        pickle.dump({"model": _CreatesFile(marker)}, f, protocol=protocol)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(
            f"'{path}': it is a plain pickle (not a torch.save checkpoint) and it references "
            "the global '")) as err:  # fmt: skip
        load_checkpoint_file(path)
    assert err.value.offending.endswith(".system") and not marker.exists()
    assert not isinstance(err.value, PlainPickleCheckpointError)


def test_plain_pickle_of_numpy_and_legacy_torch_save_load(tmp_path):
    """Plain data and numpy arrays need no code: they load like a model-zoo .pkl; torch.save's
    legacy (non-zip) format still goes through torch's weights_only loader."""
    numpy_file, legacy = str(tmp_path / "np.pth"), str(tmp_path / "legacy.pth")
    with open(numpy_file, "wb") as f:
        pickle.dump({"model": {"w": np.arange(3.0)}, "step": 7}, f)
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    loaded = load_checkpoint_file(numpy_file)
    assert loaded["step"] == 7 and np.array_equal(loaded["model"]["w"], np.arange(3.0))
    assert torch.equal(load_checkpoint_file(legacy)["w"], torch.ones(2))
