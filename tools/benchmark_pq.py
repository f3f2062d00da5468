#!/usr/bin/env python3
"""Benchmark FastPanopticEvaluator against detectron2's COCOPanopticEvaluator (panopticapi).

Writes a random COCO-panoptic ground truth (default 500 images, 640x480), builds model-style
predictions from it (shifted, relabelled, dropped and spurious segments), feeds the same
predictions to both evaluators in one run (``--repeats`` interleaved runs of each, a fresh
evaluator every time), checks that every PQ/SQ/RQ number agrees to 1e-9 and prints the median
wall-clock and CPU ratios::

    python tools/benchmark_pq.py --num-images 500 --height 480 --width 640 --workers 2

Both timings cover ``reset() + process() for every image + evaluate()``, i.e. what a
``DatasetEvaluator`` costs inside ``inference_on_dataset``. With ``--model-ms M`` both are also
run with M ms of simulated inference slept before each ``process()`` and the time each evaluator
adds on top is reported (the fast evaluator works in its threads while the model runs).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import resource
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import COCOPanopticEvaluator  # noqa: E402

from panoptic_ext.data.datasets import register_panoptic_dataset  # noqa: E402
from panoptic_ext.evaluation import FastPanopticEvaluator  # noqa: E402
from panoptic_ext.structures.panoptic_ids import id_to_rgb  # noqa: E402

# Non-contiguous ids, interleaved things (isthing=1) and stuff, as in COCO.
BENCH_CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 4, "name": "sky", "isthing": 0},
    {"id": 5, "name": "car", "isthing": 1},
    {"id": 8, "name": "road", "isthing": 0},
    {"id": 13, "name": "dog", "isthing": 1},
    {"id": 17, "name": "wall", "isthing": 0},
    {"id": 20, "name": "never_seen", "isthing": 1},  # absent everywhere: must be skipped
]


def _random_segments(
    rng: np.random.Generator, h: int, w: int, shapes: str = "boxes"
) -> tuple[np.ndarray, list[dict]]:
    """(H, W) int64 ground-truth ids (random 24-bit, like COCO) and their segments_info.

    ``shapes="boxes"``: horizontal stuff bands and rectangular things (many image rows repeat
    the row above); ``"blobs"``: wavy stuff boundaries and elliptic things, so that, as in real
    label maps, almost every row differs from the row above.
    """
    ids = np.zeros((h, w), np.int64)
    stuff = [c["id"] for c in BENCH_CATEGORIES if not c["isthing"]]
    things = [c["id"] for c in BENCH_CATEGORIES if c["isthing"] and c["name"] != "never_seen"]
    cats, crowd = {}, {}
    yy, xx = np.mgrid[:h, :w]
    bounds = np.sort(rng.integers(1, h, 2))
    for k, (y0, y1) in enumerate(zip([0, *bounds], [*bounds, h])):
        sid = int(rng.integers(1, 1 << 24))
        if shapes == "blobs" and k:
            wave = y0 + h / 20 * np.sin(xx / rng.uniform(5, 40) + rng.uniform(0, 6.3))
            ids[yy >= wave] = sid
        else:
            ids[y0:y1] = sid
        cats[sid], crowd[sid] = stuff[k % len(stuff)], 0
    for _ in range(int(rng.integers(0, 12))):
        sh, sw = int(rng.integers(4, h // 3)), int(rng.integers(4, w // 3))
        y0, x0 = int(rng.integers(0, h - sh)), int(rng.integers(0, w - sw))
        sid = int(rng.integers(1, 1 << 24))
        if shapes == "blobs":
            cy, cx = y0 + sh / 2, x0 + sw / 2
            ids[((yy - cy) / (sh / 2)) ** 2 + ((xx - cx) / (sw / 2)) ** 2 < 1] = sid
        else:
            ids[y0 : y0 + sh, x0 : x0 + sw] = sid
        cats[sid], crowd[sid] = int(rng.choice(things)), int(rng.random() < 0.1)
    ids[: int(rng.integers(0, 6))] = 0  # void border
    vals, counts = np.unique(ids, return_counts=True)
    segments = []
    for sid, area in zip(vals.tolist(), counts.tolist()):
        if sid == 0:
            continue
        ys, xs = np.nonzero(ids == sid)
        bbox = [
            int(xs.min()),
            int(ys.min()),
            int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1),
        ]
        segments.append(
            {"id": sid, "category_id": cats[sid], "iscrowd": crowd[sid], "area": area, "bbox": bbox}
        )
    return ids, segments


def _prediction(
    rng: np.random.Generator, gt: np.ndarray, segments: list[dict], meta: Any
) -> tuple[torch.Tensor, list[dict]]:
    """A model-style prediction: (H, W) int32 ids 1..P, contiguous ``category_id`` + ``isthing``."""
    h, w = gt.shape
    shifted = np.roll(gt, (int(rng.integers(-4, 5)), int(rng.integers(-8, 9))), axis=(0, 1))
    pred = np.zeros((h, w), np.int32)
    info = []
    thing_map, stuff_map = (
        meta.thing_dataset_id_to_contiguous_id,
        meta.stuff_dataset_id_to_contiguous_id,
    )
    all_ids = [c["id"] for c in BENCH_CATEGORIES if c["name"] != "never_seen"]
    for seg in segments:
        if rng.random() < 0.1:  # missed segment
            continue
        cat = seg["category_id"] if rng.random() < 0.9 else int(rng.choice(all_ids))
        info.append((seg["id"], cat))
    extra = []
    for _ in range(int(rng.integers(0, 4))):  # spurious detections
        y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        extra.append((y0, x0, int(rng.integers(4, h // 4)), int(rng.integers(4, w // 4))))
    out = []
    for gt_id, cat in info:
        mask = shifted == gt_id
        if mask.any():
            pred[mask] = len(out) + 1
            out.append(cat)
    for y0, x0, sh, sw in extra:
        pred[y0 : y0 + sh, x0 : x0 + sw] = len(out) + 1
        out.append(int(rng.choice(all_ids)))
    present = np.unique(pred)
    segments_info = []
    for i, cat in enumerate(out, start=1):
        if i not in present:
            continue
        isthing = cat in thing_map
        contiguous = thing_map[cat] if isthing else stuff_map[cat]
        segments_info.append({"id": i, "category_id": contiguous, "isthing": isthing})
    return torch.from_numpy(pred), segments_info


def make_benchmark_dataset(
    root: str,
    name: str,
    num_images: int,
    height: int,
    width: int,
    seed: int = 0,
    shapes: str = "boxes",
) -> list[tuple[dict, dict]]:
    """Write ground truth under ``root``, register ``name`` and return (input, output) pairs.

    ``shapes``: "boxes" or "blobs", see :func:`_random_segments`.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "panoptic"), exist_ok=True)
    gts, annotations, images = [], [], []
    for i in range(num_images):
        ids, segments = _random_segments(rng, height, width, shapes)
        stem = f"{i:06d}"
        Image.fromarray(id_to_rgb(ids)).save(os.path.join(root, "panoptic", stem + ".png"))
        images.append({"id": i, "file_name": stem + ".jpg", "height": height, "width": width})
        annotations.append({"image_id": i, "file_name": stem + ".png", "segments_info": segments})
        gts.append((ids, segments))
    panoptic_json = os.path.join(root, "panoptic.json")
    with open(panoptic_json, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": BENCH_CATEGORIES}, f)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_panoptic_dataset(
        name, os.path.join(root, "images"), os.path.join(root, "panoptic"), panoptic_json
    )
    meta = MetadataCatalog.get(name)
    pairs = []
    for i, (ids, segments) in enumerate(gts):
        pred = _prediction(rng, ids, segments, meta)
        pairs.append(({"image_id": i, "file_name": f"{i:06d}.jpg"}, {"panoptic_seg": pred}))
    return pairs


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
    evaluator.reset()
    for inp, out in pairs:
        if model_seconds:
            time.sleep(model_seconds)
        ids, segments = out["panoptic_seg"]
        # detectron2's evaluator rewrites segments_info (and, without it, the id map) in place:
        # give each run its own copies.
        if segments is None:
            ids = ids.clone()
        else:
            segments = [dict(x) for x in segments]
        evaluator.process([inp], [{"panoptic_seg": (ids, segments)}])
    with contextlib.redirect_stdout(io.StringIO()):
        res = evaluator.evaluate()
    wall = time.perf_counter() - start - model_seconds * len(pairs)
    if cpu is not None:
        cpu.append(_cpu_seconds(start=False) - cpu_start)
    return res, wall


