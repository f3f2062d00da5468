"""Register a dataset in the standard COCO-panoptic format (PNG + JSON) with detectron2.

All metadata (thing/stuff classes, colors, id maps) is derived from the JSON's ``categories``, so
the one call below is all a user needs; :class:`~panoptic_ext.data.PanopticDatasetMapper` builds
every training target from the same files.
"""

import json
import logging
import os
from collections.abc import Callable
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["register_panoptic_dataset", "metadata_from_categories", "load_panoptic_json"]

logger = logging.getLogger(__name__)

# Color drawn for the merged "things" entry of stuff_classes (index 0 of the separated convention).
_THINGS_COLOR = (0, 0, 0)


def metadata_from_categories(categories: list[dict[str, Any]], source: str = "") -> dict[str, Any]:
    """Build detectron2 metadata from COCO-panoptic ``categories``.

    Follows detectron2's *separated* convention, which ``PanopticFPN`` and
    ``COCOPanopticEvaluator`` expect: things -> contiguous 0..T-1; ``stuff_classes[0]`` is the
    merged "things" class and stuff -> 1..S; ``stuff_dataset_id_to_contiguous_id`` holds ``{0: 0}``.

    Raises:
        ValueError: naming ``source`` and the entry when an id repeats, is 0 (reserved for the
            merged things class), or ``isthing`` is missing.
    """
    seen: set[int] = set()
    for cat in categories:
        if "isthing" not in cat:
            raise ValueError(
                f"{source}: category {cat.get('id')} ({cat.get('name')}) lacks 'isthing'"
            )
        if cat["id"] in seen:
            raise ValueError(f"{source}: category id {cat['id']} appears more than once")
        if cat["id"] == 0:
            raise ValueError(f"{source}: category id 0 is reserved for void / merged things")
        seen.add(cat["id"])
    things = [c for c in categories if c["isthing"]]
    stuff = [c for c in categories if not c["isthing"]]

    def color(cat: dict[str, Any]) -> tuple[int, int, int]:
        return tuple(cat.get("color", (128, 128, 128)))

    stuff_map = {c["id"]: i + 1 for i, c in enumerate(stuff)}
    stuff_map[0] = 0
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [color(c) for c in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_classes": ["things"] + [c["name"] for c in stuff],
        "stuff_colors": [_THINGS_COLOR] + [color(c) for c in stuff],
        "stuff_dataset_id_to_contiguous_id": stuff_map,
    }


def load_panoptic_json(
    panoptic_json: str, image_root: str, panoptic_root: str, sem_seg_root: str | None = None
) -> list[dict[str, Any]]:
    """Read a COCO-panoptic JSON into detectron2 dataset dicts.

    Each dict has ``file_name``, ``image_id``, ``height``, ``width``, ``pan_seg_file_name`` and
    ``segments_info`` (dataset category ids, as in the file; the mapper maps them), plus
    ``sem_seg_file_name`` when ``sem_seg_root`` (derived things-as-one PNGs) is given.
    """
    if not os.path.isfile(panoptic_json):
        raise FileNotFoundError(f"panoptic json not found: {panoptic_json}")
    with open(panoptic_json) as f:
        data = json.load(f)
    images = {img["id"]: img for img in data["images"]}
    records = []
    for ann in data["annotations"]:
        img = images.get(ann["image_id"])
        if img is None:
            raise ValueError(
                f"{panoptic_json}: annotation {ann['file_name']} names unknown "
                f"image_id {ann['image_id']}"
            )
        record = {
            "file_name": os.path.join(image_root, img["file_name"]),
            "image_id": ann["image_id"],
            "height": img["height"],
            "width": img["width"],
            "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
            "segments_info": ann["segments_info"],
        }
        if sem_seg_root is not None:
            record["sem_seg_file_name"] = os.path.join(sem_seg_root, ann["file_name"])
        records.append(record)
    if not records:
        logger.warning("%s holds no annotations", panoptic_json)
    return records


def register_panoptic_dataset(
    name: str,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    *,
    categories: list[dict[str, Any]] | None = None,
    sem_seg_root: str | None = None,
    instances_json: str | None = None,
    loader: Callable[[], list[dict[str, Any]]] | None = None,
    **extra_metadata: Any,
) -> None:
    """Register ``name`` in ``DatasetCatalog`` / ``MetadataCatalog`` from COCO-panoptic files.

    Args:
        name: dataset name used in ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        image_root: folder of the images (``images[*].file_name`` is relative to it).
        panoptic_root: folder of the panoptic PNGs (``annotations[*].file_name``).
        panoptic_json: the COCO-panoptic JSON.
        categories: the ``categories`` list; read from ``panoptic_json`` when omitted (pass it when
            the JSON does not exist yet, e.g. for a generated dataset).
        sem_seg_root: optional folder of derived things-as-one semantic PNGs; enables detectron2's
            ``SemSegEvaluator`` (mIoU).
        instances_json: optional COCO instances JSON; enables ``COCOEvaluator`` (box/mask AP).
        loader: optional function producing the dataset dicts (defaults to reading the JSON).
        extra_metadata: more metadata fields.
    """
    if categories is None:
        if not os.path.isfile(panoptic_json):
            raise FileNotFoundError(f"{name}: panoptic json not found: {panoptic_json}")
        with open(panoptic_json) as f:
            categories = json.load(f)["categories"]
    meta = metadata_from_categories(categories, source=panoptic_json)
    if loader is None:

        def loader() -> list[dict[str, Any]]:
            return load_panoptic_json(panoptic_json, image_root, panoptic_root, sem_seg_root)

    DatasetCatalog.register(name, loader)
    optional = {"sem_seg_root": sem_seg_root, "json_file": instances_json}
    MetadataCatalog.get(name).set(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        categories=categories,
        **{k: v for k, v in optional.items() if v is not None},
        **meta,
        **extra_metadata,
    )
