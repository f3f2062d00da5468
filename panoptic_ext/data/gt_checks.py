"""Ground truth checked against its PNGs: one set of rules for every reader of a panoptic dataset.

The dataset validator, the panoptic evaluators (before inference starts) and training (before
the first iteration, for the datasets it evaluates on) call the same functions, so each of them
reports the same problems with the same codes. What PQ would silently get wrong:

==================  =======  ==============================================================
code                level    why
==================  =======  ==============================================================
unsupported_png     error    not an 8-bit RGB / RGBA / palette PNG (a JPEG, a gray or 16-bit
                             PNG): the 24-bit ids did not survive the conversion
unlabeled_png_id    error    pixels whose id no segment lists; panopticapi counts them as
                             neither void nor segment (a prediction on them loses IoU)
empty_segment       error    a listed segment has no pixel: an unmatchable false negative
bad_area            error    ``area`` NaN, infinite, negative or not a number (found with
                             the JSON, :mod:`panoptic_ext.data.json_checks`)
area_mismatch       error    ``area`` differs from the pixel count; PQ takes the ground-truth
                             area from the JSON, so IoU is wrong (``area`` 0 gives IoU > 1)
void_dataset        error    every PNG is void: there is nothing to train on or score
void_png            warning  an image without a labelled pixel (contributes nothing to PQ)
multiple_crowd      warning  >1 crowd segment of a category in an image; panopticapi (and the
                             fast evaluator) use the last one
missing_area        warning  a segment has no ``area``; the fast evaluator counts the PNG
==================  =======  ==============================================================

:func:`check_ground_truth` runs them over a whole dataset once per process and file state (the
result is cached on the JSON's and every PNG's size and modification time), raises
:class:`GroundTruthError` on errors and logs each warning code once with its count.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..structures.boxes import segment_boxes
from .json_checks import ERROR, WARNING, DatasetJsonError, Problem, panoptic_json_problems
from .json_file import read_json
from .panoptic_io import UnsupportedPanopticPngError, index_map, read_panoptic_rows

__all__ = [
    "GroundTruthError",
    "annotation_problems",
    "check_ground_truth",
    "dataset_level_problems",
    "ground_truth_problems",
]

logger = logging.getLogger(__name__)


class GroundTruthError(DatasetJsonError):
    """Ground truth that would make PQ wrong; ``problems`` lists every error."""

    heading = (
        "problem(s) in the ground truth (the JSON against its PNGs); metrics on it would be "
        "wrong, so it is refused"
    )


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def annotation_problems(
    ann: dict, png: str, size: tuple[int, int] | None = None, boxes: bool = False
) -> list[Problem]:
    """Problems of one annotation against its PNG.

    Args:
        ann: an annotation with ``segments_info`` (segment ids already type-checked).
        png: path of its PNG (named in every problem).
        size: (height, width) from ``images``, when known.
        boxes: also compare ``bbox`` with the PNG extent (the validator; PQ does not use it).
    """
    problems: list[Problem] = []
    segments = ann["segments_info"]
    seg_ids = [s["id"] for s in segments]
    duplicated = {sid for sid, n in Counter(seg_ids).items() if n > 1}
    crowd_cats = Counter(s.get("category_id") for s in segments if s.get("iscrowd", 0) == 1)
    for cat, n in crowd_cats.items():
        if n > 1:
            msg = f"{n} crowd segments of category {cat}; merge them (panopticapi uses the last)"
            problems.append(Problem(WARNING, "multiple_crowd", png, cat, msg))
    image_id = ann.get("image_id")
    if not os.path.isfile(png):
        return problems + [Problem(ERROR, "missing_png", png, image_id, "PNG missing")]
    try:
        rows, row_index = read_panoptic_rows(png)
    except UnsupportedPanopticPngError as e:
        return problems + [Problem(ERROR, "unsupported_png", png, image_id, e.reason)]
    except FileNotFoundError as e:
        return problems + [Problem(ERROR, "unreadable_png", png, image_id, str(e))]
    shape = (len(row_index), rows.shape[1])
    if size is not None and shape != tuple(size):
        msg = f"PNG is {shape[1]}x{shape[0]}, image is {size[1]}x{size[0]}"
        problems.append(Problem(ERROR, "size_mismatch", png, image_id, msg))
    # Counted on the distinct rows only (as the evaluator reads them), each row weighted by
    # how often it occurs: the check costs about one PNG decode per image.
    stray_code = len(seg_ids) + 1
    codes = index_map(rows, seg_ids, stray_code)
    weight = np.broadcast_to(np.bincount(row_index, minlength=len(rows))[:, None], codes.shape)
    stray = codes == stray_code
    stray_ids, inverse = np.unique(rows[stray], return_inverse=True)
    stray_counts = np.bincount(inverse.ravel(), weights=weight[stray], minlength=len(stray_ids))
    for sid, n in zip(stray_ids.tolist(), stray_counts.astype(np.int64).tolist()):
        msg = f"{n} pixels have an id with no segment (RGB {_rgb(sid)})"
        problems.append(Problem(ERROR, "unlabeled_png_id", png, sid, msg))
    if not segments and not len(stray_ids) and not rows.any():
        msg = "no labelled pixel (every pixel is void and segments_info is empty)"
        problems.append(Problem(WARNING, "void_png", png, image_id, msg))
    if boxes:
        areas, extents = segment_boxes(codes[row_index], len(seg_ids))
    else:
        flat = codes.ravel().astype(np.intp, copy=False)
        counts = np.bincount(flat, weights=weight.ravel(), minlength=stray_code + 1)
        areas, extents = counts[1:stray_code].astype(np.int64), None
    for i, s in enumerate(segments):
        sid = seg_ids[i]
        if sid in duplicated:  # pixels cannot be attributed: already reported
            continue
        if areas[i] == 0:
            msg = f"no pixel in the PNG (JSON area {s.get('area')!r})"
            problems.append(Problem(ERROR, "empty_segment", png, sid, msg))
            continue
        if "area" not in s:
            problems.append(Problem(WARNING, "missing_area", png, sid, "segment has no 'area'"))
        elif _is_number(s["area"]) and s["area"] != areas[i]:
            msg = f"area {s['area']!r} but the PNG has {int(areas[i])} pixels"
            problems.append(Problem(ERROR, "area_mismatch", png, sid, msg))
        if extents is not None and _is_box(s.get("bbox")):
            if [int(round(v)) for v in s["bbox"]] != extents[i].tolist():
                msg = f"bbox {s['bbox']} but the PNG extent is {extents[i].tolist()}"
                problems.append(Problem(ERROR, "bbox_mismatch", png, sid, msg))
    return problems


def _is_box(bbox: Any) -> bool:
    return isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)


def _rgb(segment_id: int) -> tuple[int, int, int]:
    return (segment_id % 256, segment_id // 256 % 256, segment_id // 65536)


def dataset_level_problems(json_file: str, num_annotations: int, per_image: list) -> list[Problem]:
    """A ``void_dataset`` error when every checked annotation's PNG was void."""
    void = sum(any(p.code == "void_png" for p in found) for found in per_image)
    if num_annotations and void == num_annotations:
        msg = f"all {void} PNGs are void: no labelled pixel to train on or evaluate"
        return [Problem(ERROR, "void_dataset", json_file, None, msg)]
    return []


