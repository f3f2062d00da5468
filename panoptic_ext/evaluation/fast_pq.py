"""Exact, streaming panoptic quality (PQ / SQ / RQ) with vectorised segment matching.

Computes the same statistics as panopticapi's ``pq_compute`` (same matching rule ``IoU > 0.5``,
same void / crowd handling, ground-truth areas taken from the json like panopticapi), but:

* one image at a time: :func:`image_pq_stats` turns a (ground truth, prediction) pair of id maps
  into per-category ``(iou, tp, fp, fn)`` sums, so statistics accumulate as predictions arrive and
  nothing but a few small arrays is kept;
* all segment pairs of an image are matched at once from one confusion matrix (an 8-bit 2-D
  histogram of ground-truth codes and predicted ids, or a ``bincount`` for large ids) instead of
  a sort of ``H*W`` uint64 labels and Python loops over pairs;
* categories whose split has no segment at all are skipped with a warning instead of dividing
  by zero, and category ids / ``isthing`` are checked before anything is computed.

The result dictionaries have panopticapi's layout (``"All"``, ``"Things"``, ``"Stuff"`` ->
``{"pq", "sq", "rq", "n"}`` in [0, 1], and ``"per_class"``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..data.gt_checks import check_ground_truth
from ..data.json_file import read_json
from ..data.panoptic_io import index_map, read_panoptic_png, read_panoptic_rows
from ..data.validation import category_problems

logger = logging.getLogger(__name__)

__all__ = [
    "PQCategories",
    "PQStats",
    "check_categories",
    "image_pq_stats",
    "pq_average",
    "pq_compute_fast",
]

# A prediction is a true positive when its IoU with a ground-truth segment exceeds this
# (panoptic quality definition, Kirillov et al. 2019); it makes matches unique.
MATCH_IOU = 0.5
# A false positive is ignored when more than this fraction of it lies on void / crowd pixels.
IGNORE_FRACTION = 0.5
# OpenCV histograms count in float32: exact while an image has fewer pixels than this.
_EXACT_FLOAT32 = 1 << 24


class PQCategories:
    """Validated category table: dataset id -> position, ``isthing`` and name.

    Args:
        categories: the ``categories`` list of a COCO-panoptic json (dicts with ``id``,
            ``isthing`` and optionally ``name``).
        source: named in error messages (e.g. the json path).
    Raises:
        ValueError: on duplicated ids, a missing or non 0/1 ``isthing``, or no category at all.
    """

    def __init__(self, categories: Sequence[dict[str, Any]], source: str = "categories"):
        check_categories(categories, source)
        self.ids = np.array([int(c["id"]) for c in categories], dtype=np.int64)
        self.isthing = np.array([int(c["isthing"]) == 1 for c in categories], dtype=bool)
        self.names = [str(c.get("name", c["id"])) for c in categories]
        self.index = {int(c): i for i, c in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, category_ids: Iterable[int]) -> np.ndarray:
        """Positions of dataset ``category_ids``; ids not in the table map to ``len(self)``."""
        return np.array([self.index.get(int(c), len(self)) for c in category_ids], dtype=np.int64)


def check_categories(categories: Sequence[dict[str, Any]], source: str = "categories") -> None:
    """Raise ``ValueError`` naming ``source`` and the ids when the category table is unusable.

    Checks what panopticapi silently assumes (at least one category, unique ids, ``isthing`` 0
    or 1 on each), with the dataset validator's rules.
    """
    errors = [p for p in category_problems(categories, source) if p.level == "error"]
    if errors:
        raise ValueError("bad categories for PQ: " + "; ".join(map(str, errors)))


@dataclass
class PQStats:
    """Per-category sums over images. All arrays have shape (C,) for C categories.

    Attributes:
        iou: float64 sum of the IoUs of matched pairs.
        tp, fp, fn: int64 counts of true positives, false positives, false negatives.
    """

    iou: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @classmethod
    def zeros(cls, num_categories: int) -> PQStats:
        z = np.zeros(num_categories, dtype=np.int64)
        return cls(np.zeros(num_categories, dtype=np.float64), z.copy(), z.copy(), z.copy())

    def __iadd__(self, other: PQStats) -> PQStats:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


def image_pq_stats(
    gt_ids: np.ndarray,
    gt_segments: Sequence[dict[str, Any]],
    pred_ids: np.ndarray,
    pred_segments: Sequence[dict[str, Any]],
    categories: PQCategories,
    image_name: str = "",
    gt_row_index: np.ndarray | None = None,
) -> PQStats:
    """PQ statistics of one image, identical to panopticapi's per-image loop.

    Args:
        gt_ids: (H, W) integer ground-truth segment ids (0 = void).
        gt_segments: ground-truth ``segments_info`` (``id``, ``category_id``, ``iscrowd``, ``area``;
            a missing ``area`` is counted from ``gt_ids``). Ids in ``gt_ids`` without an entry
            count as neither void nor segment, as in panopticapi.
        pred_ids: (H, W) integer predicted segment ids (0 = void).
        pred_segments: predicted ``segments_info`` (``id``, dataset ``category_id``).
        categories: the validated category table.
        image_name: named in error messages.
        gt_row_index: when given, ``gt_ids`` holds (K, W) distinct rows and the ground truth is
            ``gt_ids[gt_row_index]`` (as returned by ``read_panoptic_rows``).
    Returns:
        (C,) per-category statistics of this image.
    Raises:
        ValueError: when the two maps differ in shape, a predicted id is in the map but not in
            ``pred_segments`` (or the reverse), a predicted id repeats, or a predicted category
            is not in ``categories`` -- the cases where panopticapi raises.
    """
    gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
    gt_shape = gt_ids.shape if gt_row_index is None else (len(gt_row_index), gt_ids.shape[1])
    if gt_shape != pred_ids.shape:
        raise ValueError(
            f"{image_name}: prediction shape {tuple(pred_ids.shape)} != ground truth "
            f"{tuple(gt_shape)}"
        )
    num_cats, g = len(categories), len(gt_segments)
    gt_seg_ids, gt_cat, pred_seg_ids, pred_cat = _segment_tables(
        gt_segments, pred_segments, categories, image_name
    )
    crowd = np.array([int(s.get("iscrowd", 0)) == 1 for s in gt_segments], dtype=bool)

    # Rows: 0 void, 1..g gt segments, g+1 ids without a gt segment; columns: 0 void, 1..p preds.
    if gt_row_index is None:
        gi = index_map(gt_ids, gt_seg_ids, g + 1)
    else:  # codes of the distinct rows only, then expanded (a gather of small codes)
        gi = np.take(index_map(gt_ids, gt_seg_ids, g + 1), gt_row_index, axis=0)
    conf = _confusion(gi, g + 2, pred_ids, pred_seg_ids, image_name)

    pred_area = conf[:, 1:].sum(0)
    if (pred_area == 0).any():
        missing = pred_seg_ids[pred_area == 0].tolist()
        raise ValueError(f"{image_name}: predicted segments {missing} have no pixel in the map")
    png_gt_area = conf[1 : g + 1].sum(1)
    gt_area = np.array(
        [s["area"] if "area" in s else png_gt_area[i] for i, s in enumerate(gt_segments)],
        dtype=np.int64,
    )
    pairs = _PairCounts(conf[1 : g + 1, 1:], conf[0, 1:], pred_area, gt_area)
    stats = PQStats.zeros(num_cats + 1)  # last slot collects gt categories absent from the table
    match = _add_matches(stats, pairs, gt_cat, pred_cat, crowd)
    _add_false_positives(stats, pairs, match, gt_cat, pred_cat, crowd)
    return PQStats(
        stats.iou[:num_cats], stats.tp[:num_cats], stats.fp[:num_cats], stats.fn[:num_cats]
    )


def _segment_tables(
    gt_segments: Sequence[dict[str, Any]],
    pred_segments: Sequence[dict[str, Any]],
    categories: PQCategories,
    image_name: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(G,) ground-truth ids and category positions, (P,) predicted ids and category positions.

    Raises:
        ValueError: a predicted id repeats, or a predicted category is not in ``categories``.
    """
    num_cats, p = len(categories), len(pred_segments)
    gt_seg_ids = np.array([int(s["id"]) for s in gt_segments], dtype=np.int64)
    pred_seg_ids = np.array([int(s["id"]) for s in pred_segments], dtype=np.int64)
    if len(np.unique(pred_seg_ids)) != p:
        raise ValueError(f"{image_name}: duplicated predicted segment ids {pred_seg_ids.tolist()}")
    gt_cat = categories.lookup(s["category_id"] for s in gt_segments)
    pred_cat = categories.lookup(s["category_id"] for s in pred_segments)
    if (pred_cat == num_cats).any():
        bad = sorted(
            {int(s["category_id"]) for s, c in zip(pred_segments, pred_cat) if c == num_cats}
        )
        raise ValueError(f"{image_name}: predicted category ids {bad} are not in the categories")
    return gt_seg_ids, gt_cat, pred_seg_ids, pred_cat


