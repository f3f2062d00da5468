"""Start-up of processes that another launcher already started: ``torchrun`` and SLURM ``srun``.

detectron2's ``launch`` spawns one process per GPU itself. Under ``torchrun`` (or
``python -m torch.distributed.run``) and under ``srun`` with several tasks, the processes exist
already and only need the process group that ``launch`` would have made: this module reads the
launcher's environment, initialises ``torch.distributed`` with ``env://`` and creates
detectron2's per-machine group, so ``comm.get_local_rank()`` and the trainer behave as under
``launch``.
"""

from __future__ import annotations

import gc
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

__all__ = [
    "ExternalLaunch",
    "external_launch_from_env",
    "leave_process_group",
    "run_external_worker",
]

logger = logging.getLogger(__name__)

# srun gives no rendezvous port: every task derives the same one from the job id.
_SLURM_PORT_BASE, _SLURM_PORT_RANGE = 20000, 20000


@dataclass(frozen=True)
class ExternalLaunch:
    """Where this process sits in a job started by torchrun or srun."""

    source: str  # "torchrun" or "slurm"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError as e:
        raise ValueError(f"environment variable {key}={env[key]!r} is not an integer") from e


def _int_or(env: Mapping[str, str], key: str, default: int) -> int:
    return _int(env, key) if key in env else default


def _first_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``"gpu[03-05,07],cpu1"`` -> ``"gpu03"``."""
    first = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not first:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = first.groups()
    return prefix + (re.split(r"[-,]", ranges)[0] if ranges else "")


def _tasks_per_node(value: str) -> int:
    """``SLURM_STEP_TASKS_PER_NODE`` such as ``"4(x2)"``; unequal counts (``"4,3"``) refused."""
    counts = {int(m) for m in re.findall(r"(\d+)(?:\(x\d+\))?", value)}
    if len(counts) != 1:
        raise ValueError(
            f"SLURM_STEP_TASKS_PER_NODE={value!r}: every node needs the same number of tasks "
            "(one per GPU)"
        )
    return counts.pop()


def _from_torchrun(env: Mapping[str, str]) -> ExternalLaunch:
    world_size = _int(env, "WORLD_SIZE")
    return ExternalLaunch(
        source="torchrun",
        rank=_int(env, "RANK"),
        world_size=world_size,
        local_rank=_int(env, "LOCAL_RANK"),
        # Older launchers (torch.distributed.launch --use_env) set no LOCAL_WORLD_SIZE: one machine.
        local_world_size=_int_or(env, "LOCAL_WORLD_SIZE", world_size),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int_or(env, "MASTER_PORT", 29500),
    )


def _from_slurm(env: Mapping[str, str]) -> ExternalLaunch:
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "127.0.0.1")
    port = env.get("MASTER_PORT")
    return ExternalLaunch(
        source="slurm",
        rank=_int(env, "SLURM_PROCID"),
        world_size=_int(env, "SLURM_STEP_NUM_TASKS"),
        local_rank=_int(env, "SLURM_LOCALID"),
        local_world_size=_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", "1")),
        master_addr=env.get("MASTER_ADDR") or _first_host(nodelist),
        master_port=int(port)
        if port
        else _SLURM_PORT_BASE + _int(env, "SLURM_JOB_ID") % _SLURM_PORT_RANGE,
    )


def external_launch_from_env(env: Mapping[str, str] | None = None) -> ExternalLaunch | None:
    """The torchrun or srun placement of this process, or None when it was started alone.

    torchrun is recognised by ``LOCAL_RANK`` + ``WORLD_SIZE`` + ``RANK``; an ``srun`` step by
    ``SLURM_PROCID`` + ``SLURM_STEP_NUM_TASKS`` > 1 (a batch script itself, or a one-task step
    that spawns its workers with ``--num-gpus``, keeps detectron2's own launch).
    """
    env = os.environ if env is None else env
    if all(k in env for k in ("LOCAL_RANK", "WORLD_SIZE", "RANK")):
        return _from_torchrun(env)
    if "SLURM_PROCID" in env and _int_or(env, "SLURM_STEP_NUM_TASKS", 1) > 1:
        return _from_slurm(env)
    return None


def run_external_worker(
    main_func: Callable,
    placement: ExternalLaunch,
    args: tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
):
    """Join the job described by ``placement`` and call ``main_func(*args)`` in it.

    The same set-up as detectron2's ``launch`` worker: NCCL on GPU, gloo on CPU, detectron2's
    per-machine process group, the process's GPU selected by its local rank.
    """
    if placement.world_size % placement.local_world_size:
        raise ValueError(
            f"{placement.source}: world size {placement.world_size} is not a multiple of "
            f"{placement.local_world_size} processes per machine"
        )
    has_gpu = torch.cuda.is_available()
    if has_gpu and placement.local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"{placement.source}: local rank {placement.local_rank} but only "
            f"{torch.cuda.device_count()} GPUs are visible on this machine"
        )
    os.environ.setdefault("MASTER_ADDR", placement.master_addr)
    os.environ.setdefault("MASTER_PORT", str(placement.master_port))
    logger.info("%s job: rank %d of %d", placement.source, placement.rank, placement.world_size)
    dist.init_process_group(
        backend="nccl" if has_gpu else "gloo",
        init_method="env://",
        world_size=placement.world_size,
        rank=placement.rank,
        timeout=timeout,
    )
    try:
        comm.create_local_process_group(placement.local_world_size)
        if has_gpu:
            torch.cuda.set_device(placement.local_rank)
        comm.synchronize()
        result = main_func(*args)
        leave_process_group()
        return result
    finally:
        if dist.is_initialized():  # main_func raised: no barrier, the peers may be gone
            dist.destroy_process_group()


def leave_process_group() -> None:
    """End this process's part of the job cleanly: a barrier, every process group destroyed,
    and detectron2's references to its groups dropped.

    detectron2's ``launch`` returns from its workers with the groups alive (the default group,
    ``comm``'s per-machine group and the cached gloo group of ``comm.all_gather``). A worker
    exiting like that sometimes aborted in gloo's destructors during interpreter shutdown
    ("terminate called without an active exception", SIGABRT), so the job failed after its
    work was done. Measured with a two-process CPU launch of the OUTPUT_DIR claim: 3 of 40
    aborted as detectron2 leaves them; 7 of 180 with only the barrier and
    ``destroy_process_group`` (the Python objects of the groups still die at shutdown); 0 of
    120 with the references dropped and collected here. No-op outside a distributed job.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    comm.synchronize()
    dist.destroy_process_group()
    # detectron2 keeps the group objects in a module global and two lru_caches.
    comm._LOCAL_PROCESS_GROUP = None
    for cached in ("create_local_process_group", "_get_global_gloo_group"):
        fn = getattr(comm, cached, None)
        if hasattr(fn, "cache_clear"):
            fn.cache_clear()
    gc.collect()