def ground_truth_problems(
    data: dict, json_file: str, panoptic_root: str, workers: int = 1
) -> list[Problem]:
    """JSON problems plus :func:`annotation_problems` of every well-formed annotation.

    Checks what PQ depends on (no image files, no ``bbox``); ``validate_panoptic_dataset``
    checks the same and more.
    """
    problems = panoptic_json_problems(data, json_file, panoptic_root, geometry=True)
    if any(p.code == "json_unreadable" for p in problems):
        return problems
    sizes = {
        img["id"]: (img["height"], img["width"])
        for img in data["images"]
        if isinstance(img, dict)
        and all(type(img.get(k)) is int for k in ("height", "width"))
        and type(img.get("id")) in (int, str)
    }
    annotations = [a for a in data["annotations"] if well_formed_annotation(a)]

    def check(ann: dict) -> list[Problem]:
        png = os.path.join(panoptic_root, ann["file_name"])
        return annotation_problems(ann, png, sizes.get(ann["image_id"]))

    per_image = _map(check, annotations, workers)
    for found in per_image:
        problems += found
    return problems + dataset_level_problems(json_file, len(annotations), per_image)


def _map(fn, items: list, workers: int) -> list:
    if workers > 1 and len(items) > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="gt-check") as pool:
            return list(pool.map(fn, items))
    return [fn(x) for x in items]


