"""Register a dataset in the standard COCO-panoptic format (PNG + JSON) with detectron2.

All metadata (thing/stuff classes, colors, id maps) is derived from the JSON's ``categories``, so
the one call below is all a user needs; :class:`~panoptic_ext.data.PanopticDatasetMapper` builds
every training target from the same files.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata

from ..json_checks import check_categories, read_panoptic_json
from ..json_file import read_json
from ..metadata import metadata_from_categories
from .lazy_metadata import set_lazy_metadata

__all__ = [
    "load_panoptic_json",
    "read_categories",
    "register_panoptic_dataset",
]

logger = logging.getLogger(__name__)

# The keys metadata_from_categories fills.
_METADATA_KEYS = (
    "thing_classes",
    "thing_colors",
    "thing_dataset_id_to_contiguous_id",
    "stuff_classes",
    "stuff_colors",
    "stuff_dataset_id_to_contiguous_id",
)


def load_panoptic_json(
    panoptic_json: str,
    image_root: str,
    panoptic_root: str,
    sem_seg_root: str | None = None,
    metadata: Mapping[str, Any] | Metadata | None = None,
) -> list[dict[str, Any]]:
    """Read a COCO-panoptic JSON into dataset dicts in detectron2's panoptic convention.

    Each dict has ``file_name``, ``image_id``, ``height``, ``width``, ``pan_seg_file_name`` and
    ``segments_info``, whose entries are those of the JSON with ``category_id`` replaced by its
    contiguous id and ``isthing`` added, as detectron2's ``load_coco_panoptic_json`` makes them
    (things 0..T-1, stuff 1..S: always read ``category_id`` together with ``isthing``); plus
    ``sem_seg_file_name`` when ``sem_seg_root`` (derived things-as-one PNGs) is given.

    The JSON is checked first (:func:`~panoptic_ext.data.json_checks.read_panoptic_json`:
    required keys, types, repeated ids / files, each image paired with its own PNG, not empty).

    Args:
        metadata: holds ``thing_dataset_id_to_contiguous_id`` and
            ``stuff_dataset_id_to_contiguous_id`` (a registered dataset's metadata); derived from
            the JSON's ``categories`` when omitted.
    Raises:
        DatasetJsonError: naming the JSON, the key and the value of a malformed entry;
        ValueError: naming the JSON, the annotation and the ids when an annotation names an
            unknown image or category.
    """
    data = read_panoptic_json(panoptic_json, panoptic_root)  # raises DatasetJsonError
    if metadata is None:
        metadata = metadata_from_categories(data["categories"], source=panoptic_json)
    contiguous = _ContiguousIds.of(metadata)
    images = {img["id"]: img for img in data["images"]}
    records = []
    for ann in data["annotations"]:
        img = images.get(ann["image_id"])
        if img is None:
            raise ValueError(
                f"{panoptic_json}: annotation {ann['file_name']} names unknown "
                f"image_id {ann['image_id']}"
            )
        where = f"{panoptic_json}: annotation {ann['file_name']}"
        record = {
            "file_name": os.path.join(image_root, img["file_name"]),
            "image_id": ann["image_id"],
            "height": img["height"],
            "width": img["width"],
            "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
            "segments_info": contiguous.convert(ann["segments_info"], where),
        }
        if sem_seg_root is not None:
            record["sem_seg_file_name"] = os.path.join(sem_seg_root, ann["file_name"])
        records.append(record)
    if not records:
        logger.warning("%s holds no annotations", panoptic_json)
    return records


@dataclass(frozen=True)
class _ContiguousIds:
    """Dataset category id -> (contiguous id, isthing), from detectron2's two id maps."""

    things: dict[int, int]
    stuff: dict[int, int]

    @classmethod
    def of(cls, metadata: Mapping[str, Any] | Metadata) -> _ContiguousIds:
        things = metadata.get("thing_dataset_id_to_contiguous_id")
        stuff = metadata.get("stuff_dataset_id_to_contiguous_id")
        if things is None or stuff is None:
            raise ValueError(
                "metadata needs thing_dataset_id_to_contiguous_id and "
                "stuff_dataset_id_to_contiguous_id to convert category ids"
            )
        # 0 is the merged "things" class of the separated convention, never a dataset id.
        return cls(dict(things), {k: v for k, v in stuff.items() if k != 0})

    def convert(self, segments: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
        """Copies of ``segments`` with contiguous ``category_id`` and ``isthing``."""
        out = []
        for seg in segments:
            cat = seg.get("category_id")
            if cat in self.things:
                out.append({**seg, "category_id": self.things[cat], "isthing": True})
            elif cat in self.stuff:
                out.append({**seg, "category_id": self.stuff[cat], "isthing": False})
            else:
                raise ValueError(
                    f"{where}: segment {seg.get('id')} has category_id {cat!r}, which is not "
                    f"in the categories (things {sorted(self.things)}, stuff {sorted(self.stuff)})"
                )
        return out


def read_categories(panoptic_json: str) -> list[dict[str, Any]]:
    """The ``categories`` list of a COCO-panoptic JSON, without parsing the whole file if it can.

    COCO-style files end with ``"categories": [...]}``: when the file's tail has that shape, only
    the tail is decoded (milliseconds for a COCO-train-sized file instead of seconds); any other
    layout falls back to reading the whole JSON.

    Raises:
        FileNotFoundError: naming the file; ValueError (:class:`~panoptic_ext.data.json_file.
        JsonFileError` for an empty or invalid file): naming it when it has no ``categories``.
    """
    if not os.path.isfile(panoptic_json):
        raise FileNotFoundError(f"panoptic json not found: {panoptic_json}")
    categories = _categories_from_tail(panoptic_json)
    if categories is None:
        data = read_json(panoptic_json, "panoptic json")
        if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
            raise ValueError(f"{panoptic_json}: no 'categories' list at the top level")
        categories = data["categories"]
    return categories


_TAIL_BYTES = 1 << 20  # 1 MiB holds thousands of categories
_CATEGORIES_KEY = re.compile(rb'(?<!\\)"categories"\s*:\s*\[')


def _categories_from_tail(panoptic_json: str) -> list[dict[str, Any]] | None:
    """``categories`` when it is the top-level object's last member and fits the tail, else None.

    The list must be followed by nothing but the ``}`` that closes the top-level object, so a
    ``"categories"`` key nested elsewhere (or inside a string) is never taken for it.
    """
    with open(panoptic_json, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - _TAIL_BYTES))
        tail = f.read()
    matches = list(_CATEGORIES_KEY.finditer(tail))
    if not matches:
        return None
    text = tail[matches[-1].end() - 1 :].decode("utf-8", errors="strict")
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    if text[end:].strip() != "}" or not isinstance(value, list):
        return None
    return value


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
    check_files: Callable[[], None] | None = None,
    **extra_metadata: Any,
) -> None:
    """Register ``name`` in ``DatasetCatalog`` / ``MetadataCatalog`` from COCO-panoptic files.

    Nothing is read here: the class metadata is derived from the JSON's ``categories`` the first
    time it is used, and the dataset dicts are read when ``DatasetCatalog.get(name)`` is called.
    An existing entry of the same name is replaced.

    Args:
        name: dataset name used in ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        image_root: folder of the images (``images[*].file_name`` is relative to it).
        panoptic_root: folder of the panoptic PNGs (``annotations[*].file_name``).
        panoptic_json: the COCO-panoptic JSON.
        categories: the ``categories`` list; read from ``panoptic_json`` (lazily) when omitted.
        sem_seg_root: optional folder of derived things-as-one semantic PNGs (the dicts get
            ``sem_seg_file_name``; detectron2's ``SemSegEvaluator`` reads them; ours derives the
            same labels from the panoptic PNGs).
        instances_json: optional COCO instances JSON; enables ``COCOEvaluator`` (box/mask AP).
        loader: optional function producing the dataset dicts in detectron2's convention
            (defaults to :func:`load_panoptic_json` with this dataset's metadata).
        check_files: optional function called before the JSON is first read; it raises a
            ``FileNotFoundError`` that explains the expected layout (builtin datasets).
        extra_metadata: more metadata fields.
    """
    check = check_files or (lambda: None)
    if loader is None:

        def loader() -> list[dict[str, Any]]:
            # The registered metadata's id maps, so that dicts, mapper and evaluators agree.
            meta = MetadataCatalog.get(name)
            return load_panoptic_json(panoptic_json, image_root, panoptic_root, sem_seg_root, meta)

    def load() -> list[dict[str, Any]]:
        check()
        return loader()

    def derive() -> dict[str, Any]:
        check()
        cats = categories if categories is not None else read_categories(panoptic_json)
        check_categories(cats, panoptic_json)  # e.g. "isthing": "0" would make a stuff a thing
        return {"categories": cats, **metadata_from_categories(cats, source=panoptic_json)}

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, load)
    optional = {"sem_seg_root": sem_seg_root, "json_file": instances_json}
    set_lazy_metadata(
        name,
        derive,
        keys=("categories", *_METADATA_KEYS),
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **{k: v for k, v in optional.items() if v is not None},
        **extra_metadata,
    )
