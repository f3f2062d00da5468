"""Converters between COCO-panoptic and the formats people have or need.

* :func:`instances_semantic_to_panoptic`: a COCO *instances* JSON (thing masks as polygons or
  RLE) plus per-image *semantic* label PNGs (stuff category ids) -> COCO-panoptic PNGs + JSON.
  Instance masks that overlap are handled by an explicit ``overlap`` policy:

  ``"fail"`` (default)
      raise ``ValueError`` naming the image and the annotation ids that overlap;
  ``"skip"``
      pixels claimed by two or more instances become void (ignored by training and PQ); every
      instance keeps its other pixels;
  ``"area"`` (resolve by area)
      overlapping pixels go to the smallest instance (small objects are usually in front).

  Crowd annotations never take pixels from a non-crowd instance and are merged into one crowd
  segment per category and image (panopticapi only honours one). Things are painted over
  stuff; semantic pixels with an ignore value or a thing id that no instance covers are void.
  Instances or stuff left without a pixel are dropped and counted in the returned report.

* :func:`panoptic_to_separated`: COCO-panoptic -> detectron2's "separated" format, a COCO
  instances JSON of the thing segments (RLE) and things-as-one semantic PNGs (things -> 0, stuff
  -> 1..S in category order, void -> 255), what ``register_coco_panoptic_separated`` reads.
  Labels come from the same functions as the mapper's targets (``panoptic_targets``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from ..structures.boxes import segment_boxes
from ..structures.panoptic_ids import id_to_rgb
from ..structures.sem_seg_format import SemSegFormat
from .json_file import read_json
from .metadata import metadata_from_categories
from .panoptic_io import read_panoptic_png
from .panoptic_targets import category_labels, segment_index_map, semantic_lookup

__all__ = [
    "OVERLAP_POLICIES",
    "instances_semantic_to_panoptic",
    "merge_image_to_panoptic",
    "panoptic_to_separated",
    "separate_image",
]

OVERLAP_POLICIES = ("fail", "skip", "area")
# Values of a semantic PNG that mean "no label" unless the caller says otherwise.
DEFAULT_IGNORE_VALUES = (0, 255)


def _decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a COCO ``segmentation`` (polygons, uncompressed or compressed RLE)."""
    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
    elif isinstance(segm.get("counts"), list):
        rle = mask_util.frPyObjects(segm, height, width)
    else:
        rle = segm
    return mask_util.decode(rle).astype(bool)


def _encode_rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def merge_image_to_panoptic(
    semantic: np.ndarray,
    instances: Sequence[dict[str, Any]],
    thing_ids: set[int],
    stuff_ids: set[int],
    overlap: str = "fail",
    ignore_values: Sequence[int] = DEFAULT_IGNORE_VALUES,
    image_name: str = "",
) -> tuple[np.ndarray, list[dict[str, Any]], Counter]:
    """Merge one image's instance masks and semantic labels into a panoptic id map.

    Args:
        semantic: (H, W) integer stuff category ids.
        instances: COCO annotations of the image (``id``, ``category_id``, ``segmentation``,
            ``iscrowd``).
        thing_ids, stuff_ids: dataset category ids of things and of stuff.
        overlap: one of :data:`OVERLAP_POLICIES` (see the module docstring).
        ignore_values: semantic values that mean void.
        image_name: named in error messages.
    Returns:
        ids: (H, W) int64 segment ids 1..K (0 = void); segments_info (``id``, ``category_id``,
        ``iscrowd``, ``area``, ``bbox``); a Counter of dropped / overlapping items.
    Raises:
        ValueError: on an unknown policy, overlapping instances under ``"fail"``, an instance of
            a non-thing category, or semantic values that are neither stuff, thing nor ignored.
    """
    if overlap not in OVERLAP_POLICIES:
        raise ValueError(f"overlap policy must be one of {OVERLAP_POLICIES}, got {overlap!r}")
    values = _check_labels(semantic, instances, thing_ids, stuff_ids, ignore_values, image_name)
    report: Counter = Counter()
    ids, segments, clash = _paint_instances(semantic.shape, instances, overlap, report, image_name)
    blocked = (ids > 0) | clash  # pixels skipped for overlapping stay void
    _paint_crowds(ids, segments, blocked, instances)
    # Stuff on the remaining pixels.
    for cat in sorted(stuff_ids & set(values.tolist())):
        m = ~blocked & (semantic == cat)
        ids[m] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": int(cat)})
    return _drop_empty_segments(ids, segments, thing_ids, report)


