"""torchrun and SLURM ``srun`` start the same entry point as ``--num-gpus``.

The environment parsing is checked on the variables each launcher sets; two CPU processes under
``torchrun`` (and under an emulated two-task ``srun`` step) train, evaluate, and give the PQ that
one process computes on the same weights.
"""

import os
import re
import socket
import subprocess
import sys

import pytest
from helpers import REPO, TINY_OPTS, config_path, pq_in_process

from panoptic_ext.engine.distributed import ExternalLaunch, external_launch_from_env

CFG = config_path("quick_schedules/panoptic_fpn_synthetic.yaml")
ENV = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
for _key in [k for k in ENV if k.startswith("SLURM_") or k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")]:
    del ENV[_key]


def test_torchrun_environment():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "node0", "MASTER_PORT": "29511"}  # fmt: skip
    assert external_launch_from_env(env) == ExternalLaunch("torchrun", 3, 4, 1, 2, "node0", 29511)
    assert external_launch_from_env({}) is None


def test_srun_environment():
    env = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
           "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_STEP_NODELIST": "gpu[07-08],cpu1",
           "SLURM_JOB_ID": "123456"}  # fmt: skip
    placement = external_launch_from_env(env)
    assert placement == ExternalLaunch("slurm", 5, 8, 1, 4, "gpu07", 20000 + 123456 % 20000)
    # MASTER_ADDR / MASTER_PORT set by the user win.
    placement = external_launch_from_env({**env, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"})
    assert (placement.master_addr, placement.master_port) == ("10.0.0.1", 1234)
    # The batch script itself (no step) and a one-task step keep detectron2's own launch.
    assert external_launch_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) is None
    assert external_launch_from_env({**env, "SLURM_STEP_NUM_TASKS": "1"}) is None
    with pytest.raises(ValueError, match="same number of tasks"):
        external_launch_from_env({**env, "SLURM_STEP_TASKS_PER_NODE": "4,3"})
    with pytest.raises(ValueError, match="SLURM_PROCID='x'"):
        external_launch_from_env({**env, "SLURM_PROCID": "x"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _opts(output_dir: str, *extra) -> list[str]:
    opts = [*TINY_OPTS, "SOLVER.MAX_ITER", 3, "SEED", 5, "TEST.EVALUATORS", ("panoptic",)]
    return [str(v) for v in (*opts, *extra, "OUTPUT_DIR", output_dir)]


def _pq(output_dir: str) -> list[float]:
    text = open(os.path.join(output_dir, "log.txt")).read()
    found = re.search(r"copypaste: PQ,SQ,RQ.*\n.*copypaste: ([\d.,]+)", text)
    assert found, "no panoptic results in " + output_dir
    return [float(v) for v in found.group(1).split(",")]


def _run(cmd: list[str], log: str, env: dict) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, log: str) -> None:
    assert proc.wait(timeout=300) == 0, open(log).read()[-4000:]


def test_torchrun_trains_and_evaluates_like_one_process(tmp_path):
    out, log = str(tmp_path / "torchrun"), str(tmp_path / "torchrun.log")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "panoptic_ext.cli.train",
           "--config-file", CFG, *_opts(out)]  # fmt: skip
    _wait(_run(cmd, log, ENV), log)
    text = open(os.path.join(out, "log.txt")).read()
    assert "World size: 2" in text  # without the torchrun set-up: two runs of world size 1
    alone = pq_in_process(os.path.join(out, "model_final.pth"), *_opts(str(tmp_path / "one")))
    assert alone == _pq(out)[:6]


def test_srun_step_evaluates_like_one_process(tmp_path):
    """Two processes with the variables ``srun --ntasks 2`` sets (no SLURM here)."""
    train = str(tmp_path / "train")
    log = str(tmp_path / "train.log")
    _wait(
        _run([sys.executable, "train_net.py", "--config-file", CFG, *_opts(train)], log, ENV), log
    )
    weights = os.path.join(train, "model_final.pth")
    out, port = str(tmp_path / "srun"), _free_port()
    procs = []
    for rank in (0, 1):
        env = dict(ENV, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_STEP_NUM_TASKS="2",
                   SLURM_STEP_TASKS_PER_NODE="2", SLURM_STEP_NODELIST="127.0.0.1",
                   SLURM_JOB_ID="42", MASTER_PORT=str(port))  # fmt: skip
        cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CFG,
               "--eval-only", *_opts(out, "MODEL.WEIGHTS", weights)]  # fmt: skip
        procs.append((_run(cmd, str(tmp_path / f"rank{rank}.log"), env), rank))
    for proc, rank in procs:
        _wait(proc, str(tmp_path / f"rank{rank}.log"))
    assert "World size: 2" in open(os.path.join(out, "log.txt")).read()
    assert _pq(out) == _pq(train)
