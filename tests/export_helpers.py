"""Tiny exportable models of each family and the synthetic val images they run on."""

import os

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog
from helpers import KEEP_ALL_DETECTIONS_OPTS, TINY_OPTS, build_tiny_model, load_cfg, register_tiny

from panoptic_ext.data import PanopticDatasetMapper

# Quick-schedule configs with 32-channel FPN and heads (ResNet-18 needs its 64 channels): an
# export of each family takes seconds on a 2-core CPU.
SMALL_OPTS = [
    *TINY_OPTS,
    "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
    "DATASETS.TEST", ("synthetic_panoptic_val",),
]  # fmt: skip
RCNN_OPTS = [
    *KEEP_ALL_DETECTIONS_OPTS,
    # More than the 3 x 100 candidates NMS leaves: the number of detections differs per image
    # (260-290), so a count frozen by tracing shows.
    "TEST.DETECTIONS_PER_IMAGE", 300,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 64,  # PANet's FF branch halves it for its GroupNorm(32)
]  # fmt: skip
PANOPTIC_FCN_OPTS = [
    "MODEL.PANOPTIC_FCN.POSITION_HEAD.DEFORM", True,  # DCNv2 -> ONNX DeformConv
    # Fewer candidates per level than a 64 px image's larger levels have positions (and more
    # than its smaller ones): a cap that tracing froze to the traced size then shows.
    "MODEL.PANOPTIC_FCN.POSITION_HEAD.THING.LEVEL_TOP_NUM", 6,
    "MODEL.PANOPTIC_FCN.INFERENCE.COMBINE.STUFF_AREA_LIMIT", 16,
]  # fmt: skip
FAMILY_CONFIGS = {
    "semantic_fpn": ("quick_schedules/semantic_fpn_synthetic.yaml", []),
    "panoptic_fpn": ("quick_schedules/panoptic_fpn_synthetic.yaml", RCNN_OPTS),
    "panet": ("quick_schedules/panet_synthetic.yaml", RCNN_OPTS),
    "panoptic_fcn": ("quick_schedules/panoptic_fcn_synthetic.yaml", PANOPTIC_FCN_OPTS),
}


def family_cfg(family: str, *opts):
    name, extra = FAMILY_CONFIGS[family]
    return load_cfg(name, *SMALL_OPTS, *extra, *opts)


def family_model(family: str, *opts):
    cfg = family_cfg(family, *opts)
    model = build_tiny_model(cfg).eval()
    if family == "panoptic_fcn":
        _decisive_panoptic_fcn(model)
    return cfg, model


@torch.no_grad()
def _decisive_panoptic_fcn(model) -> None:
    """Random-init output layers have std 0.01: scaled up, peaks, masks and stuff are decided
    (things and stuff in the panoptic output) instead of near-ties."""
    heads = (model.position_head.out_inst, model.position_head.out_sem, model.kernel_head.out_conv)
    embeds = (model.thing_generator.embed_extractor, model.stuff_generator.embed_extractor)
    for conv in heads + embeds:
        conv.weight.mul_(20)


def val_dicts() -> list[dict]:
    register_tiny()
    return DatasetCatalog.get("synthetic_panoptic_val")


def mapped_inputs(cfg, indices=(0, 1)) -> list[dict]:
    """Mapped test-time inputs of synthetic val images (what the eager test loader gives)."""
    mapper = PanopticDatasetMapper(cfg, is_train=False)
    dicts = val_dicts()
    return [mapper(dicts[i]) for i in indices]


def cropped_image(folder: str, index: int, height: int, width: int) -> dict:
    """A val image cropped to (height, width) and saved as PNG: a dataset dict of it."""
    src = val_dicts()[index]["file_name"]
    path = os.path.join(folder, f"crop{index}_{height}x{width}.png")
    cv2.imwrite(path, np.ascontiguousarray(cv2.imread(src)[:height, :width]))
    return {"file_name": path, "image_id": index, "height": height, "width": width}