def _check_labels(
    semantic: np.ndarray,
    instances: Sequence[dict[str, Any]],
    thing_ids: set[int],
    stuff_ids: set[int],
    ignore_values: Sequence[int],
    image_name: str,
) -> np.ndarray:
    """The semantic values present; raises on instances of non-thing categories and on values
    that are neither stuff, thing nor ignored."""
    bad_cats = sorted({a["category_id"] for a in instances if a["category_id"] not in thing_ids})
    if bad_cats:
        raise ValueError(f"{image_name}: instance annotations of non-thing categories {bad_cats}")
    values = np.unique(semantic)
    unknown = sorted(set(values.tolist()) - stuff_ids - thing_ids - set(ignore_values))
    if unknown:
        raise ValueError(
            f"{image_name}: semantic values {unknown[:20]} are not stuff, thing or ignore values"
        )
    return values


def _paint_instances(
    shape: tuple[int, int],
    instances: Sequence[dict[str, Any]],
    overlap: str,
    report: Counter,
    image_name: str,
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """Non-crowd instances into an (H, W) int64 id map (ids 1..K in painting order), their
    segments, and the (H, W) bool map of pixels claimed by more than one instance."""
    h, w = shape
    ids = np.zeros((h, w), np.int64)
    clash = np.zeros((h, w), bool)
    segments: list[dict[str, Any]] = []
    normal = [a for a in instances if not a.get("iscrowd", 0)]
    if not normal:
        return ids, segments, clash
    stack = np.stack([_decode_segmentation(a["segmentation"], h, w) for a in normal])
    clash = stack.sum(0) > 1
    if clash.any():
        report["overlapping_pixels"] += int(clash.sum())
        if overlap == "fail":
            culprits = [a["id"] for a, m in zip(normal, stack) if (m & clash).any()]
            raise ValueError(
                f"{image_name}: instance annotations {culprits} overlap on "
                f"{int(clash.sum())} pixels; choose an overlap policy ('skip' or 'area')"
            )
    # Paint the largest first so that, with "area", smaller instances end on top.
    for i in np.argsort(-stack.reshape(len(normal), -1).sum(1), kind="stable"):
        ids[stack[i]] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": normal[i]["category_id"]})
    if overlap == "skip":
        ids[clash] = 0
    return ids, segments, clash


def _paint_crowds(
    ids: np.ndarray,
    segments: list[dict[str, Any]],
    blocked: np.ndarray,
    instances: Sequence[dict[str, Any]],
) -> None:
    """One crowd segment per category, only on pixels no instance took (``ids``, ``segments``
    and ``blocked`` are updated in place)."""
    h, w = ids.shape
    crowd: dict[int, np.ndarray] = {}
    for a in instances:
        if a.get("iscrowd", 0):
            m = _decode_segmentation(a["segmentation"], h, w)
            crowd[a["category_id"]] = crowd.get(a["category_id"], np.zeros((h, w), bool)) | m
    for cat, m in crowd.items():
        m &= ~blocked
        ids[m] = len(segments) + 1
        blocked |= m
        segments.append({"id": len(segments) + 1, "category_id": cat, "iscrowd": 1})


def _drop_empty_segments(
    ids: np.ndarray, segments: list[dict[str, Any]], thing_ids: set[int], report: Counter
) -> tuple[np.ndarray, list[dict[str, Any]], Counter]:
    """Segments left without pixels are dropped (counted in ``report``); the others are
    renumbered 1..K' and get ``area``, ``bbox`` and ``iscrowd``."""
    areas, boxes = segment_boxes(ids, len(segments))  # ids are already positions 1..K
    kept, remap = [], np.zeros(len(segments) + 1, np.int64)
    for i, seg in enumerate(segments):
        if areas[i] == 0:
            report["dropped_thing" if seg["category_id"] in thing_ids else "dropped_stuff"] += 1
            continue
        remap[i + 1] = len(kept) + 1
        seg = {"iscrowd": 0, **seg, "id": len(kept) + 1}
        kept.append(dict(seg, area=int(areas[i]), bbox=boxes[i].tolist()))
    return remap[ids], kept, report


def instances_semantic_to_panoptic(
    instances_json: str,
    semantic_root: str,
    stuff_categories: Sequence[dict[str, Any]],
    out_json: str,
    out_png_root: str,
    overlap: str = "fail",
    ignore_values: Sequence[int] = DEFAULT_IGNORE_VALUES,
) -> Counter:
    """Convert COCO instances + semantic PNGs into a COCO-panoptic dataset.

    Args:
        instances_json: COCO instances JSON; its ``categories`` become the thing categories.
        semantic_root: one single-channel PNG per image, named like the image with ``.png``,
            holding stuff category ids (thing ids and ``ignore_values`` are allowed).
        stuff_categories: ``{"id", "name"}`` (optionally ``color``) of the stuff classes.
        out_json, out_png_root: where the panoptic JSON and PNGs are written.
        overlap: overlap policy, see the module docstring.
    Returns:
        a Counter report (images, segments, dropped items, overlapping pixels).
    Raises:
        FileNotFoundError / ValueError: naming the file of a missing or bad semantic PNG.
    """
    data = read_json(instances_json, "instances json")
    things = [dict(c, isthing=1) for c in data["categories"]]
    stuff = [dict(c, isthing=0) for c in stuff_categories]
    categories = things + stuff
    metadata_from_categories(categories, source=instances_json)  # ids unique, non-zero
    thing_ids, stuff_ids = {c["id"] for c in things}, {c["id"] for c in stuff}
    by_image: dict[Any, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    os.makedirs(out_png_root, exist_ok=True)
    annotations, report = [], Counter()
    for img in data["images"]:
        stem = os.path.splitext(img["file_name"])[0]
        sem_path = os.path.join(semantic_root, stem + ".png")
        if not os.path.isfile(sem_path):
            raise FileNotFoundError(f"semantic PNG for image {img['id']} not found: {sem_path}")
        semantic = np.asarray(Image.open(sem_path))
        if semantic.ndim != 2 or semantic.shape != (img["height"], img["width"]):
            raise ValueError(
                f"{sem_path}: need a single-channel {img['height']}x{img['width']} label PNG, "
                f"got shape {semantic.shape}"
            )
        ids, segments, rep = merge_image_to_panoptic(
            semantic,
            by_image.get(img["id"], []),
            thing_ids,
            stuff_ids,
            overlap,
            ignore_values,
            sem_path,
        )
        report += rep
        report["images"] += 1
        report["segments"] += len(segments)
        Image.fromarray(id_to_rgb(ids)).save(os.path.join(out_png_root, stem + ".png"))
        annotations.append(
            {"image_id": img["id"], "file_name": stem + ".png", "segments_info": segments}
        )
    os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(
            {"images": data["images"], "annotations": annotations, "categories": categories}, f
        )
    return report


def separate_image(
    ids: np.ndarray,
    segments: Sequence[dict[str, Any]],
    metadata: dict[str, Any],
    image_id: Any,
    first_annotation_id: int,
    ignore_value: int = 255,
    file_name: str = "",
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Split one panoptic image into a things-as-one semantic map and instance annotations.

    Args:
        ids: (H, W) integer segment ids; segments: its ``segments_info`` (dataset ids);
        metadata: :func:`~panoptic_ext.data.metadata.metadata_from_categories` output.
    Returns:
        semantic: (H, W) uint8 (things 0, stuff 1..S, void ``ignore_value``); COCO instance
        annotations (RLE) of the thing segments, ids from ``first_annotation_id``.
    """
    index = segment_index_map(ids, [s["id"] for s in segments], file_name)
    is_thing, contiguous = category_labels(
        [s["category_id"] for s in segments],
        metadata["thing_dataset_id_to_contiguous_id"],
        metadata["stuff_dataset_id_to_contiguous_id"],
        file_name,
    )
    lut = semantic_lookup(
        is_thing,
        contiguous,
        len(metadata["thing_classes"]),
        SemSegFormat.THINGS_AS_ONE,
        ignore_value,
    )
    semantic = lut[index].astype(np.uint8)
    areas, boxes = segment_boxes(index, len(segments))
    annotations = []
    for i in np.nonzero(is_thing & (areas > 0))[0]:
        seg = segments[i]
        annotations.append(
            {
                "id": first_annotation_id + len(annotations),
                "image_id": image_id,
                "category_id": seg["category_id"],
                "segmentation": _encode_rle(index == i + 1),
                "area": int(areas[i]),
                "bbox": boxes[i].tolist(),
                "iscrowd": int(seg.get("iscrowd", 0)),
            }
        )
    return semantic, annotations


def panoptic_to_separated(
    panoptic_json: str,
    panoptic_root: str,
    out_instances_json: str,
    out_semantic_root: str,
    ignore_value: int = 255,
) -> Counter:
    """Write detectron2's "separated" files for a COCO-panoptic dataset.

    Returns:
        a Counter report (images, instances).
    """
    data = read_json(panoptic_json, "panoptic json")
    categories = data["categories"]
    if sum(1 for c in categories if not c.get("isthing")) > 254:
        raise ValueError(f"{panoptic_json}: more than 254 stuff classes do not fit a uint8 PNG")
    meta = metadata_from_categories(categories, source=panoptic_json)
    os.makedirs(out_semantic_root, exist_ok=True)
    instances, report = [], Counter()
    for ann in data["annotations"]:
        png = os.path.join(panoptic_root, ann["file_name"])
        semantic, anns = separate_image(
            read_panoptic_png(png),
            ann["segments_info"],
            meta,
            ann["image_id"],
            len(instances) + 1,
            ignore_value,
            png,
        )
        Image.fromarray(semantic).save(os.path.join(out_semantic_root, ann["file_name"]))
        instances += anns
        report["images"] += 1
    report["instances"] = len(instances)
    thing_categories = [c for c in categories if c.get("isthing")]
    os.makedirs(os.path.dirname(os.path.abspath(out_instances_json)), exist_ok=True)
    with open(out_instances_json, "w") as f:
        json.dump(
            {
                "images": data.get("images", []),
                "annotations": instances,
                "categories": thing_categories,
            },
            f,
        )
    return report
