"""Builtin COCO, Cityscapes, ADE20K and Mapillary Vistas panoptic datasets, registered with
:func:`register_panoptic_dataset` when the package is imported, without reading anything: the
JSON is read the first time a dataset is used, and a dataset whose files are missing then raises
a ``FileNotFoundError`` naming the files it expected (layouts: ``datasets/README.md``).

The names end in ``_ext`` so they never collide with detectron2's own builtin names (whose
metadata follows other conventions); all metadata is derived from each JSON's categories.

Names and files (relative to ``$DETECTRON2_DATASETS``, default ``./datasets``):

* ``coco_2017_{train,val}_panoptic_ext``: ``coco/{train,val}2017/``,
  ``coco/panoptic_{train,val}2017/``, ``coco/annotations/panoptic_{train,val}2017.json``;
* ``cityscapes_fine_panoptic_{train,val}_ext``: ``cityscapes/leftImg8bit/{train,val}/<city>/``,
  ``cityscapes/gtFine/cityscapes_panoptic_{train,val}/`` and ``.json`` (made by cityscapesscripts'
  ``createPanopticImgs``);
* ``ade20k_panoptic_{train,val}_ext``: ``ADEChallengeData2016/images/{training,validation}/``,
  ``ADEChallengeData2016/ade20k_panoptic_{train,val}/`` and ``.json``;
* ``mapillary_vistas_panoptic_{train,val}_ext``: ``mapillary_vistas/{training,validation}/images/``,
  ``mapillary_vistas/{training,validation}/panoptic/`` (PNGs and ``panoptic_2018.json``).

Optional derived files, used when they exist at registration: an instances JSON (``json_file``:
box/mask AP) and a things-as-one semantic folder (``sem_seg_root``: for detectron2's
``SemSegEvaluator``; our mIoU derives its labels from the panoptic PNGs);
``BUILTIN_PANOPTIC_SPLITS`` gives their paths and ``tools/convert_dataset.py to-separated`` makes
them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from detectron2.data import MetadataCatalog

from .register import load_panoptic_json, register_panoptic_dataset

__all__ = ["BUILTIN_PANOPTIC_SPLITS", "BuiltinSplit", "register_builtin_panoptic_datasets"]

logger = logging.getLogger(__name__)

_LAYOUT_DOC = "datasets/README.md of panoptic_ext"


@dataclass(frozen=True)
class BuiltinSplit:
    """Where one builtin split's files live, relative to the dataset root."""

    image_root: str
    panoptic_root: str
    panoptic_json: str
    sem_seg_root: str  # optional derived things-as-one PNGs (detectron2's SemSegEvaluator)
    instances_json: str  # optional derived instances JSON (box/mask AP)
    city_folders: bool = False  # Cityscapes: images in <image_root>/<city>/<file_name>


def _splits() -> dict[str, BuiltinSplit]:
    splits = {}
    for split in ("train", "val"):
        splits[f"coco_2017_{split}_panoptic_ext"] = BuiltinSplit(
            f"coco/{split}2017",
            f"coco/panoptic_{split}2017",
            f"coco/annotations/panoptic_{split}2017.json",
            f"coco/panoptic_stuff_{split}2017",  # detectron2's prepare_panoptic_fpn.py names it so
            f"coco/annotations/instances_{split}2017.json",
        )
        gt = "cityscapes/gtFine"
        splits[f"cityscapes_fine_panoptic_{split}_ext"] = BuiltinSplit(
            f"cityscapes/leftImg8bit/{split}",
            f"{gt}/cityscapes_panoptic_{split}",
            f"{gt}/cityscapes_panoptic_{split}.json",
            f"{gt}/cityscapes_panoptic_{split}_stuff",
            f"{gt}/cityscapes_panoptic_{split}_instances.json",
            city_folders=True,
        )
        ade, folder = "ADEChallengeData2016", {"train": "training", "val": "validation"}[split]
        splits[f"ade20k_panoptic_{split}_ext"] = BuiltinSplit(
            f"{ade}/images/{folder}",
            f"{ade}/ade20k_panoptic_{split}",
            f"{ade}/ade20k_panoptic_{split}.json",
            f"{ade}/ade20k_panoptic_{split}_stuff",
            f"{ade}/ade20k_panoptic_{split}_instances.json",
        )
        vistas = f"mapillary_vistas/{folder}"  # the v1.2 panoptic release (65 classes)
        splits[f"mapillary_vistas_panoptic_{split}_ext"] = BuiltinSplit(
            f"{vistas}/images",
            f"{vistas}/panoptic",
            f"{vistas}/panoptic/panoptic_2018.json",
            f"{vistas}/panoptic_stuff",
            f"{vistas}/panoptic_instances.json",
        )
    return splits


BUILTIN_PANOPTIC_SPLITS: dict[str, BuiltinSplit] = _splits()


def _city_loader(
    name: str, panoptic_json: str, image_root: str, panoptic_root: str, sem_seg_root: str | None
):
    """Cityscapes keeps images in per-city folders: ``frankfurt_000000_000294_leftImg8bit.png``
    lives in ``<image_root>/frankfurt/``."""

    def load() -> list[dict[str, Any]]:
        meta = MetadataCatalog.get(name)
        records = load_panoptic_json(panoptic_json, image_root, panoptic_root, sem_seg_root, meta)
        for r in records:
            base = os.path.basename(r["file_name"])
            r["file_name"] = os.path.join(image_root, base.split("_")[0], base)
        return records

    return load


def _file_check(name: str, root: str, required: dict[str, str]):
    """A check that raises, naming every missing required path, the root and the layout doc."""

    def check() -> None:
        missing = [f"{what} {path}" for what, path in required.items() if not os.path.exists(path)]
        if missing:
            raise FileNotFoundError(
                f"builtin dataset '{name}' needs files under {root} "
                f"($DETECTRON2_DATASETS, default ./datasets) that are missing: "
                + "; ".join(missing)
                + f". See {_LAYOUT_DOC} for the expected layout and the scripts that make it."
            )

    return check


def register_builtin_panoptic_datasets(root: str | None = None) -> list[str]:
    """Register every builtin split under ``root``; return the names. Reads no file.

    Args:
        root: dataset root; ``$DETECTRON2_DATASETS`` (default ``datasets``) when omitted.
    """
    root = root or os.getenv("DETECTRON2_DATASETS", "datasets")
    for name, split in BUILTIN_PANOPTIC_SPLITS.items():
        image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json = (
            os.path.join(root, p)
            for p in (
                split.image_root,
                split.panoptic_root,
                split.panoptic_json,
                split.sem_seg_root,
                split.instances_json,
            )
        )
        sem_seg_root = sem_seg_root if os.path.isdir(sem_seg_root) else None
        instances_json = instances_json if os.path.isfile(instances_json) else None
        loader = None
        if split.city_folders:
            loader = _city_loader(name, panoptic_json, image_root, panoptic_root, sem_seg_root)
        required = {
            "panoptic json": panoptic_json,
            "panoptic PNG folder": panoptic_root,
            "image folder": image_root,
        }
        register_panoptic_dataset(
            name,
            image_root,
            panoptic_root,
            panoptic_json,
            sem_seg_root=sem_seg_root,
            instances_json=instances_json,
            loader=loader,
            check_files=_file_check(name, root, required),
        )
    return list(BUILTIN_PANOPTIC_SPLITS)


# Like detectron2's builtin datasets: available as soon as the package is imported.
register_builtin_panoptic_datasets()
