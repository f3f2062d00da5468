#!/usr/bin/env python3
"""Benchmark FastPanopticEvaluator against detectron2's COCOPanopticEvaluator (panopticapi).

Ground truth: the built-in synthetic generator (default 500 images, 640x480; stuff bands with
wavy borders, occluding disks / boxes / triangles, crowds and void, so that label-map rows rarely
repeat, as in real data), plus a thing category that never occurs. Model-style predictions are
made from it (shifted, relabelled, dropped and spurious segments); the same predictions go to
both evaluators in one run (``--repeats`` interleaved runs of each, a fresh evaluator every
time); every PQ/SQ/RQ number must agree to 1e-9; the median wall-clock and CPU ratios are
printed::

    python -m dev.benchmark_pq --num-images 500 --height 480 --width 640 --workers 2

Both timings cover ``reset() + process() for every image + evaluate()``, i.e. what a
``DatasetEvaluator`` costs inside ``inference_on_dataset``. With ``--model-ms M`` both are also
run with M ms of simulated inference slept before each ``process()`` and the time each evaluator
adds on top is reported (the fast evaluator works in its threads while the model runs).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time

import numpy as np
from detectron2.evaluation import COCOPanopticEvaluator

from panoptic_ext.data.datasets.synthetic_predictions import (
    evaluate_pairs,
    make_benchmark_dataset,
)
from panoptic_ext.evaluation import FastPanopticEvaluator


def _cpu_seconds(start: bool) -> float:
    """CPU time of this process (all threads) and of its finished children (pq_compute's pool).

    panopticapi never closes its Pool: a garbage collection reaps the workers so that their
    time is counted. The collections' own time is left out of both readings.
    """
    if start:
        gc.collect()
    own = resource.getrusage(resource.RUSAGE_SELF)
    if not start:
        gc.collect()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_evaluator(
    evaluator, pairs: list[tuple[dict, dict]], model_seconds: float = 0.0, cpu: list | None = None
) -> tuple[dict, float]:
    """Seconds for reset + process(each) + evaluate, minus ``model_seconds`` of simulated model
    time slept (GIL released, like a forward pass) before each ``process``; and the results.
    The CPU seconds used are appended to ``cpu`` when given."""
    cpu_start = _cpu_seconds(start=True)
    start = time.perf_counter()
    sleep = (lambda: time.sleep(model_seconds)) if model_seconds else None
    res = evaluate_pairs(evaluator, pairs, before_each=sleep)
    wall = time.perf_counter() - start - model_seconds * len(pairs)
    if cpu is not None:
        cpu.append(_cpu_seconds(start=False) - cpu_start)
    return res, wall


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument(
        "--workers", type=int, default=2, help="TEST.PQ_WORKERS of the fast evaluator"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model-ms",
        type=float,
        default=0.0,
        help="also time both evaluators with this simulated inference time per image slept "
        "before each process() and report only the time they add to it",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs of both paths; medians reported"
    )
    return parser.parse_args()


def _evaluator(kind: str, workers: int):
    if kind == "fast":
        return FastPanopticEvaluator("bench_pq", num_workers=workers)
    return COCOPanopticEvaluator("bench_pq")


def _interleaved_runs(pairs: list, repeats: int, workers: int) -> list[dict[str, tuple]]:
    """Per repeat {kind: (results, wall s, CPU s)}, the order alternating between repeats so
    that both paths see the same load on a shared machine; a new evaluator every run."""
    rows = []
    for r in range(repeats):
        row = {}
        for kind in ("panopticapi", "fast") if r % 2 == 0 else ("fast", "panopticapi"):
            cpu: list[float] = []
            res, wall = run_evaluator(_evaluator(kind, workers), pairs, cpu=cpu)
            row[kind] = (res, wall, cpu[0])
        rows.append(row)
        ref, fast = row["panopticapi"], row["fast"]
        print(
            f"repeat {r + 1}/{repeats}: panopticapi {ref[1]:.2f}s wall {ref[2]:.2f}s CPU"
            f" | fast {fast[1]:.2f}s wall {fast[2]:.2f}s CPU"
            f" | ratio wall {ref[1] / fast[1]:.1f}x CPU {ref[2] / fast[2]:.1f}x"
        )
    return rows


def _report(rows: list[dict[str, tuple]], args: argparse.Namespace) -> float:
    """Print medians and ratios; return the largest PQ/SQ/RQ difference (percent)."""
    n = args.num_images

    def median(kind: str, item: int) -> float:
        return float(np.median([r[kind][item] for r in rows]))

    def ratio(item: int) -> float:
        return float(np.median([r["panopticapi"][item] / r["fast"][item] for r in rows]))

    ref, fast = rows[-1]["panopticapi"][0], rows[-1]["fast"][0]
    diff = max(
        abs(r["panopticapi"][0]["panoptic_seg"][k] - r["fast"][0]["panoptic_seg"][k])
        for r in rows
        for k in ref["panoptic_seg"]
    )
    ref_cpu, fast_cpu = median("panopticapi", 2), median("fast", 2)
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"panopticapi (COCOPanopticEvaluator, pq_compute on {os.cpu_count()} procs): median "
        f"{median('panopticapi', 1):.2f}s wall, {ref_cpu:.2f}s CPU "
        f"({1e3 * ref_cpu / n:.2f} ms CPU/image)"
    )
    print(
        f"fast (FastPanopticEvaluator, {args.workers} workers):                median "
        f"{median('fast', 1):.2f}s wall, {fast_cpu:.2f}s CPU "
        f"({1e3 * fast_cpu / n:.2f} ms CPU/image)"
    )
    print(
        f"speed-up, median of {len(rows)} interleaved repeats: wall {ratio(1):.1f}x, CPU seconds "
        f"(all threads and worker processes; less sensitive to a busy machine) {ratio(2):.1f}x"
    )
    print(f"max |difference| of PQ/SQ/RQ (percent) over all repeats: {diff:.2e}")
    for k, v in fast["panoptic_seg"].items():
        print(f"  {k:6s} {v:8.4f}  (panopticapi {ref['panoptic_seg'][k]:8.4f})")
    return diff


def main() -> None:
    args = _parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_pq") as root:
        t0 = time.perf_counter()
        pairs = make_benchmark_dataset(
            root, "bench_pq", args.num_images, args.height, args.width, args.seed
        )
        print(
            f"generated {args.num_images} images {args.width}x{args.height} "
            f"in {time.perf_counter() - t0:.1f}s"
        )
        rows = _interleaved_runs(pairs, args.repeats, args.workers)
        if args.model_ms:
            model_s = args.model_ms / 1000
            _, o_ref = run_evaluator(_evaluator("panopticapi", args.workers), pairs, model_s)
            _, o_fast = run_evaluator(_evaluator("fast", args.workers), pairs, model_s)
    diff = _report(rows, args)
    if args.model_ms:
        print(
            f"with {args.model_ms:g} ms of model time per image, evaluation adds "
            f"{o_ref:.2f}s (panopticapi) vs {max(o_fast, 1e-3):.2f}s (fast): "
            f"{o_ref / max(o_fast, 1e-3):.1f}x"
        )
    if diff > 1e-7:  # 1e-9 on the [0, 1] scale
        raise SystemExit("results differ")


if __name__ == "__main__":
    main()