@dataclass
class _PairCounts:
    """Pixel counts of one image: ``inter`` (G, P) gt-prediction overlaps, ``pred_void`` (P,)
    void pixels under each prediction, ``pred_area`` (P,) and ``gt_area`` (G,)."""

    inter: np.ndarray
    pred_void: np.ndarray
    pred_area: np.ndarray
    gt_area: np.ndarray


def _add_matches(
    stats: PQStats, pairs: _PairCounts, gt_cat: np.ndarray, pred_cat: np.ndarray, crowd: np.ndarray
) -> np.ndarray:
    """Add true positives (IoU > 0.5, same category, gt not crowd) and false negatives.

    Returns:
        (G, P) bool matches.
    """
    num_slots = len(stats.tp)
    inter = pairs.inter
    same = (gt_cat[:, None] == pred_cat[None, :]) & ~crowd[:, None] & (inter > 0)
    union = pairs.pred_area[None, :] + pairs.gt_area[:, None] - inter - pairs.pred_void[None, :]
    iou = np.divide(inter, union, out=np.zeros(inter.shape), where=same & (union > 0))
    match = same & (iou > MATCH_IOU)
    gm, pm = np.nonzero(match)
    stats.tp += np.bincount(gt_cat[gm], minlength=num_slots)
    stats.iou += np.bincount(gt_cat[gm], weights=iou[gm, pm], minlength=num_slots)
    gt_matched = match.any(1)
    stats.fn += np.bincount(gt_cat[~gt_matched & ~crowd], minlength=num_slots)
    return match


