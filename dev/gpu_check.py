#!/usr/bin/env python3
"""The prepared GPU check: CUDA tests, throughput, cost ratios and the quick schedules, in one run.

    python -m dev.gpu_check --out gpu_check_out                 # on a GPU, about 8 minutes
    python -m dev.gpu_check --tiny --device cpu --out /tmp/gc   # tiny sizes, any machine
    python -m dev.gpu_check --steps throughput,schedule_panet   # a subset (e.g. a rerun)

On the lent GPU machine (no registry, no detectron2 install) ``dev/gpu_check.sh`` sets up the
carried wheels and detectron2 source first; ``dev/prepare_gpu_carry.sh`` prepares them here.

Every step (see ``STEPS``) runs in its own process with a time limit cut to what
is left of ``--budget-s``, so a hung or crashed step (or a broken CUDA context) costs only that
step. After each step ``gpu_check.json`` and ``gpu_check.md`` are rewritten in ``--out`` (a run
killed from outside keeps what finished), and every step's output goes to ``gpu_check.log``.
A step passes when all its checks hold; goals (speed targets) are reported, never pass/fail.
Exit status: 0 when every step ran and passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import traceback

from dev.common import REPO
from dev.gpu_check_bench import panet_step, panoptic_fpn_step, throughput_step
from dev.gpu_check_steps import (
    CheckSettings,
    Step,
    StepResult,
    basic_environment,
    env_step,
    schedule_step,
    tests_step,
)

# In this order: quick and most telling first, the long schedules last (the budget cuts there).
# Times on a GPU: (upper limit, the least left to start the step), in seconds.
STEPS = [
    Step("env", "environment and device", env_step, 60, 5),
    Step("tests", "device tests (pytest -m devices)", tests_step, 180, 60),
    Step("throughput", "Panoptic FCN R50 1x inference img/s", throughput_step, 120, 30),
    Step("panoptic_fpn_vs_detectron2", "Panoptic FPN vs detectron2's", panoptic_fpn_step, 90, 20),
    Step("panet_vs_mask_rcnn", "PANet neck / full vs Mask R-CNN", panet_step, 120, 30),
] + [
    Step(f"schedule_{name}", f"quick schedule: {title}", schedule_step(name), limit, need)
    for name, title, limit, need in (
        ("semantic_fpn", "Semantic FPN", 120, 20),
        ("panoptic_fpn", "Panoptic FPN", 240, 60),
        ("panoptic_fcn", "Panoptic FCN", 240, 60),
        ("panet", "PANet", 300, 80),
    )
]

SUMMARY_JSON, SUMMARY_MD, LOG = "gpu_check.json", "gpu_check.md", "gpu_check.log"
# Passed to every step process: this checkout first, then whatever the caller had.
CHILD_PATH = os.pathsep.join([REPO, *filter(None, [os.environ.get("PYTHONPATH")])])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu_check_out", help="folder of the summary and log")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU test in CI)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget")
    parser.add_argument("--steps", default="", help="comma-separated subset of: " + _names())
    parser.add_argument(
        "--isolation",
        choices=("process", "none"),
        default="process",
        help="one process per step (default) or all steps in this process",
    )
    parser.add_argument("--workers", type=int, default=4, help="data-loader workers (schedules)")
    parser.add_argument(
        "--step-limit-s", type=float, default=None, help="cap on every step's own time limit"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # run one step, write --result
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--child-limit-s", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.steps.split(","))) - {s.name for s in STEPS}
    if unknown:
        parser.error(f"unknown --steps {sorted(unknown)}; known: {_names()}")
    if args.budget_s <= 0 or args.workers < 0 or (args.step_limit_s or 1) <= 0:
        parser.error("--budget-s and --step-limit-s must be > 0, --workers >= 0")
    return args


def _names() -> str:
    return ", ".join(s.name for s in STEPS)


def settings_from(args: argparse.Namespace) -> CheckSettings:
    return CheckSettings(
        device=args.device,
        tiny=args.tiny,
        out_dir=os.path.abspath(args.out),
        workers=args.workers,
        time_limit_s=args.child_limit_s,
    )


def settings_argv(args: argparse.Namespace) -> list[str]:
    """The options that make a step process see the same settings."""
    argv = ["--out", args.out, "--device", args.device, "--workers", str(args.workers)]
    return argv + (["--tiny"] if args.tiny else [])


def run_in_process(step: Step, settings: CheckSettings) -> StepResult:
    """Run ``step`` here; an exception becomes an "error" result naming it."""
    start = time.perf_counter()
    try:
        result = step.run(settings)
    except Exception as e:  # noqa: BLE001  (a step's failure is a result, not the end)
        result = StepResult(step.name, step.title, status="error")
        result.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
    result.wall_s = round(time.perf_counter() - start, 2)
    _free_device_memory()
    return result


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_in_child(step: Step, args: argparse.Namespace, limit_s: float, log) -> StepResult:
    """Run ``step`` in a fresh process killed (with its data-loader workers) after ``limit_s``."""
    result_file = os.path.join(settings_from(args).work_dir, f"{step.name}.result.json")
    if os.path.exists(result_file):
        os.remove(result_file)
    cmd = [sys.executable, "-m", "dev.gpu_check", *settings_argv(args)]
    cmd += ["--child", step.name, "--result", result_file, "--child-limit-s", str(limit_s)]
    env = dict(os.environ, PYTHONPATH=CHILD_PATH, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        code = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    wall = round(time.perf_counter() - start, 2)
    if code is None:
        result = StepResult(step.name, step.title, status="timeout")
        result.error = f"killed after its time limit of {limit_s:.1f} s"
    elif os.path.exists(result_file):
        with open(result_file) as f:
            result = StepResult.from_json(json.load(f))
        os.remove(result_file)
    else:
        result = StepResult(step.name, step.title, status="error")
        result.error = f"the step process exited with status {code} without a result (see {LOG})"
    result.wall_s = wall
    return result


def child_main(args: argparse.Namespace) -> int:
    """Inside a step process: run the step, write its result for the parent."""
    step = next(s for s in STEPS if s.name == args.child)
    result = run_in_process(step, settings_from(args))
    with open(args.result, "w") as f:
        json.dump(result.to_json(), f)
    return 0


def overall_status(results: list[StepResult]) -> str:
    """ "pass" (every step ran and passed), "incomplete" (none failed, some not run) or "fail"."""
    if any(r.status not in ("pass", "skipped") for r in results):
        return "fail"
    return "pass" if all(r.status == "pass" for r in results) else "incomplete"


def write_summary(out_dir: str, header: dict, results: list[StepResult]) -> dict:
    """Write gpu_check.json and gpu_check.md; return the JSON document."""
    doc = dict(header, status=overall_status(results), steps=[r.to_json() for r in results])
    doc["wall_s"] = round(sum(r.wall_s for r in results), 1)
    with open(os.path.join(out_dir, SUMMARY_JSON), "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(out_dir, SUMMARY_MD), "w") as f:
        f.write(format_markdown(doc))
    return doc


def format_markdown(doc: dict) -> str:
    """The summary as markdown: one overview table, then each step's figures and checks."""
    env = doc.get("environment", {})
    lines = [
        f"# panoptic_ext GPU check: {doc['status']}",
        "",
        f"- device: {env.get('device_name', '?')}; torch {env.get('torch', '?')}, "
        f"CUDA {env.get('cuda', '-')}, cuDNN {env.get('cudnn', '-')}, "
        f"torchvision {env.get('torchvision', '?')}, Python {env.get('python', '?')}",
        f"- command: `{doc['command']}` ({'tiny' if doc['tiny'] else 'full'} sizes), "
        f"started {doc['started']}, {doc['wall_s']} s of steps",
        "",
        "| step | status | wall (s) | summary |",
        "|---|---|---|---|",
    ]
    for s in doc["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['wall_s']} | {s['summary']} |")
    for s in doc["steps"]:
        lines += ["", f"## {s['name']}: {s['title']}", ""]
        if s["error"]:
            lines += ["```", s["error"].strip(), "```"]
        for table in s["tables"]:
            lines += [table, ""]
        for c in s["checks"]:
            lines.append(f"- [{'x' if c['ok'] else ' '}] {c['what']}: {c['detail']}")
        for g in s["goals"]:
            met = {True: "met", False: "not met", None: "not applicable here"}[g["met"]]
            lines.append(f"- goal {g['what']}: {g['target']}, measured {g['value']} ({met})")
    return "\n".join(lines) + "\n"


