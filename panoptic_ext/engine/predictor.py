"""Predict on one image at a time outside the test loader (the demo), exactly as evaluation does.

* :class:`DemoPredictor`: the model + ``PanopticDatasetMapper``'s test-time preprocessing, the
  weights loaded by the trainer's checkpointer;
* :func:`demo_metadata`: the class names and id maps to draw and write predictions with;
* :func:`check_input_format`: a ``MODEL.PIXEL_MEAN`` whose channel order contradicts
  ``INPUT.FORMAT``;
* :func:`panoptic_record`: a prediction as a COCO-panoptic PNG and annotation.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

from ..data import PanopticDatasetMapper
from ..data.image_io import read_image
from ..structures.boxes import segment_boxes
from ..structures.panoptic_ids import id_to_rgb
from .trainer import Trainer

__all__ = ["DemoPredictor", "check_input_format", "demo_metadata", "panoptic_record"]

logger = logging.getLogger("panoptic_ext.demo")

# ImageNet means differ by ~20 between the R and B channels; a smaller gap says nothing.
_MEAN_ORDER_MARGIN = 5.0


def check_input_format(cfg: CfgNode) -> str | None:
    """Explain a mismatch between ``INPUT.FORMAT`` and the channel order of ``MODEL.PIXEL_MEAN``.

    Natural images have a larger red than blue mean (ImageNet: R 123.7, B 103.5), so a BGR
    model's mean starts with the smaller value and an RGB model's with the larger one. A
    mismatch feeds the network swapped colours (e.g. one bogus whole-image segment).

    Returns:
        a message when the order contradicts the format, else None (also for custom means
        where R and B are too close to tell).
    """
    fmt, mean = cfg.INPUT.FORMAT, list(cfg.MODEL.PIXEL_MEAN)
    if fmt not in ("BGR", "RGB") or len(mean) != 3 or abs(mean[0] - mean[2]) < _MEAN_ORDER_MARGIN:
        return None
    looks = "BGR" if mean[0] < mean[2] else "RGB"
    if looks == fmt:
        return None
    return (
        f"INPUT.FORMAT is {fmt} but MODEL.PIXEL_MEAN {mean} is in {looks} order "
        f"(first channel {'<' if looks == 'BGR' else '>'} last); the model will see swapped "
        f"colours. Set INPUT.FORMAT {looks} or reorder PIXEL_MEAN/PIXEL_STD."
    )


def demo_metadata(cfg: CfgNode, dataset: str | None = None) -> Any:
    """Class names and id maps: ``dataset``'s, else the config's first registered test/train set.

    COCO configs run without the COCO files on disk: detectron2's own COCO panoptic metadata
    (same separated convention) then supplies the names.
    """
    names = [dataset] if dataset else list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    for name in names:
        try:
            if MetadataCatalog.get(name).get("thing_classes") is not None:
                return MetadataCatalog.get(name)
        except FileNotFoundError as e:  # a builtin dataset whose files are not here
            logger.info(f"no metadata from '{name}': {e}")
    if any(name.startswith("coco_") for name in names):
        return MetadataCatalog.get("coco_2017_val_panoptic_separated")
    logger.warning(f"no registered dataset among {names}: no class names (use --dataset)")
    return MetadataCatalog.get(names[0] if names else "__unused")


class DemoPredictor:
    """Model + the evaluation path's preprocessing, for one image at a time.

    ``__call__(path)`` runs ``PanopticDatasetMapper(cfg, is_train=False)`` on the file, exactly
    as the test loader does; ``on_frame(bgr)`` applies the same colour conversion and resize
    to an in-memory BGR frame (video).
    """

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg
        self.model = Trainer.build_model(cfg)
        self.model.eval()
        checkpointer = Trainer.build_checkpointer(cfg, self.model, inference=True)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
        self.mapper = PanopticDatasetMapper(cfg, is_train=False)
        self.augmentations = T.AugmentationList(
            PanopticDatasetMapper.from_config(cfg, False)["augmentations"]
        )

    @torch.no_grad()
    def _run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return self.model([inputs])[0]

    def __call__(self, path: str) -> tuple[np.ndarray, dict[str, Any]]:
        """Returns the image as RGB uint8 (H, W, 3) and the model's output dict.

        Raises:
            UnsupportedImageError: 16-bit, float, CMYK, ... images; UnreadableImageError: files
            that are not images, truncated, missing.
        """
        rgb = read_image(path, format="RGB")
        h, w = rgb.shape[:2]
        inputs = self.mapper(
            {"file_name": path, "image_id": os.path.basename(path), "height": h, "width": w}
        )
        return rgb, self._run(inputs)

    def on_frame(self, bgr: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Same as ``__call__`` for a decoded (H, W, 3) uint8 BGR frame."""
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        # The same conversion read_image applies to a decoded file.
        image = utils.convert_PIL_to_numpy(Image.fromarray(rgb), self.cfg.INPUT.FORMAT)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        h, w = bgr.shape[:2]
        return rgb, self._run({"image": tensor, "height": h, "width": w})


def panoptic_record(
    outputs: dict[str, Any], metadata: Any, image_id: Any, file_name: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """COCO-panoptic (H, W, 3) PNG colours and annotation (dataset category ids) of one output."""
    ids_t, segments = outputs["panoptic_seg"]
    ids = ids_t.to("cpu").numpy().astype(np.int64)
    thing = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
    stuff = {v: k for k, v in metadata.stuff_dataset_id_to_contiguous_id.items()}
    # Renumber ids to 1..K in segments_info order (the model's ids can be any integers).
    lut = np.zeros(int(ids.max(initial=0)) + 1, np.int64)
    for k, s in enumerate(segments, start=1):
        lut[s["id"]] = k
    index = lut[ids]
    areas, boxes = segment_boxes(index, len(segments))
    infos = []
    for k, s in enumerate(segments):
        table = thing if s.get("isthing") else stuff
        info = {
            "id": k + 1,
            "category_id": int(table[s["category_id"]]),
            "iscrowd": 0,
            "isthing": bool(s.get("isthing")),
            "area": int(areas[k]),
            "bbox": boxes[k].tolist(),
        }
        if "score" in s:
            info["score"] = float(s["score"])
        infos.append(info)
    return id_to_rgb(index), {"image_id": image_id, "file_name": file_name, "segments_info": infos}
