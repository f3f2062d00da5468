"""Builtin COCO, Cityscapes and ADE20K panoptic datasets, registered with
:func:`register_panoptic_dataset` when their files exist under ``$DETECTRON2_DATASETS``.

The names end in ``_ext`` so they never collide with detectron2's own builtin names (whose
metadata follows other conventions); all metadata is derived from each JSON's categories.

Names and files (relative to ``$DETECTRON2_DATASETS``, default ``./datasets``):

* ``coco_2017_{train,val}_panoptic_ext``: ``coco/{train,val}2017/``,
  ``coco/panoptic_{train,val}2017/``, ``coco/annotations/panoptic_{train,val}2017.json``;
* ``cityscapes_fine_panoptic_{train,val}_ext``: ``cityscapes/leftImg8bit/{train,val}/<city>/``,
  ``cityscapes/gtFine/cityscapes_panoptic_{train,val}/`` and ``.json`` (made by cityscapesscripts'
  ``createPanopticImgs``);
* ``ade20k_panoptic_{train,val}_ext``: ``ADEChallengeData2016/images/{training,validation}/``,
  ``ADEChallengeData2016/ade20k_panoptic_{train,val}/`` and ``.json``.

Optional derived files add evaluators: a things-as-one semantic folder (``sem_seg_root``,
mIoU) and an instances JSON (``json_file``, box/mask AP); ``BUILTIN_PANOPTIC_SPLITS`` gives
their paths and ``tools/convert_dataset.py to-separated`` makes them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog

from .register import load_panoptic_json, register_panoptic_dataset

__all__ = ["BUILTIN_PANOPTIC_SPLITS", "register_builtin_panoptic_datasets"]

logger = logging.getLogger(__name__)

# name -> (image_root, panoptic_root, panoptic_json, optional sem_seg_root, optional instances
# json, image layout). Layout "city" means images live in <image_root>/<city>/<file_name>.
BUILTIN_PANOPTIC_SPLITS: dict[str, tuple[str, str, str, str, str, str]] = {}
for _split in ("train", "val"):
    BUILTIN_PANOPTIC_SPLITS[f"coco_2017_{_split}_panoptic_ext"] = (
        f"coco/{_split}2017",
        f"coco/panoptic_{_split}2017",
        f"coco/annotations/panoptic_{_split}2017.json",
        f"coco/panoptic_stuff_{_split}2017",  # detectron2's prepare_panoptic_fpn.py names it so
        f"coco/annotations/instances_{_split}2017.json",
        "flat",
    )
    BUILTIN_PANOPTIC_SPLITS[f"cityscapes_fine_panoptic_{_split}_ext"] = (
        f"cityscapes/leftImg8bit/{_split}",
        f"cityscapes/gtFine/cityscapes_panoptic_{_split}",
        f"cityscapes/gtFine/cityscapes_panoptic_{_split}.json",
        f"cityscapes/gtFine/cityscapes_panoptic_{_split}_stuff",
        f"cityscapes/gtFine/cityscapes_panoptic_{_split}_instances.json",
        "city",
    )
    _ade = {"train": "training", "val": "validation"}[_split]
    BUILTIN_PANOPTIC_SPLITS[f"ade20k_panoptic_{_split}_ext"] = (
        f"ADEChallengeData2016/images/{_ade}",
        f"ADEChallengeData2016/ade20k_panoptic_{_split}",
        f"ADEChallengeData2016/ade20k_panoptic_{_split}.json",
        f"ADEChallengeData2016/ade20k_panoptic_{_split}_stuff",
        f"ADEChallengeData2016/ade20k_panoptic_{_split}_instances.json",
        "flat",
    )


def _city_loader(panoptic_json: str, image_root: str, panoptic_root: str, sem_seg_root: str | None):
    """Cityscapes keeps images in per-city folders: ``frankfurt_000000_000294_leftImg8bit.png``
    lives in ``<image_root>/frankfurt/``."""

    def load() -> list[dict[str, Any]]:
        records = load_panoptic_json(panoptic_json, image_root, panoptic_root, sem_seg_root)
        for r in records:
            base = os.path.basename(r["file_name"])
            r["file_name"] = os.path.join(image_root, base.split("_")[0], base)
        return records

    return load


def register_builtin_panoptic_datasets(root: str | None = None) -> list[str]:
    """Register every builtin split whose JSON exists under ``root``; return the names.

    Args:
        root: dataset root; ``$DETECTRON2_DATASETS`` (default ``datasets``) when omitted.
    """
    root = root or os.getenv("DETECTRON2_DATASETS", "datasets")
    registered = []
    for name, (images, pngs, json_file, sem, inst, layout) in BUILTIN_PANOPTIC_SPLITS.items():
        paths = [os.path.join(root, p) for p in (images, pngs, json_file, sem, inst)]
        image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json = paths
        if not os.path.isfile(panoptic_json):
            continue
        sem_seg_root = sem_seg_root if os.path.isdir(sem_seg_root) else None
        instances_json = instances_json if os.path.isfile(instances_json) else None
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        loader = None
        if layout == "city":
            loader = _city_loader(panoptic_json, image_root, panoptic_root, sem_seg_root)
        register_panoptic_dataset(
            name,
            image_root,
            panoptic_root,
            panoptic_json,
            sem_seg_root=sem_seg_root,
            instances_json=instances_json,
            loader=loader,
        )
        registered.append(name)
    if registered:
        logger.info("Registered builtin panoptic datasets under %s: %s", root, registered)
    return registered


# Like detectron2's builtin datasets: available as soon as the package is imported.
register_builtin_panoptic_datasets()