def run_step(step: Step, args: argparse.Namespace, left_s: float, log) -> StepResult:
    """Run one step in the chosen isolation, or skip it when less than it needs is left."""
    settings = settings_from(args)
    if left_s < step.min_s(settings):
        result = StepResult(step.name, step.title, status="skipped")
        result.error = f"{left_s:.0f} s left of --budget-s, it needs {step.min_s(settings):.0f} s"
        return result
    if args.isolation == "process":
        limit = min(left_s, step.max_s(settings), args.step_limit_s or float("inf"))
        return run_in_child(step, args, limit, log)
    return run_in_process(step, settings)  # its output goes to this process's console


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    os.makedirs(args.out, exist_ok=True)
    wanted = set(filter(None, args.steps.split(","))) or {s.name for s in STEPS}
    header = {
        "check": "panoptic_ext GPU check",
        "command": " ".join(["python", "-m", "dev.gpu_check", *(argv or sys.argv[1:])]),
        "tiny": args.tiny,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": basic_environment(),
    }
    results: list[StepResult] = []
    deadline = time.monotonic() + args.budget_s
    with open(os.path.join(args.out, LOG), "a") as log:
        for step in (s for s in STEPS if s.name in wanted):
            left = deadline - time.monotonic()
            print(f"[gpu_check] {step.name}: {step.title} ({left:.0f} s left)", flush=True)
            log.write(f"\n===== {step.name}: {step.title} =====\n")
            log.flush()
            result = run_step(step, args, left, log)
            if step.name == "env":
                header["environment"].update(result.figures)
            results.append(result)
            doc = write_summary(args.out, header, results)
            print(f"[gpu_check] {step.name}: {result.status} ({result.wall_s} s) {result.summary}")
    print(format_markdown(doc), flush=True)
    return 0 if doc["status"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
