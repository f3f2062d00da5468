"""Check a COCO-panoptic dataset (PNG + JSON + images) before training on it.

:func:`validate_panoptic_dataset` returns every problem it finds, each with the file and the id
involved, instead of stopping at the first one; ``tools/validate_dataset.py`` prints them and
exits non-zero on errors. The JSON-level problems are those the loader refuses the dataset for
(:mod:`panoptic_ext.data.json_checks`, the same code); images are checked as the mapper reads
them (size after EXIF orientation, pixel format); PNGs with the rules the evaluators and
training apply (:mod:`panoptic_ext.data.gt_checks`, the same code). Problem codes
(``Problem.code``):

========================  =======  ===================================================
code                      level    meaning
========================  =======  ===================================================
json_unreadable           error    the JSON cannot be read / lacks a top-level key
missing_key               error    an entry lacks a required key (``file_name``, ...)
bad_type                  error    a value of the wrong type (``"isthing": "0"``, ...)
no_categories             error    ``categories`` is empty
duplicate_category_id     error    two categories share an ``id``
missing_isthing           error    a category has no ``isthing`` (or not 0/1)
reserved_category_id      error    category id 0 (void / detectron2's merged things)
duplicate_image_id        error    two ``images`` entries share an ``id``
duplicate_image_file      error    two ``images`` entries share a ``file_name``
unknown_image_id          error    an annotation names an image id not in ``images``
duplicate_annotation      error    two annotations for the same image
duplicate_png             error    two annotations share a PNG ``file_name``
mismatched_png            error    an annotation's PNG is named after another image
no_annotation             warning  an image has no annotation
empty_dataset             error    no image has an annotation
missing_image             error    image file does not exist
unreadable_image          error    image file cannot be decoded
unsupported_image         error    pixel format not 8-bit RGB/gray/palette (16-bit...)
size_mismatch             error    image (after EXIF orientation) / PNG size differs
                                   from ``images`` height/width
missing_png               error    panoptic PNG does not exist
unreadable_png            error    panoptic PNG cannot be decoded
unsupported_png           error    label file is a JPEG / gray / 16-bit PNG (ids lost)
duplicate_segment_id      error    ``segments_info`` repeats an id
void_segment_id           error    a segment has id 0 (void in the PNG encoding)
unknown_category          error    a segment's ``category_id`` is not in ``categories``
unlabeled_png_id          error    the PNG holds an id that has no segment
empty_segment             error    a segment has no pixel in the PNG
area_mismatch             error    ``area`` differs from the PNG's pixel count
bad_area                  error    ``area`` NaN, infinite, negative or not a number
bbox_mismatch             error    ``bbox`` differs from the PNG's extent
missing_area              warning  a segment has no ``area`` (PQ evaluation needs it)
void_png                  warning  a PNG with no labelled pixel and no segment
void_dataset              error    every PNG is void
multiple_crowd            warning  >1 crowd segment of one category in an image
                                   (panopticapi only uses the last one)
class_count_mismatch      error    a model config's class count disagrees with the data
========================  =======  ===================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from ..utils.meta_arch import DatasetClasses, class_counts_for, mismatched_class_counts
from .gt_checks import annotation_problems, dataset_level_problems, well_formed_annotation
from .image_io import SUPPORTED_MODES, oriented_size
from .json_checks import ERROR, WARNING, Problem, category_problems, panoptic_json_problems
from .metadata import metadata_from_categories

__all__ = [
    "ERROR",
    "WARNING",
    "Problem",
    "category_problems",
    "check_config_class_counts",
    "validate_panoptic_dataset",
]


def _check_image(path: str, height: int | None, width: int | None, image_id: Any) -> list[Problem]:
    if not os.path.isfile(path):
        return [Problem(ERROR, "missing_image", path, image_id, "image file does not exist")]
    try:
        with Image.open(path) as img:
            img.verify()  # decodes the stream structure without keeping pixels
        with Image.open(path) as img:  # verify() leaves the image unusable
            mode, size = img.mode, oriented_size(img)  # the size the mapper sees
    except Exception as e:  # PIL raises many types for corrupt files
        return [Problem(ERROR, "unreadable_image", path, image_id, f"cannot decode: {e}")]
    if mode not in SUPPORTED_MODES:
        msg = f"pixel format {mode} is not 8-bit RGB, RGBA, gray or palette (the loader refuses it)"
        return [Problem(ERROR, "unsupported_image", path, image_id, msg)]
    if height is not None and width is not None and size != (width, height):
        msg = f"image is {size[0]}x{size[1]} (after EXIF orientation), JSON says {width}x{height}"
        return [Problem(ERROR, "size_mismatch", path, image_id, msg)]
    return []


def validate_panoptic_dataset(
    panoptic_json: str,
    image_root: str | None,
    panoptic_root: str,
    check_images: bool = True,
    workers: int = 1,
    image_files: dict[Any, str] | None = None,
) -> list[Problem]:
    """Every problem of a COCO-panoptic dataset (see the module docstring for the codes).

    Args:
        panoptic_json: the COCO-panoptic JSON.
        image_root: folder of ``images[*].file_name``; None skips the image checks.
        panoptic_root: folder of ``annotations[*].file_name``.
        check_images: open every image (header + stream check); off for a PNG/JSON-only check.
        workers: threads reading files.
        image_files: image id -> path, for layouts where ``image_root/file_name`` is not the
            path (e.g. Cityscapes' per-city folders; take it from the dataset dicts).
    Returns:
        the problems, errors and warnings, in file order.
    """
    try:
        with open(panoptic_json, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        return [Problem(ERROR, "json_unreadable", panoptic_json, None, f"{type(e).__name__}: {e}")]
    problems = panoptic_json_problems(data, panoptic_json, panoptic_root, geometry=True)
    if any(p.code == "json_unreadable" for p in problems):
        return problems
    image_by_id: dict[Any, dict] = {}
    for img in data["images"]:
        if _well_formed_image(img):
            image_by_id.setdefault(img["id"], img)
    annotations = [a for a in data["annotations"] if well_formed_annotation(a)]

    def check(ann: dict) -> list[Problem]:
        img = image_by_id.get(ann["image_id"], {})
        size = (img["height"], img["width"]) if img else None
        found = []
        if check_images and (image_root is not None or image_files) and img:
            if image_files and img.get("id") in image_files:
                path = image_files[img["id"]]
            else:
                path = os.path.join(image_root or "", img["file_name"])
            found += _check_image(path, img.get("height"), img.get("width"), img.get("id"))
        png = os.path.join(panoptic_root, ann["file_name"])
        return found + annotation_problems(ann, png, size, boxes=True)

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            per_annotation = list(pool.map(check, annotations))
    else:
        per_annotation = [check(a) for a in annotations]
    for found in per_annotation:
        problems += found
    return problems + dataset_level_problems(panoptic_json, len(annotations), per_annotation)


def _well_formed_image(img: Any) -> bool:
    """Fields the file checks need have the right types (else json_checks reported them)."""
    return (
        isinstance(img, dict)
        and type(img.get("id")) in (int, str)
        and isinstance(img.get("file_name"), str)
        and all(type(img.get(k)) is int for k in ("height", "width"))
    )


def check_config_class_counts(cfg: Any, categories: Sequence[dict]) -> list[Problem]:
    """Class counts in a model config (``MODEL.ROI_HEADS.NUM_CLASSES``,
    ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` per ``INPUT.SEM_SEG_FORMAT``, ...) against the categories.

    The trainer's own rule (the meta-architecture table, :mod:`panoptic_ext.utils.meta_arch`)
    decides what is expected.
    """
    try:
        meta = metadata_from_categories(list(categories))
    except ValueError:
        return []  # the category problems are already reported by validate_panoptic_dataset
    classes = DatasetClasses(len(meta["thing_classes"]), len(meta["stuff_classes"]) - 1)
    problems = []
    for key, have, want in mismatched_class_counts(cfg, class_counts_for(cfg, classes)):
        msg = f"config has {key} = {have}, the dataset's categories imply {want}"
        problems.append(Problem(ERROR, "class_count_mismatch", "config", key, msg))
    return problems