def main() -> None:
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
        "--shapes",
        choices=("boxes", "blobs"),
        default="boxes",
        help="ground-truth segments: bands and rectangles, or wavy bands and ellipses (almost "
        "no PNG row repeats the row above, as in real label maps)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs of both paths; medians reported"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_pq") as root:
        t0 = time.perf_counter()
        pairs = make_benchmark_dataset(
            root, "bench_pq", args.num_images, args.height, args.width, args.seed, args.shapes
        )
        print(
            f"generated {args.num_images} images {args.width}x{args.height} ({args.shapes}) "
            f"in {time.perf_counter() - t0:.1f}s"
        )
        # Interleaved repeats (the order alternates) so that both paths see the same load on a
        # shared machine; each fast run is a first evaluation (a new evaluator, no state kept).
        rows = []
        for r in range(args.repeats):
            order = ("panopticapi", "fast") if r % 2 == 0 else ("fast", "panopticapi")
            row = {}
            for kind in order:
                cpu: list[float] = []
                if kind == "fast":
                    evaluator = FastPanopticEvaluator("bench_pq", num_workers=args.workers)
                else:
                    evaluator = COCOPanopticEvaluator("bench_pq")
                res, wall = run_evaluator(evaluator, pairs, cpu=cpu)
                row[kind] = (res, wall, cpu[0])
            rows.append(row)
            ref, fast = row["panopticapi"], row["fast"]
            print(
                f"repeat {r + 1}/{args.repeats}: panopticapi {ref[1]:.2f}s wall {ref[2]:.2f}s CPU"
                f" | fast {fast[1]:.2f}s wall {fast[2]:.2f}s CPU"
                f" | ratio wall {ref[1] / fast[1]:.1f}x CPU {ref[2] / fast[2]:.1f}x"
            )
        if args.model_ms:
            model_s = args.model_ms / 1000
            _, o_ref = run_evaluator(COCOPanopticEvaluator("bench_pq"), pairs, model_s)
            _, o_fast = run_evaluator(
                FastPanopticEvaluator("bench_pq", num_workers=args.workers), pairs, model_s
            )
    n = args.num_images
    wall_ratio = float(np.median([r["panopticapi"][1] / r["fast"][1] for r in rows]))
    cpu_ratio = float(np.median([r["panopticapi"][2] / r["fast"][2] for r in rows]))
    ref_cpu = float(np.median([r["panopticapi"][2] for r in rows]))
    fast_cpu = float(np.median([r["fast"][2] for r in rows]))
    ref_wall = float(np.median([r["panopticapi"][1] for r in rows]))
    fast_wall = float(np.median([r["fast"][1] for r in rows]))
    ref, fast = rows[-1]["panopticapi"][0], rows[-1]["fast"][0]
    diff = max(
        abs(r["panopticapi"][0]["panoptic_seg"][k] - r["fast"][0]["panoptic_seg"][k])
        for r in rows
        for k in ref["panoptic_seg"]
    )
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"panopticapi (COCOPanopticEvaluator, pq_compute on {os.cpu_count()} procs): median "
        f"{ref_wall:.2f}s wall, {ref_cpu:.2f}s CPU ({1e3 * ref_cpu / n:.2f} ms CPU/image)"
    )
    print(
        f"fast (FastPanopticEvaluator, {args.workers} workers):                median "
        f"{fast_wall:.2f}s wall, {fast_cpu:.2f}s CPU ({1e3 * fast_cpu / n:.2f} ms CPU/image)"
    )
    print(
        f"speed-up, median of {len(rows)} interleaved repeats: wall {wall_ratio:.1f}x, CPU seconds "
        f"(all threads and worker processes; less sensitive to a busy machine) {cpu_ratio:.1f}x"
    )
    print(f"max |difference| of PQ/SQ/RQ (percent) over all repeats: {diff:.2e}")
    if args.model_ms:
        print(
            f"with {args.model_ms:g} ms of model time per image, evaluation adds "
            f"{o_ref:.2f}s (panopticapi) vs {max(o_fast, 1e-3):.2f}s (fast): "
            f"{o_ref / max(o_fast, 1e-3):.1f}x"
        )
    for k, v in fast["panoptic_seg"].items():
        print(f"  {k:6s} {v:8.4f}  (panopticapi {ref['panoptic_seg'][k]:8.4f})")
    if diff > 1e-7:  # 1e-9 on the [0, 1] scale
        raise SystemExit("results differ")


if __name__ == "__main__":
    main()
