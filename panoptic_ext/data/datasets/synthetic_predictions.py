"""Model-like predictions made from synthetic ground truth, for exercising and timing the
evaluators without a trained model (tests, ``dev/benchmark_eval.py``, ``dev/benchmark_pq.py``).

:func:`predictions_from_ground_truth`: per image (seeded by ``seed`` and the image id, so every
run sees the same predictions) the ground truth shifted by a few pixels, 10 % of segments missed,
10 % of things relabelled, for every head: ``panoptic_seg``, ``instances`` (the things plus
spurious low-score ellipses up to ``detections`` per image, with masks) and ``sem_seg`` one-hot
logits with 5 % noise.

:func:`make_benchmark_dataset`: a generated panoptic split with :data:`BENCH_CATEGORIES`, and
per image a prediction (shifted, relabelled, dropped and spurious segments) ready for
``DatasetEvaluator.process``; :func:`evaluate_pairs` runs an evaluator over them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from ...structures.boxes import masks_to_boxes
from ..panoptic_io import read_panoptic_png
from .register import register_panoptic_dataset
from .synthetic import SYNTHETIC_CATEGORIES, SyntheticSpec, generate_split


def predictions_from_ground_truth(
    record: dict, meta: Any, seed: int, detections: int
) -> dict[str, Any]:
    """A Panoptic FPN-like output for one dataset dict (detectron2's panoptic convention).

    Returns ``{"panoptic_seg": ((H, W) int32, segments_info), "instances": Instances(pred_boxes,
    scores, pred_classes, pred_masks (N, H, W) bool), "sem_seg": (1 + S, H, W) float32}``.
    """
    rng = np.random.default_rng([seed, int(record["image_id"])])
    gt = read_panoptic_png(record["pan_seg_file_name"]).astype(np.int64)
    h, w = gt.shape
    shifted = np.roll(gt, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
    num_things, num_stuff = len(meta.thing_classes), len(meta.stuff_classes) - 1
    panoptic = np.zeros((h, w), np.int32)
    semantic = np.full((h, w), -1, np.int64)
    segments, masks, classes, scores = [], [], [], []
    for k, seg in enumerate(record["segments_info"], start=1):
        mask = shifted == seg["id"]
        if not mask.any() or rng.random() < 0.1:  # missed segment
            continue
        cat = seg["category_id"]
        if seg["isthing"] and rng.random() < 0.1:  # wrong class
            cat = int(rng.integers(num_things))
        panoptic[mask] = k
        semantic[mask] = 0 if seg["isthing"] else cat
        segments.append({"id": k, "category_id": int(cat), "isthing": bool(seg["isthing"])})
        if seg["isthing"] and not seg.get("iscrowd", 0):
            masks.append(mask)
            classes.append(cat)
            scores.append(rng.uniform(0.5, 1.0))
    while len(masks) < detections:  # spurious low-score detections (ellipses)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(3, h / 4), rng.uniform(3, w / 4)
        yy, xx = np.ogrid[:h, :w]
        masks.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
        classes.append(int(rng.integers(num_things)))
        scores.append(rng.uniform(0.05, 0.5))
    instances = Instances((h, w))
    instances.pred_masks = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), bool))
    instances.pred_boxes = Boxes(masks_to_boxes(instances.pred_masks).tensor)
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    # Void and 5 % of the pixels get a random class: mIoU is neither 0 nor 100.
    noise = (semantic < 0) | (rng.random((h, w)) < 0.05)
    semantic[noise] = rng.integers(0, num_stuff + 1, int(noise.sum()))
    logits = np.zeros((num_stuff + 1, h, w), np.float32)
    np.put_along_axis(logits, semantic[None], 1.0, axis=0)
    return {
        "panoptic_seg": (torch.from_numpy(panoptic), segments),
        "instances": instances,
        "sem_seg": torch.from_numpy(logits),
    }


# The synthetic categories (non-contiguous ids, things and stuff interleaved, as in COCO) and one
# that never occurs: PQ must skip it.
BENCH_CATEGORIES = SYNTHETIC_CATEGORIES + [{"id": 20, "name": "never_seen", "isthing": 1}]


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
    root: str, name: str, num_images: int, height: int, width: int, seed: int = 0
) -> list[tuple[dict, dict]]:
    """Generate the ground truth under ``root``, register ``name``; return (input, output) pairs.

    The files are the synthetic generator's (``panoptic_bench.json``, ``panoptic_bench/``), with
    :data:`BENCH_CATEGORIES` as categories.
    """
    split = "bench"
    generate_split(root, split, SyntheticSpec(width, num_images, seed, image_height=height))
    panoptic_json = os.path.join(root, f"panoptic_{split}.json")
    with open(panoptic_json) as f:
        data = json.load(f)
    data["categories"] = BENCH_CATEGORIES
    with open(panoptic_json, "w") as f:
        json.dump(data, f)
    panoptic_root = os.path.join(root, f"panoptic_{split}")
    register_panoptic_dataset(name, os.path.join(root, split), panoptic_root, panoptic_json)
    meta = MetadataCatalog.get(name)
    rng = np.random.default_rng(seed)
    pairs = []
    for ann in data["annotations"]:
        ids = read_panoptic_png(os.path.join(panoptic_root, ann["file_name"]))
        pred = _prediction(rng, ids.astype(np.int64), ann["segments_info"], meta)
        inp = {"image_id": ann["image_id"], "file_name": ann["file_name"]}
        pairs.append((inp, {"panoptic_seg": pred}))
    return pairs


def evaluate_pairs(
    evaluator: Any, pairs: list[tuple[dict, dict]], before_each: Callable[[], None] | None = None
) -> dict:
    """``reset()``, ``process()`` of every (input, output) pair of :func:`make_benchmark_dataset`
    (``before_each`` called before each, e.g. a simulated model), ``evaluate()`` (its prints
    swallowed); returns the results."""
    evaluator.reset()
    for inp, out in pairs:
        if before_each is not None:
            before_each()
        ids, segments = out["panoptic_seg"]
        # detectron2's evaluator rewrites segments_info (and, without it, the id map) in place:
        # give each run its own copies.
        if segments is None:
            ids = ids.clone()
        else:
            segments = [dict(x) for x in segments]
        evaluator.process([inp], [{"panoptic_seg": (ids, segments)}])
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluator.evaluate()
