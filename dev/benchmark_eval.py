#!/usr/bin/env python3
"""Benchmark the whole evaluation phase (PQ + box/mask AP + mIoU): our evaluators (as the trainer
builds them from the config) against detectron2's defaults (``COCOPanopticEvaluator``,
``COCOEvaluator`` with its ``COCOeval_opt``, ``SemSegEvaluator``), on the same predictions.

    python -m dev.benchmark_eval --num-images 300 --image-size 512 --detections 50 --repeats 3

Ground truth: the synthetic generator at ``--image-size`` (panoptic PNGs + JSON, things-as-one
semantic PNGs, instances JSON). Predictions: per image, a model-like output made from the ground
truth (shifted by a few pixels, 10 % of segments missed, 10 % of things relabelled) for every
head: ``panoptic_seg``, ``instances`` (the things plus spurious low-score detections up to
``--detections`` per image, with masks) and ``sem_seg`` logits. They are regenerated from a
fixed seed for every run, outside the timed region, so both sides see identical inputs.

Timed per run (a fresh evaluator set each time, ``--repeats`` runs of each side interleaved):
construction + ``reset()`` + ``process()`` of every image + ``evaluate()``, wall and CPU
(user + sys of this process and its children), in total and per evaluator. The numbers of both
sides are compared key by key and the largest difference is printed. Prints ``uptime`` too: the
machine may be shared, so compare ratios from the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    SemSegEvaluator,
)

from dev.common import config_path
from panoptic_ext.config import build_cfg
from panoptic_ext.data.datasets import register_synthetic_datasets
from panoptic_ext.data.datasets.synthetic_predictions import predictions_from_ground_truth
from panoptic_ext.engine.evaluator_table import build_evaluators

DATASET = "synthetic_panoptic_val"
CONFIG = config_path("quick_schedules/panoptic_fpn_synthetic.yaml")


def detectron2_evaluators(name: str, output_dir: str) -> list[DatasetEvaluator]:
    """What detectron2 evaluates a panoptic dataset with by default (its train_net.py)."""
    return [
        COCOPanopticEvaluator(name, output_dir),
        COCOEvaluator(name, tasks=("bbox", "segm"), output_dir=output_dir),
        SemSegEvaluator(name, distributed=True, output_dir=output_dir),
    ]


def our_evaluators(cfg, name: str, output_dir: str) -> list[DatasetEvaluator]:
    built = build_evaluators(cfg, name, output_dir)
    return list(getattr(built, "_evaluators", [built]))


class _Clock:
    """Wall and CPU (user + sys, this process and its children) seconds per label."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @staticmethod
    def _cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    @contextlib.contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), self._cpu()
        try:
            yield
        finally:
            self.wall[label] = self.wall.get(label, 0.0) + time.perf_counter() - wall
            self.cpu[label] = self.cpu.get(label, 0.0) + self._cpu() - cpu


def run_side(make: Callable[[str], list[DatasetEvaluator]], records: list, args) -> tuple:
    """One timed evaluation phase; returns (results, clock)."""
    meta = MetadataCatalog.get(DATASET)
    clock = _Clock()
    with tempfile.TemporaryDirectory() as out:
        with clock("construct"):
            evaluators = make(out)
        for e in evaluators:
            with clock(type(e).__name__):
                e.reset()
        for record in records:
            inputs = [{k: record[k] for k in ("file_name", "image_id", "height", "width")}]
            outputs = [predictions_from_ground_truth(record, meta, args.seed, args.detections)]
            for e in evaluators:
                with clock(type(e).__name__):
                    e.process(inputs, outputs)
        results = {}
        for e in evaluators:
            with clock(type(e).__name__), contextlib.redirect_stdout(io.StringIO()):
                results.update(e.evaluate() or {})
    return results, clock


def compare(ours: dict, theirs: dict) -> tuple[float, list[str]]:
    """Largest |difference| over the keys both have, and the keys only one side has."""
    worst, missing = 0.0, []
    for task in sorted(set(ours) | set(theirs)):
        a, b = ours.get(task, {}), theirs.get(task, {})
        missing += [f"{task}/{k}" for k in sorted(set(a) ^ set(b))]
        for key in set(a) & set(b):
            x, y = float(a[key]), float(b[key])
            if not (math.isnan(x) and math.isnan(y)):
                worst = max(worst, abs(x - y))
    return worst, missing


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--detections", type=int, default=50, help="per image, with masks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides of our side")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    register_synthetic_datasets(args.image_size, 8, args.num_images, args.seed)
    records = DatasetCatalog.get(DATASET)
    cfg = build_cfg(CONFIG, args.opts, device="cpu")
    sides = {
        "detectron2": lambda out: detectron2_evaluators(DATASET, out),
        "ours": lambda out: our_evaluators(cfg, DATASET, out),
    }
    runs: dict[str, list] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, make in sides.items():
            runs[name].append(run_side(make, records, args))
    worst, missing = compare(runs["ours"][0][0], runs["detectron2"][0][0])
    print(f"{args.num_images} images {args.image_size}x{args.image_size}, {args.detections} "
          f"detections/image, {args.repeats} interleaved runs each (median)")  # fmt: skip
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    for clock_key in ("wall", "cpu"):
        totals = {n: float(np.median([sum(getattr(c, clock_key).values()) for _, c in r]))
                  for n, r in runs.items()}  # fmt: skip
        parts = {n: {k: float(np.median([getattr(c, clock_key).get(k, 0.0) for _, c in r]))
                     for k in getattr(r[0][1], clock_key)} for n, r in runs.items()}  # fmt: skip
        print(f"[{clock_key}] detectron2 {totals['detectron2']:.2f} s, ours {totals['ours']:.2f} s:"
              f" x{totals['detectron2'] / totals['ours']:.2f}")  # fmt: skip
        for name, p in parts.items():
            print(f"    {name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in p.items()))
    for task, values in sorted(runs["ours"][0][0].items()):
        head = {k: round(float(v), 3) for k, v in list(values.items())[:6]}
        print(f"  {task}: {head}")
    print(f"largest difference of any metric: {worst:.3g}; keys on one side only: {missing}")
    return 0 if worst < 1e-9 and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
