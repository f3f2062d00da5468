"""One run per OUTPUT_DIR: the lock (released however the holder ends), refusal of another run's
checkpoints unless --resume / --overwrite-output, clean-up of interrupted saves, and the same
outcome on every rank of a distributed job."""

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from detectron2.engine import launch
from detectron2.utils import comm
from helpers import REPO

from panoptic_ext.engine.distributed import leave_process_group
from panoptic_ext.engine.output_dir import (
    LOCK_NAME,
    OutputDirError,
    claim_output_dir,
    claim_output_dir_all_ranks,
    release_output_dir,
)

_HOLD = (
    "import sys, time; from panoptic_ext.engine.output_dir import claim_output_dir;"
    "claim_output_dir(sys.argv[1], training=False, resume=False, overwrite=False);"
    "open(sys.argv[2], 'w').close(); time.sleep(600)"
)


def _holder(folder: str, ready: str) -> subprocess.Popen:
    """A process that claims ``folder`` and then sleeps; ``ready`` appears once it holds it."""
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, folder, ready], env=env)
    deadline = time.time() + 120
    while not os.path.exists(ready):
        assert proc.poll() is None and time.time() < deadline, "holder did not start"
        time.sleep(0.2)
    return proc


def test_lock_refuses_a_second_process_until_the_first_is_killed(tmp_path):
    folder = str(tmp_path / "run")
    proc = _holder(folder, str(tmp_path / "ready"))
    try:
        with pytest.raises(OutputDirError, match=rf"{folder} is in use by another run \(pid "
                           rf"{proc.pid} on .* since .*\); wait for it"):  # fmt: skip
            claim_output_dir(folder, training=True, resume=True, overwrite=False)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    claim_output_dir(folder, training=True, resume=True, overwrite=False)  # released by the kill
    assert f"pid {os.getpid()}" in open(os.path.join(folder, LOCK_NAME)).read()
    # Re-entrant within one process (in-process runs one after the other), releasable.
    claim_output_dir(folder, training=False, resume=False, overwrite=False)
    release_output_dir(folder)
    release_output_dir(folder)


_HOLD_AND_FORK = (
    "import os, sys, time; from panoptic_ext.engine.output_dir import claim_output_dir;"
    "claim_output_dir(sys.argv[1], training=False, resume=False, overwrite=False);"
    "pid = os.fork()\n"
    "if pid == 0: time.sleep(600); os._exit(0)\n"
    "open(sys.argv[2], 'w').write(str(pid)); time.sleep(600)"
)


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_parent(tmp_path):
    """Data loader workers are forked: a kill -9 of the trainer must free the folder at once."""
    folder, ready = str(tmp_path / "run"), str(tmp_path / "ready")
    env = dict(os.environ, PYTHONPATH=REPO)
    parent = subprocess.Popen([sys.executable, "-c", _HOLD_AND_FORK, folder, ready], env=env)
    deadline = time.time() + 120
    while not (os.path.exists(ready) and open(ready).read()):
        assert parent.poll() is None and time.time() < deadline, "holder did not start"
        time.sleep(0.2)
    child = int(open(ready).read())
    try:
        with pytest.raises(OutputDirError, match=rf"in use by another run \(pid {parent.pid} "):
            claim_output_dir(folder, training=False, resume=False, overwrite=False)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        os.kill(child, 0)  # the forked child is still alive ...
        claim_output_dir(folder, training=False, resume=False, overwrite=False)  # ... lock is free
        release_output_dir(folder)
    finally:
        parent.kill()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_checkpoints_of_an_earlier_run_need_resume_or_overwrite(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "model_0000999.pth").write_bytes(b"weights")
    (folder / "last_checkpoint").write_text("model_0000999.pth")
    try:
        with pytest.raises(OutputDirError, match=r"holds the checkpoints of an earlier run "
                           r"\(last_checkpoint, model_0000999.pth\). Pass --resume"):  # fmt: skip
            claim_output_dir(str(folder), training=True, resume=False, overwrite=False)
        assert sorted(os.listdir(folder)) == [LOCK_NAME, "last_checkpoint", "model_0000999.pth"]
        claim_output_dir(str(folder), training=False, resume=False, overwrite=False)  # eval only
        claim_output_dir(str(folder), training=True, resume=True, overwrite=False)
        assert (folder / "last_checkpoint").exists()
        # Overwrite: the new run must not resume from the old tag; the weights stay until replaced.
        claim_output_dir(str(folder), training=True, resume=False, overwrite=True)
        assert sorted(os.listdir(folder)) == [LOCK_NAME, "model_0000999.pth"]
    finally:
        release_output_dir(str(folder))


def test_interrupted_saves_are_cleaned_and_bad_folders_named(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    stale = [".model_0000004.pth.4242.0badf00d.tmp", ".last_checkpoint.17.deadbeef.tmp"]
    kept = [".notes.tmp", "model.tmp", ".model_0000004.pth.x.0badf00d.tmp"]
    for name in stale + kept:
        (folder / name).write_bytes(b"x")
    try:
        claim_output_dir(str(folder), training=True, resume=False, overwrite=False)
    finally:
        release_output_dir(str(folder))
    assert sorted(os.listdir(folder)) == sorted([LOCK_NAME, *kept])
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match=r"OUTPUT_DIR .*/file is a file, not a folder"):
        claim_output_dir(str(tmp_path / "file"), training=True, resume=False, overwrite=False)
    (tmp_path / "odd" / "model_final.pth").mkdir(parents=True)
    with pytest.raises(OutputDirError, match=r"holds a folder named model_final\.pth"):
        claim_output_dir(str(tmp_path / "odd"), training=True, resume=True, overwrite=False)
    release_output_dir(str(tmp_path / "odd"))


def _claim_worker(folder: str) -> None:
    try:
        claim_output_dir_all_ranks(folder, training=True, resume=False, overwrite=False)
        message = "claimed"
    except OutputDirError as e:
        message = str(e)
    with open(os.path.join(os.path.dirname(folder), f"rank{comm.get_rank()}.txt"), "w") as f:
        f.write(message)
    leave_process_group()  # as train_net's workers do


def test_every_rank_stops_with_rank_zeros_refusal(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "last_checkpoint").write_text("model_final.pth")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    launch(_claim_worker, 2, dist_url=url, args=(str(folder),), timeout=timedelta(seconds=60))
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    assert rank0 == rank1 and "holds the checkpoints of an earlier run" in rank0
