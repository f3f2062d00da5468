"""Exact resume: a run killed with SIGKILL and resumed ends with bit-identical weights."""

import os
import signal
import subprocess
import sys
import time

import torch
from helpers import REPO, TINY_OPTS, config_path

N = 6  # iterations; the kill happens after iteration N/2 - 1 (its checkpoint is on disk)


def _opts(output_dir: str) -> list[str]:
    opts = [str(v) for v in TINY_OPTS] + [
        "DATALOADER.NUM_WORKERS",
        "1",  # exactness must not depend on worker processes
        "SOLVER.MAX_ITER",
        str(N),
        "SOLVER.CHECKPOINT_PERIOD",
        str(N // 2),
        "SOLVER.WARMUP_ITERS",
        "2",
        "DETERMINISTIC",
        "True",
        "SEED",
        "11",
        "DATASETS.TEST",
        "()",  # no evaluation: only the weights are compared
        "OUTPUT_DIR",
        output_dir,
    ]
    return opts


def _cmd(script: str, output_dir: str, *extra: str) -> list[str]:
    cfg = config_path("quick_schedules/panoptic_fpn_synthetic.yaml")
    return [
        sys.executable,
        os.path.join(REPO, script),
        "--config-file",
        cfg,
        *extra,
        *_opts(output_dir),
    ]


def _final_weights(output_dir: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=True)["model"]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    # One thread each: the runs share 2 cores, and OpenMP oversubscription is 10x slower.
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    marker = str(tmp_path / "paused")
    logs = [open(tmp_path / f"{name}.log", "wb") for name in ("straight", "killed", "resumed")]
    run = subprocess.Popen(_cmd("train_net.py", straight), env=env, stdout=logs[0], stderr=logs[0])
    victim = subprocess.Popen(
        _cmd("tests/engine/resume_child.py", killed, "--pause-after", str(N // 2 - 1), marker),
        env=env,
        stdout=logs[1],
        stderr=logs[1],
    )
    deadline = time.time() + 200
    while not os.path.exists(marker):
        assert victim.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline, "the run to be killed never reached its pause"
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert open(os.path.join(killed, "last_checkpoint")).read() == f"model_{N // 2 - 1:07d}.pth"
    assert not os.path.exists(os.path.join(killed, "model_final.pth"))

    resumed = subprocess.run(
        _cmd("train_net.py", killed, "--resume"), env=env, stdout=logs[2], stderr=logs[2]
    )
    assert resumed.returncode == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert run.wait() == 0, (tmp_path / "straight.log").read_text()[-3000:]

    a, b = _final_weights(straight), _final_weights(killed)
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert not changed, f"{len(changed)} of {len(a)} tensors differ, e.g. {changed[:3]}"
    # The resumed run really continued from the checkpoint: it trained only the last N/2 steps.
    log = open(os.path.join(killed, "log.txt")).read()
    assert f"Starting training from iteration {N // 2}" in log
