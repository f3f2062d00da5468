"""Overlays of a model's predictions on its image (the demo's output), drawn with detectron2's
``Visualizer``: panoptic if predicted, else instances, else semantic."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["OVERLAY_MAX_SIDE", "fit_for_drawing", "visualize"]

# Overlays are drawn with their longest side at most this many pixels: detectron2's Visualizer
# (matplotlib) took 10 GB for an 8000x8000 image. Predictions and COCO-panoptic PNGs keep the
# input's size.
OVERLAY_MAX_SIDE = 2048


def _resize_nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., H, W) labels or masks resized to ``size`` by nearest neighbour, dtype kept."""
    lead = labels.shape[:-2]
    flat = labels.reshape(1, -1, *labels.shape[-2:]).float()
    resized = F.interpolate(flat, size=size, mode="nearest")
    return resized.reshape(*lead, *size).to(labels.dtype)


def fit_for_drawing(
    rgb: np.ndarray, outputs: dict[str, Any], max_side: int = OVERLAY_MAX_SIDE
) -> tuple[np.ndarray, dict[str, Any]]:
    """``rgb`` and ``outputs`` scaled so that the longest side is at most ``max_side`` (image:
    area interpolation; labels and masks: nearest; boxes scaled); unchanged if they fit."""
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb, outputs
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = cv2.resize(rgb, size[::-1], interpolation=cv2.INTER_AREA)
    drawn: dict[str, Any] = {}
    if "panoptic_seg" in outputs:
        ids, segments = outputs["panoptic_seg"]
        drawn["panoptic_seg"] = (_resize_nearest(ids.to("cpu"), size), segments)
    elif "instances" in outputs:
        instances = outputs["instances"].to("cpu")
        fitted = Instances(size)
        for name, value in instances.get_fields().items():
            if name == "pred_boxes":
                value = value.clone()
                value.scale(size[1] / w, size[0] / h)
            elif name == "pred_masks":
                value = _resize_nearest(value, size)
            fitted.set(name, value)
        drawn["instances"] = fitted
    else:
        drawn["sem_seg"] = _resize_nearest(outputs["sem_seg"].to("cpu"), size)
    return small, drawn


def visualize(rgb: np.ndarray, outputs: dict[str, Any], metadata: Any) -> np.ndarray:
    """RGB uint8 overlay: panoptic if predicted, else instances, else semantic; drawn at most
    :data:`OVERLAY_MAX_SIDE` pixels wide and high (see :func:`fit_for_drawing`)."""
    rgb, outputs = fit_for_drawing(rgb, outputs)
    vis = Visualizer(rgb, metadata, instance_mode=ColorMode.IMAGE)
    if "panoptic_seg" in outputs:
        ids, segments = outputs["panoptic_seg"]
        out = vis.draw_panoptic_seg(ids.to("cpu"), segments)
    elif "instances" in outputs:
        out = vis.draw_instance_predictions(outputs["instances"].to("cpu"))
    else:
        out = vis.draw_sem_seg(outputs["sem_seg"].argmax(dim=0).to("cpu"))
    return out.get_image()