def well_formed_segment(seg: Any) -> bool:
    """Fields the PNG checks need have the right types (else json_checks reported them)."""
    return isinstance(seg, dict) and type(seg.get("id")) is int


def well_formed_annotation(ann: Any) -> bool:
    if not isinstance(ann, dict) or not isinstance(ann.get("segments_info"), list):
        return False
    return (
        type(ann.get("image_id")) in (int, str)
        and isinstance(ann.get("file_name"), str)
        and all(well_formed_segment(s) for s in ann["segments_info"])
    )


_CACHE: dict[tuple, list[Problem]] = {}
_CACHE_LOCK = threading.Lock()


def _file_state(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def check_ground_truth(
    json_file: str, panoptic_root: str, workers: int = 1, purpose: str = "PQ"
) -> list[Problem]:
    """Refuse a panoptic ground truth that PQ would score wrongly; log its warnings.

    Decodes every PNG once per process and file state: later calls for unchanged files (periodic
    evaluation, the final evaluation after training) only ``stat`` the files.

    Args:
        json_file, panoptic_root: the COCO-panoptic JSON and its PNG folder.
        workers: threads decoding PNGs.
        purpose: named in the log ("PQ", "training", ...).
    Returns:
        the warnings.
    Raises:
        FileNotFoundError: naming the JSON when it does not exist.
        GroundTruthError: (a ``ValueError``) listing every error with file, segment and values.
    """
    data = read_json(json_file, "panoptic json")
    annotations = data.get("annotations") if isinstance(data, dict) else None
    pngs = [
        os.path.join(panoptic_root, a["file_name"])
        for a in annotations or []
        if isinstance(a, dict) and isinstance(a.get("file_name"), str)
    ]
    key = (
        os.path.abspath(json_file),
        _file_state(json_file),
        os.path.abspath(panoptic_root),
        hash(tuple(_file_state(p) for p in pngs)),
    )
    with _CACHE_LOCK:
        problems = _CACHE.get(key)
    if problems is None:
        problems = ground_truth_problems(data, json_file, panoptic_root, workers)
        with _CACHE_LOCK:
            _CACHE[key] = problems
        _log_warnings(json_file, [p for p in problems if p.level == WARNING], purpose)
    errors = [p for p in problems if p.level == ERROR]
    if errors:
        raise GroundTruthError(json_file, errors)
    return [p for p in problems if p.level == WARNING]


def _log_warnings(json_file: str, warnings: list[Problem], purpose: str) -> None:
    by_code: dict[str, list[Problem]] = {}
    for p in warnings:
        by_code.setdefault(p.code, []).append(p)
    for code, found in by_code.items():
        files = sorted({os.path.basename(p.file) for p in found})
        shown = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
        logger.warning(
            f"{json_file}: {len(found)} ground-truth segment(s)/image(s) with [{code}] affect "
            f"{purpose} (in {len(files)} PNG(s): {shown}): {found[0]}"
        )
