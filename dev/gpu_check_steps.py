"""Steps of ``dev/gpu_check.py``: result types, the environment, the device tests, the schedules.

A step is a function ``(CheckSettings) -> StepResult``. It records *checks* (assertions: any that
fails makes the step fail), *goals* (speed targets, reported only) and *figures* (measurements,
written to the JSON summary). The throughput and cost steps are in ``gpu_check_bench.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

from dev.common import REPO

STATUSES = ("pass", "fail", "error", "timeout", "skipped")


@dataclass(frozen=True)
class CheckSettings:
    """What every step needs to know (the same in the parent and in each step process)."""

    device: str  # "cuda" or "cpu"
    tiny: bool  # tiny sizes and 1-2 iterations (the CPU test in CI)
    out_dir: str  # summary and log
    workers: int  # data-loader workers of the quick schedules
    time_limit_s: float | None = None  # when this step's process is killed (None: no limit)

    @property
    def work_dir(self) -> str:
        """Scratch space (training outputs, pytest reports), outside ``out_dir``."""
        path = os.path.join(tempfile.gettempdir(), "panoptic_ext_gpu_check")
        os.makedirs(path, exist_ok=True)
        return path


@dataclass
class Check:
    what: str
    ok: bool
    detail: str


@dataclass
class Goal:
    what: str
    target: str
    value: str
    met: bool | None  # None: the goal is not defined for this device


@dataclass
class StepResult:
    name: str
    title: str
    status: str = "pass"
    wall_s: float = 0.0
    summary: str = ""
    error: str = ""
    figures: dict = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)  # markdown tables for the summary
    checks: list[Check] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        """Record an assertion; a false one fails the step (the step goes on)."""
        self.checks.append(Check(what, bool(ok), detail))
        if not ok and self.status == "pass":
            self.status = "fail"
        return bool(ok)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> StepResult:
        doc = dict(doc)
        doc["checks"] = [Check(**c) for c in doc.get("checks", [])]
        doc["goals"] = [Goal(**g) for g in doc.get("goals", [])]
        if doc.get("status") not in STATUSES:
            raise ValueError(f"step result with unknown status {doc.get('status')!r}")
        return cls(**doc)


@dataclass(frozen=True)
class Step:
    """A named step, its run function and its time limits (seconds) in full and tiny mode."""

    name: str
    title: str
    run: Callable[[CheckSettings], StepResult]
    full_s: float  # upper limit on a GPU (killed past it)
    need_s: float  # not started with less left (expected time on an H100/H200)
    tiny_s: float = 120.0

    def max_s(self, settings: CheckSettings) -> float:
        return self.tiny_s if settings.tiny else self.full_s

    def min_s(self, settings: CheckSettings) -> float:
        return 1.0 if settings.tiny else self.need_s


def finite(*values: float) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


# ---------------------------------------------------------------------------------------------
# env: versions, the device, a computation on it, our registered components


def basic_environment() -> dict:
    """Versions that need no device (safe in the parent process: CUDA is not initialised)."""
    import detectron2
    import torch
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda or "-",
        "cudnn": str(torch.backends.cudnn.version())
        if torch.backends.cudnn.is_available()
        else "-",
        "detectron2": f"{detectron2.__version__} ({os.path.dirname(detectron2.__file__)})",
        "detectron2_compiled_ops": importlib.util.find_spec("detectron2._C") is not None,
        "setuptools": _version("setuptools"),  # detectron2.model_zoo needs its pkg_resources
        "cpu_count": os.cpu_count(),
    }


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _driver_version() -> str:
    if not shutil.which("nvidia-smi"):
        return "-"
    cmd = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return proc.stdout.strip() or "-"


def env_step(settings: CheckSettings) -> StepResult:
    import torch

    result = StepResult("env", "environment and device")
    fig = basic_environment()
    if settings.device == "cuda":
        if not result.check("CUDA is available", torch.cuda.is_available(), torch.version.cuda):
            result.figures = fig
            return result
        props = torch.cuda.get_device_properties(0)
        fig.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            driver=_driver_version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
            nccl_available=torch.distributed.is_nccl_available(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
        result.check("NCCL is available", fig["nccl_available"])
    else:
        fig.update(device_name=f"CPU ({platform.machine()})", threads=torch.get_num_threads())
    a = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    want = (a.double() @ a.double()).float()
    got = (a.to(settings.device) @ a.to(settings.device)).cpu()
    err = float((got - want).abs().max() / want.abs().max())
    result.check("a matmul on the device matches float64", err < 1e-3, f"relative error {err:.1e}")
    result.check(*_registered_components())
    result.check(*_one_rank_all_reduce(settings.device))
    result.figures = fig
    result.summary = f"{fig['device_name']}, torch {fig['torch']}, CUDA {fig['cuda']}"
    return result


def _one_rank_all_reduce(device: str) -> tuple[str, bool, str]:
    """A one-process group (NCCL on CUDA, gloo on CPU) all-reduces a tensor: the library loads
    and runs here. (DDP needs two processes; with one GPU, detectron2 trains without it.)"""
    import torch
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        x = torch.arange(4.0, device=device)
        dist.all_reduce(x)
        ok = x.tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        dist.destroy_process_group()
    return f"{backend} all_reduce in a one-process group", ok, backend


def _registered_components() -> tuple[str, bool, str]:
    import detectron2.modeling as m

    import panoptic_ext  # noqa: F401  (registers)

    names = [
        (m.META_ARCH_REGISTRY, "PanopticFCN"),
        (m.BACKBONE_REGISTRY, "build_resnet_pafpn_backbone"),
        (m.ROI_HEADS_REGISTRY, "PANetROIHeads"),
        (m.SEM_SEG_HEADS_REGISTRY, "SemanticFPNHead"),
    ]
    missing = [n for reg, n in names if n not in reg]
    return "our components are registered", not missing, f"missing: {missing}" if missing else ""


# ---------------------------------------------------------------------------------------------
# tests: the device-parametrized tests (marker "devices"; the CUDA variants carry "cuda")

# In tiny mode, one fast CPU variant: proves the runner and the report parsing, not the tests
# (CI runs the whole suite anyway).
TINY_TEST_FILTER = "sparse_roi_align_backward"


def tests_step(settings: CheckSettings) -> StepResult:
    result = StepResult("tests", f"device tests on {settings.device} (pytest -m devices)")
    junit = os.path.join(settings.work_dir, "pytest_devices.xml")
    if os.path.exists(junit):
        os.remove(junit)
    marker = "devices and cuda" if settings.device == "cuda" else "devices and not cuda"
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", marker]
    # A test module that cannot be imported here is reported; the others still run.
    cmd += ["--continue-on-collection-errors", "--junitxml", junit, os.path.join(REPO, "tests")]
    if settings.tiny:
        cmd += ["-k", TINY_TEST_FILTER]
    # Deterministic cuBLAS needs this before the first cuBLAS call of the process.
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8")
    # Stop pytest before this step is killed, so the tests that ran are still reported.
    limit = settings.time_limit_s - 20 if settings.time_limit_s else None
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        output, code = _text(e.stdout) + _text(e.stderr), None
    print(output[-40000:], flush=True)
    counts, failed = parse_junit(junit) if code is not None else parse_verbose(output)
    ran = counts["tests"] - counts["skipped"]
    result.figures = dict(counts, ran=ran, failed_tests=failed, exit_code=code)
    result.check("pytest finished in time, exit status 0", code == 0, f"exit {code}")
    result.check("at least one test ran", ran > 0, f"{ran} of {counts['tests']} ran")
    result.check("no failures or errors", not failed, ", ".join(failed[:20]))
    result.summary = f"{ran} ran, {len(failed)} failed, {counts['skipped']} skipped"
    return result


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def parse_verbose(output: str) -> tuple[dict, list[str]]:
    """Counts and failed test ids from ``pytest -v`` lines (a run stopped before its report)."""
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for found in re.finditer(
        r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", output, re.M
    ):
        test, outcome = found.groups()
        counts["tests"] += 1
        counts["skipped"] += outcome == "SKIPPED"
        if outcome in ("FAILED", "ERROR"):
            counts["failures" if outcome == "FAILED" else "errors"] += 1
            failed.append(test)
    return counts, failed


def parse_junit(path: str) -> tuple[dict, list[str]]:
    """Counts (tests, failures, errors, skipped) and the failed test ids of a junit report."""
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if not os.path.isfile(path):
        return counts, ["(no junit report: pytest did not run)"]
    failed = []
    for case in ET.parse(path).getroot().iter("testcase"):
        counts["tests"] += 1
        kinds = {child.tag for child in case}
        if "skipped" in kinds:
            counts["skipped"] += 1
        for kind, key in (("failure", "failures"), ("error", "errors")):
            if kind in kinds:
                counts[key] += 1
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    return counts, failed


# ---------------------------------------------------------------------------------------------
# schedule_*: the quick schedules, trained and evaluated as train_net.py does


@dataclass(frozen=True)
class Schedule:
    config: str  # relative to configs/
    task: str  # results key of the main metric ("panoptic_seg" or "sem_seg")
    metric: str  # "PQ" or "mIoU"
    floor: float  # full mode: the main metric must reach it


# Floors: the 2-core CPU figures of the README (PQ 91.5 / 90.4 / 71.4, mIoU 97.0) less a margin
# for GPU numerics and schedule tuning. A broken CUDA path lands far below them.
SCHEDULES = {
    "semantic_fpn": Schedule("quick_schedules/semantic_fpn_synthetic.yaml", "sem_seg", "mIoU", 85),
    "panoptic_fpn": Schedule(
        "quick_schedules/panoptic_fpn_synthetic.yaml", "panoptic_seg", "PQ", 75
    ),
    "panoptic_fcn": Schedule(
        "quick_schedules/panoptic_fcn_synthetic.yaml", "panoptic_seg", "PQ", 55
    ),
    "panet": Schedule("quick_schedules/panet_synthetic.yaml", "panoptic_seg", "PQ", 75),
}
# Tiny mode: the tests' 64 px synthetic split (same cache), 2 iterations, 4 val images.
TINY_SCHEDULE_OPTS = [
    *("DATASETS.SYNTHETIC.IMAGE_SIZE", 64, "DATASETS.SYNTHETIC.NUM_TRAIN", 8),
    *("DATASETS.SYNTHETIC.NUM_VAL", 4, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 2),
    *("INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64),
    *("INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64),
]
# Results keys reported for every schedule (task, metric).
REPORTED = [("panoptic_seg", k) for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")] + [
    ("bbox", "AP"),
    ("segm", "AP"),
    ("sem_seg", "mIoU"),
]


def schedule_step(name: str) -> Callable[[CheckSettings], StepResult]:
    schedule = SCHEDULES[name]

    def run(settings: CheckSettings) -> StepResult:
        return train_schedule(name, schedule, settings)

    return run


def train_schedule(name: str, schedule: Schedule, settings: CheckSettings) -> StepResult:
    from panoptic_ext.engine.launch import main as train_main

    result = StepResult(f"schedule_{name}", f"quick schedule {schedule.config}")
    out = os.path.join(settings.work_dir, f"schedule_{name}")
    shutil.rmtree(out, ignore_errors=True)
    opts = ["OUTPUT_DIR", out, "MODEL.DEVICE", settings.device]
    opts += ["DATALOADER.NUM_WORKERS", settings.workers]
    opts += TINY_SCHEDULE_OPTS if settings.tiny else []
    args = argparse.Namespace(
        config_file=os.path.join(REPO, "configs", schedule.config),
        opts=[str(o) for o in opts],
        eval_only=False,
        resume=False,
        num_gpus=1,
    )
    _generate_data(args)
    start = time.perf_counter()
    results = train_main(args)
    wall = time.perf_counter() - start  # training + evaluation, the data already on disk
    fig = {
        f"{task}.{key}": round(results[task][key], 2)
        for task, key in REPORTED
        if key in results.get(task, {})
    }
    fig.update(wall_s=round(wall, 1), **_iteration_times(out))
    result.figures = fig
    main_value = results.get(schedule.task, {}).get(schedule.metric, float("nan"))
    result.check(
        f"{schedule.metric} is a number in [0, 100]",
        finite(main_value) and 0 <= main_value <= 100,
        str(main_value),
    )
    if not settings.tiny:
        result.check(
            f"{schedule.metric} >= {schedule.floor}",
            main_value >= schedule.floor,
            f"{main_value:.2f}",
        )
    result.summary = f"{schedule.metric} {main_value:.1f}, {wall:.0f} s"
    result.tables.append(markdown_table(list(fig), [list(fig.values())]))
    return result


def _generate_data(args: argparse.Namespace) -> None:
    """Write the config's synthetic splits (cached on disk) before the timed run."""
    from detectron2.data import DatasetCatalog

    from panoptic_ext.config import build_cfg
    from panoptic_ext.data.datasets import register_synthetic_datasets

    cfg = build_cfg(args.config_file, args.opts)
    spec = cfg.DATASETS.SYNTHETIC
    register_synthetic_datasets(spec.IMAGE_SIZE, spec.NUM_TRAIN, spec.NUM_VAL, spec.SEED)
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        DatasetCatalog.get(name)


def _iteration_times(output_dir: str) -> dict:
    """Iterations run and the median seconds per iteration from detectron2's metrics.json."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    train_rows = [r for r in rows if "total_loss" in r]  # evaluation rows have no loss
    times = [r["time"] for r in train_rows if "time" in r]
    iters = max((r["iteration"] for r in train_rows), default=-1) + 1
    return {
        "iterations": iters,
        "s_per_iter": round(statistics.median(times), 4) if times else None,
    }
