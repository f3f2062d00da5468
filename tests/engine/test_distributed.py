"""Distributed runs on CPU (gloo): ``--num-gpus 2`` training and 2-"machine" evaluation.

Both go through ``train_net.py`` exactly as a user runs them; the PQ gathered across ranks
must equal the PQ of a single process evaluating the same weights.
"""

import itertools
import os
import re
import socket
import subprocess
import sys
from datetime import timedelta

import torch
from detectron2.engine import SimpleTrainer, launch
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from helpers import REPO, TINY_OPTS, config_path, pq_in_process

from panoptic_ext.engine import wrap_ddp
from panoptic_ext.engine.distributed import leave_process_group
from panoptic_ext.engine.hooks import NanGuardHook

CFG = config_path("quick_schedules/panoptic_fpn_synthetic.yaml")
# One thread per process: up to 3 processes share 2 cores here.
ENV = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")


def _free_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _opts(output_dir: str, *extra) -> list[str]:
    opts = [*TINY_OPTS, "SOLVER.MAX_ITER", 3, "SEED", 5, "TEST.EVALUATORS", ("panoptic",)]
    return [str(v) for v in (*opts, *extra, "OUTPUT_DIR", output_dir)]


def _train_net(*args: str, log: str) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CFG, *args],
            env=ENV,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def _wait(proc: subprocess.Popen, log: str) -> None:
    assert proc.wait(timeout=300) == 0, open(log).read()[-4000:]


def _pq(output_dir: str) -> list[float]:
    """The panoptic copypaste row (PQ, SQ, RQ, PQ_th, ...) of the run's log."""
    text = open(os.path.join(output_dir, "log.txt")).read()
    found = re.search(r"copypaste: PQ,SQ,RQ.*\n.*copypaste: ([\d.,]+)", text)
    assert found, "no panoptic results in " + output_dir
    return [float(v) for v in found.group(1).split(",")]


def test_two_process_training_and_gathered_evaluation_match_one_process(tmp_path):
    train_dir = str(tmp_path / "train")
    log = str(tmp_path / "train.log")
    _wait(_train_net("--num-gpus", "2", "--dist-url", _free_url(), *_opts(train_dir), log=log), log)
    assert "World size: 2" in open(os.path.join(train_dir, "log.txt")).read()
    weights = os.path.join(train_dir, "model_final.pth")

    # Two "machines" of one process each evaluate the same weights...
    multi_dir, url = str(tmp_path / "multi"), _free_url()
    machines = [
        _train_net(
            "--eval-only",
            "--num-gpus",
            "1",
            "--num-machines",
            "2",
            "--machine-rank",
            str(rank),
            "--dist-url",
            url,
            *_opts(multi_dir, "MODEL.WEIGHTS", weights),
            log=str(tmp_path / f"machine{rank}.log"),
        )
        for rank in (0, 1)
    ]
    # ... while this process evaluates them alone (in-process: one start-up less).
    alone = pq_in_process(weights, *_opts(str(tmp_path / "one")))
    for rank, proc in enumerate(machines):
        _wait(proc, str(tmp_path / f"machine{rank}.log"))
    assert "World size: 2" in open(os.path.join(multi_dir, "log.txt")).read()

    trained, gathered = _pq(train_dir), _pq(multi_dir)
    assert gathered == trained
    assert alone == trained[:6]
    assert alone[0] > 0  # a real PQ: stuff segments are matched after 3 iterations


class _NanOnRankOne(torch.nn.Module):
    """``loss_mask`` is NaN on rank 1 only, at iteration 2."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4))

    def forward(self, batch):
        bad = get_event_storage().iter == 2 and comm.get_rank() == 1
        return {
            "loss_cls": (self.weight**2).sum(),
            "loss_mask": self.weight.sum() * (float("nan") if bad else 0.1),
        }


def _nan_worker(out_dir: str) -> None:
    model = wrap_ddp(_NanOnRankOne())
    trainer = SimpleTrainer(model, itertools.repeat([{}]), torch.optim.SGD(model.parameters(), 0.1))
    trainer.register_hooks([NanGuardHook()])
    try:
        trainer.train(0, 5)
    except FloatingPointError as e:
        with open(os.path.join(out_dir, f"rank{comm.get_rank()}.txt"), "w") as f:
            f.write(str(e))
    leave_process_group()


def test_nan_on_one_rank_stops_every_rank(tmp_path):
    """Without agreement, rank 0 would wait in the next all-reduce until the timeout."""
    launch(
        _nan_worker, 2, dist_url=_free_url(), args=(str(tmp_path),), timeout=timedelta(seconds=60)
    )
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    assert "iteration 2 on rank 1: loss_mask=nan" in rank1
    assert "iteration 2 on another rank than 0" in rank0


def _leave_worker(out_dir: str) -> None:
    rank = comm.get_rank()
    comm.all_gather(rank)  # creates detectron2's cached gloo group
    leave_process_group()
    state = (torch.distributed.is_initialized(), comm._LOCAL_PROCESS_GROUP is None)
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(repr(state))
    leave_process_group()  # a second call is a no-op


def test_leave_process_group_drops_every_group(tmp_path):
    """What train_net's workers run last: no group left alive for interpreter shutdown."""
    launch(
        _leave_worker, 2, dist_url=_free_url(), args=(str(tmp_path),), timeout=timedelta(seconds=60)
    )
    for r in (0, 1):
        assert (tmp_path / f"rank{r}.txt").read_text() == "(False, True)"