def _add_false_positives(
    stats: PQStats,
    pairs: _PairCounts,
    match: np.ndarray,
    gt_cat: np.ndarray,
    pred_cat: np.ndarray,
    crowd: np.ndarray,
) -> None:
    """Add the unmatched predictions that are not mostly void or crowd of their category."""
    # Void pixels under each prediction, plus the crowd region of its category: panopticapi
    # keeps one crowd segment per category (the last one listed).
    ignored = pairs.pred_void.astype(np.float64)
    if crowd.any() and len(pred_cat):
        crowd_row = np.full(len(stats.tp), -1, dtype=np.int64)
        crowd_idx = np.nonzero(crowd)[0]
        crowd_row[gt_cat[crowd_idx]] = crowd_idx  # later entries overwrite earlier ones
        rows = crowd_row[pred_cat]
        has = rows >= 0
        ignored[has] += pairs.inter[rows[has], np.nonzero(has)[0]]
    fp = ~match.any(0) & ~(ignored / pairs.pred_area > IGNORE_FRACTION)
    stats.fp += np.bincount(pred_cat[fp], minlength=len(stats.tp))


def _confusion(
    gi: np.ndarray, num_rows: int, pred_ids: np.ndarray, pred_seg_ids: np.ndarray, image_name: str
) -> np.ndarray:
    """(num_rows, P + 1) int64 pixel counts of (ground-truth code, predicted segment) pairs.

    Args:
        gi: (H, W) ground-truth codes in [0, num_rows).
        pred_ids: (H, W) predicted ids; column 0 counts id 0 (void), column i id
            ``pred_seg_ids[i - 1]``.
    Raises:
        ValueError: when a predicted id in the map is not in ``pred_seg_ids``.
    """
    p = len(pred_seg_ids)
    small = None
    if pred_ids.dtype == np.uint8:
        small = pred_ids
    elif pred_ids.size and pred_ids.dtype.kind in "iu":
        if int(pred_ids.min()) >= 0 and int(pred_ids.max()) < 256:
            small = pred_ids.astype(np.uint8)
    if small is not None and gi.dtype == np.uint8 and gi.size < _EXACT_FLOAT32:
        # Model ids are small: a 2-D histogram straight over (gt code, predicted id) pixels
        # (OpenCV's table-driven 8-bit histogram; counts are exact below 2^24 in float32),
        # then the few id columns are moved to segment positions.
        cols = int(small.max()) + 1
        hist = cv2.calcHist(
            [np.ascontiguousarray(gi), np.ascontiguousarray(small)],
            [0, 1],
            None,
            [num_rows, cols],
            [0, num_rows, 0, cols],
        ).astype(np.int64)
        assert hist.sum() == gi.size, "histogram lost pixels"
        listed = np.zeros(cols, dtype=bool)
        listed[0] = True
        keep = (pred_seg_ids > 0) & (pred_seg_ids < cols)
        listed[pred_seg_ids[keep]] = True
        stray = np.flatnonzero(~listed & (hist.sum(0) > 0))
        if len(stray):
            raise ValueError(
                f"{image_name}: predicted ids {stray[:20].tolist()} are in the map but not in "
                "segments_info"
            )
        conf = np.zeros((num_rows, p + 1), dtype=np.int64)
        conf[:, 0] = hist[:, 0]
        conf[:, 1 + np.flatnonzero(keep)] = hist[:, pred_seg_ids[keep]]
        return conf
    pi = index_map(pred_ids, pred_seg_ids, p + 1)
    if (pi == p + 1).any():
        stray = np.unique(pred_ids[pi == p + 1]).tolist()
        raise ValueError(
            f"{image_name}: predicted ids {stray[:20]} are in the map but not in segments_info"
        )
    key = gi.astype(np.intp)
    key *= p + 1  # in place: no further (H, W) temporaries
    key += pi
    conf = np.bincount(key.ravel(), minlength=num_rows * (p + 1))
    return conf.reshape(num_rows, p + 1)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def pq_average(stats: PQStats, categories: PQCategories, warn: bool = True) -> dict[str, Any]:
    """Average per-category statistics like panopticapi's ``pq_average``.

    Categories with no segment in ground truth or prediction (``tp + fp + fn == 0``) are left out
    of the averages (their per-class entry is 0). A split (things or stuff) left with no category
    gets ``pq = sq = rq = 0`` and ``n = 0`` plus a warning, where panopticapi divides by zero.

    Returns:
        ``{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"},
        "per_class": {category id: {"pq", "sq", "rq"}}}`` with values in [0, 1].
    """
    denom = stats.tp + 0.5 * stats.fp + 0.5 * stats.fn
    present = (stats.tp + stats.fp + stats.fn) > 0
    per_class: dict[int, dict[str, float]] = {}
    for i, cat_id in enumerate(categories.ids.tolist()):
        if not present[i]:
            per_class[cat_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        per_class[cat_id] = {
            "pq": float(stats.iou[i] / denom[i]),
            "sq": float(_ratio(stats.iou[i], stats.tp[i])),
            "rq": float(stats.tp[i] / denom[i]),
        }
    results: dict[str, Any] = {}
    for name, select in (("All", None), ("Things", True), ("Stuff", False)):
        keep = present if select is None else present & (categories.isthing == select)
        n = int(keep.sum())
        if n == 0:
            if warn:
                logger.warning(
                    f"PQ: no {name.lower()} category has a segment in ground truth or prediction; "
                    f"{name} PQ/SQ/RQ reported as 0 with n=0"
                )
            results[name] = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
            continue
        rows = [per_class[c] for c in categories.ids[keep].tolist()]
        results[name] = {k: sum(r[k] for r in rows) / n for k in ("pq", "sq", "rq")}
        results[name]["n"] = n
        for k in ("pq", "sq", "rq"):
            assert 0.0 <= results[name][k] <= 1.0 + 1e-12, (name, k, results[name][k])
    results["per_class"] = per_class
    return results


def _file_pair_stats(args: tuple) -> PQStats:
    gt_ann, pred_ann, gt_folder, pred_folder, categories = args
    gt_rows, row_index = read_panoptic_rows(os.path.join(gt_folder, gt_ann["file_name"]))
    pred = read_panoptic_png(os.path.join(pred_folder, pred_ann["file_name"]))
    return image_pq_stats(
        gt_rows,
        gt_ann["segments_info"],
        pred,
        pred_ann["segments_info"],
        categories,
        gt_ann["file_name"],
        gt_row_index=row_index,
    )


def pq_compute_fast(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: str | None = None,
    pred_folder: str | None = None,
    workers: int = 1,
    check_gt: bool = True,
) -> dict[str, Any]:
    """File-based replacement of panopticapi's ``pq_compute`` (same arguments, same result).

    Args:
        workers: number of threads reading PNGs (image decoding and numpy release the GIL).
        check_gt: refuse ground truth whose PNGs disagree with the json (off: panopticapi's
            semantics, e.g. PNG ids without a segment count as neither void nor segment).
    Raises:
        ValueError: when an image of the ground truth has no prediction, or on bad categories.
        GroundTruthError: (a ``ValueError``) when the ground-truth PNGs disagree with the json
            (:func:`~panoptic_ext.data.gt_checks.check_ground_truth`).
    """
    gt_folder = gt_folder or gt_json_file.replace(".json", "")
    if check_gt:
        check_ground_truth(gt_json_file, gt_folder, workers)
    gt_json = read_json(gt_json_file, "ground-truth panoptic json")
    pred_json = read_json(pred_json_file, "prediction json")
    pred_folder = pred_folder or pred_json_file.replace(".json", "")
    categories = PQCategories(gt_json["categories"], gt_json_file)
    preds = {a["image_id"]: a for a in pred_json["annotations"]}
    missing = [a["image_id"] for a in gt_json["annotations"] if a["image_id"] not in preds]
    if missing:
        raise ValueError(f"{pred_json_file}: no prediction for image ids {missing[:20]}")
    jobs = [
        (a, preds[a["image_id"]], gt_folder, pred_folder, categories)
        for a in gt_json["annotations"]
    ]
    total = PQStats.zeros(len(categories))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            for s in pool.map(_file_pair_stats, jobs):
                total += s
    else:
        for job in jobs:
            total += _file_pair_stats(job)
    return pq_average(total, categories)
