"""``PanopticDatasetMapper``: one mapper that serves every model from COCO-panoptic files."""

import copy
import logging
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from ..structures.boxes import masks_to_boxes
from ..structures.sem_seg_format import SemSegFormat
from .image_io import UnreadableImageError, UnsupportedImageError, read_image
from .panoptic_io import read_panoptic_png
from .panoptic_targets import (
    SEM_SEG_FORMATS,
    segment_index_map,
    segment_labels,
    semantic_lookup,
)

__all__ = ["PanopticDatasetMapper", "build_augmentations"]

logger = logging.getLogger(__name__)


def build_augmentations(cfg: CfgNode, is_train: bool) -> list[T.Augmentation]:
    """detectron2's resize/flip augmentations, preceded by ``INPUT.CROP`` when enabled."""
    augs = utils.build_augmentation(cfg, is_train)
    if is_train and cfg.INPUT.CROP.ENABLED:
        augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    return augs


class PanopticDatasetMapper:
    """Map a panoptic dataset dict (detectron2's convention: contiguous ``category_id`` and
    ``isthing`` in ``segments_info``, ``pan_seg_file_name``) to model inputs.

    Reads the image and, in training, the panoptic PNG; applies the same geometric transforms to
    both; then derives, vectorised over segments:

    * ``instances``: ``gt_boxes`` (Boxes, (N, 4) XYXY), ``gt_classes`` (int64 (N,), 0..T-1),
      ``gt_masks`` (BitMasks, (N, H, W)); crowd segments are left out. Always present, N may be 0.
    * ``sem_seg``: (H, W) int64 in the requested format (see ``INPUT.SEM_SEG_FORMAT``); void
      pixels get ``ignore_value``.

    Errors name the file: PNG ids with no segment, category ids outside the metadata's ranges,
    segments without ``isthing``.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: list[T.Augmentation],
        image_format: str,
        thing_dataset_id_to_contiguous_id: dict[int, int],
        stuff_dataset_id_to_contiguous_id: dict[int, int],
        sem_seg_format: str = SemSegFormat.THINGS_AS_ONE.value,
        ignore_value: int = 255,
    ):
        """
        Args:
            is_train: whether targets are produced (the evaluators read ground truth from files).
            augmentations: applied to the image and to every target.
            image_format: detectron2 image format ("BGR", "RGB", ...).
            thing_dataset_id_to_contiguous_id: dataset thing id -> 0..T-1 (its size is T, the
                range thing ``category_id`` values are checked against).
            stuff_dataset_id_to_contiguous_id: dataset stuff id -> 1..S (``{0: 0}`` allowed).
            sem_seg_format: one of "things_as_one", "all_classes", "none".
            ignore_value: label of void pixels in ``sem_seg``.
        """
        if sem_seg_format not in SEM_SEG_FORMATS:
            raise ValueError(
                f"INPUT.SEM_SEG_FORMAT must be one of {SEM_SEG_FORMATS}, got {sem_seg_format!r}"
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.thing_map = {int(k): int(v) for k, v in thing_dataset_id_to_contiguous_id.items()}
        self.stuff_map = {int(k): int(v) for k, v in stuff_dataset_id_to_contiguous_id.items()}
        self.num_things = len(self.thing_map)
        self.num_stuff = len([k for k in self.stuff_map if k != 0])
        self.sem_seg_format = sem_seg_format
        self.ignore_value = ignore_value
        mode = "training" if is_train else "inference"
        logger.info(f"[PanopticDatasetMapper] augmentations in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict[str, Any]:
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        meta = MetadataCatalog.get(names[0]) if names else MetadataCatalog.get("__unused")
        return {
            "is_train": is_train,
            "augmentations": build_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "thing_dataset_id_to_contiguous_id": meta.get("thing_dataset_id_to_contiguous_id", {}),
            "stuff_dataset_id_to_contiguous_id": meta.get("stuff_dataset_id_to_contiguous_id", {}),
            "sem_seg_format": cfg.INPUT.SEM_SEG_FORMAT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        }

    def _read_panoptic(self, dataset_dict: dict[str, Any]) -> np.ndarray:
        """(H, W) int32 segment-index map (0 = void, k = k-th entry of ``segments_info``)."""
        path = dataset_dict["pan_seg_file_name"]
        # The reader of the evaluator and the dataset tools (an OSError naming the file).
        ids = read_panoptic_png(path)
        segments = dataset_dict["segments_info"]
        return segment_index_map(ids, [s["id"] for s in segments], path)

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        path = dataset_dict["file_name"]
        try:
            image = read_image(path, format=self.image_format)  # refuses 16-bit, float, CMYK
        except (UnsupportedImageError, UnreadableImageError):
            raise
        except (OSError, ValueError, SyntaxError) as e:
            raise OSError(f"cannot read image {path}: {e}") from e
        utils.check_image_size(dataset_dict, image)

        index = None
        if self.is_train:
            index = self._read_panoptic(dataset_dict)
            if index.shape != image.shape[:2]:
                raise ValueError(
                    f"{dataset_dict['pan_seg_file_name']}: PNG size {index.shape} differs from "
                    f"image {path} size {image.shape[:2]}"
                )
        # The index map rides along as "sem_seg" so detectron2 transforms it with nearest
        # interpolation and the same geometry as the image.
        if index is not None:
            # uint8 takes detectron2's PIL path; float32 holds larger indices exactly.
            index = index.astype(np.uint8 if index.max(initial=0) < 255 else np.float32)
        aug_input = T.AugInput(image, sem_seg=index)
        self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("segments_info", None)
            return dataset_dict
        dataset_dict.update(self._targets(aug_input.sem_seg.astype(np.int64), dataset_dict))
        return dataset_dict

    def _targets(self, index: np.ndarray, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        """Instances and semantic labels from an (H, W) segment-index map."""
        segments = dataset_dict.pop("segments_info")
        is_thing, contiguous = segment_labels(
            segments, self.num_things, self.num_stuff, dataset_dict["pan_seg_file_name"]
        )
        iscrowd = np.array([s.get("iscrowd", 0) for s in segments], dtype=bool)
        out: dict[str, Any] = {}
        if self.sem_seg_format != SemSegFormat.NONE:
            lut = semantic_lookup(
                is_thing, contiguous, self.num_things, self.sem_seg_format, self.ignore_value
            )
            out["sem_seg"] = torch.as_tensor(lut[index])

        keep = np.nonzero(is_thing & ~iscrowd)[0]
        h, w = index.shape
        index_t = torch.as_tensor(index)
        # (N, H, W): one comparison for all instances; drop those a crop removed entirely.
        masks = index_t[None] == torch.as_tensor(keep + 1, dtype=index_t.dtype)[:, None, None]
        visible = masks.flatten(1).any(dim=1)
        masks = masks[visible]
        instances = Instances((h, w))
        instances.gt_classes = torch.as_tensor(contiguous[keep], dtype=torch.int64)[visible]
        instances.gt_masks = BitMasks(masks)
        instances.gt_boxes = masks_to_boxes(masks)
        out["instances"] = instances
        return out
