"""Draw a dataset and the targets each model family trains on, from the same dataset dicts and
the same ``PanopticDatasetMapper`` as training (``panoptic-ext-browse-dataset``).

Panels per image (RGB uint8, one title each):

* ``panoptic``: the ground-truth panoptic PNG over the stored image (before the augmentations
  that the other panels show), class names and colours from the metadata (detectron2's
  ``Visualizer``);
* ``semantic (<format>)``: the mapper's ``sem_seg`` target (things-as-one for Panoptic FPN /
  PANet / Panoptic FCN's stuff branch, all classes for Semantic FPN on ADE20K-like configs);
* ``instances``: the mapper's ``gt_masks`` / ``gt_boxes`` / ``gt_classes`` (what the ROI heads
  and Panoptic FCN's thing branch train on; crowd segments are not instances);
* ``centers``: Panoptic FCN's Gaussian center heatmaps, max over classes and over head levels,
  as a heat map (the position head's thing targets);
* ``stuff``: Panoptic FCN's soft stride-s stuff maps, coloured by class, brightness = the soft
  value (the position head's stuff targets before thresholding).

Targets are drawn after the training augmentations of the config (seeded, so a run is
repeatable), at the resolution the model sees.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data.catalog import Metadata
from detectron2.utils.visualizer import ColorMode, Visualizer

from ..data import PanopticDatasetMapper
from ..data.panoptic_io import read_panoptic_png
from ..modeling.panoptic_fcn.targets import TargetSettings
from ..structures.sem_seg_format import SemSegFormat
from ..utils.meta_arch import meta_arch_info

__all__ = ["DatasetBrowser", "Panel", "contact_sheet", "panel_row"]

_TITLE_PX = 22  # height of the title banner above each panel


@dataclass(frozen=True)
class Panel:
    """One drawn view: ``image`` is (H, W, 3) uint8 RGB."""

    title: str
    image: np.ndarray


class DatasetBrowser:
    """Panels of dataset dicts for the model family of ``cfg`` (see the module docstring)."""

    def __init__(self, cfg: CfgNode, dataset_name: str, seed: int = 0):
        self.cfg = cfg
        self.metadata = MetadataCatalog.get(dataset_name)
        # The panels of what the model trains on (after "panoptic"): the table's browse_panels.
        self.kinds = meta_arch_info(cfg).browse_panels
        self.mapper = PanopticDatasetMapper(cfg, is_train=True)
        self.generator = torch.Generator().manual_seed(seed)
        self._fcn = _FCNTargets(cfg) if {"centers", "stuff"} & set(self.kinds) else None

    def panels(self, record: dict[str, Any]) -> list[Panel]:
        """The panels of one dataset dict (detectron2's panoptic convention)."""
        out = [Panel("panoptic (file, not augmented)", self._panoptic(record))]
        # The mapper's random augmentations draw from numpy / python: seed them per image.
        np.random.seed(int(torch.randint(2**31, (1,), generator=self.generator)))
        mapped = self.mapper(copy.deepcopy(record))
        image = utils.convert_image_to_rgb(mapped["image"].permute(1, 2, 0), self.cfg.INPUT.FORMAT)
        for kind in self.kinds:
            if kind == "semantic":
                out.append(
                    Panel(f"semantic ({self.mapper.sem_seg_format})", self._semantic(image, mapped))
                )
            elif kind == "instances":
                out.append(
                    Panel(f"instances ({len(mapped['instances'])})", self._instances(image, mapped))
                )
        if self._fcn is not None:
            out += self._fcn.panels(image, mapped, self.metadata)
        return out

    def _panoptic(self, record: dict[str, Any]) -> np.ndarray:
        image = utils.read_image(record["file_name"], "RGB")
        ids = torch.from_numpy(read_panoptic_png(record["pan_seg_file_name"]).astype(np.int64))
        vis = Visualizer(image, self.metadata, instance_mode=ColorMode.SEGMENTATION)
        segments = [dict(s) for s in record["segments_info"]]
        return vis.draw_panoptic_seg(ids, segments, area_threshold=0, alpha=0.6).get_image()

    def _semantic(self, image: np.ndarray, mapped: dict[str, Any]) -> np.ndarray:
        meta = self.metadata
        if (
            self.mapper.sem_seg_format == SemSegFormat.ALL_CLASSES
        ):  # things 0..T-1, then stuff T..T+S-1
            meta = Metadata(
                stuff_classes=list(meta.thing_classes) + list(meta.stuff_classes[1:]),
                stuff_colors=list(meta.thing_colors) + list(meta.stuff_colors[1:]),
            )
        sem = mapped["sem_seg"].numpy()
        vis = Visualizer(image, meta)
        return vis.draw_sem_seg(sem, area_threshold=0, alpha=0.6).get_image()

    def _instances(self, image: np.ndarray, mapped: dict[str, Any]) -> np.ndarray:
        inst = mapped["instances"]
        classes = inst.gt_classes.tolist()
        colors = [np.array(self.metadata.thing_colors[c]) / 255 for c in classes]
        vis = Visualizer(image, self.metadata)
        return vis.overlay_instances(
            boxes=inst.gt_boxes,
            masks=inst.gt_masks.tensor.numpy(),
            labels=[self.metadata.thing_classes[c] for c in classes],
            assigned_colors=colors,
            alpha=0.5,
        ).get_image()


class _FCNTargets:
    """Panoptic FCN's target builder with the config's settings and head level strides."""

    def __init__(self, cfg: CfgNode):
        from ..modeling.panoptic_fcn.meta_arch import PanopticFCN

        parts = PanopticFCN.from_config(cfg)  # builds the (random) network once: strides only
        shapes = parts["backbone"].output_shape()
        self.strides = [shapes[f].stride for f in parts["head_in_features"]]
        self.divisibility = max(parts["backbone"].size_divisibility, 1)
        self.ignore_value = parts["ignore_value"]
        self.settings = parts["target_settings"]

    def panels(self, image: np.ndarray, mapped: dict[str, Any], meta: Metadata) -> list[Panel]:
        from ..modeling.panoptic_fcn.targets import build_targets, collate_ground_truth

        h, w = image.shape[:2]
        hp = math.ceil(h / self.divisibility) * self.divisibility
        wp = math.ceil(w / self.divisibility) * self.divisibility
        gt = collate_ground_truth(
            [mapped["instances"]], [mapped["sem_seg"]], (hp, wp), self.ignore_value, "cpu"
        )
        # Stride-2 convs (k 3, pad 1) give ceil(size / 2) at each step: ceil(size / stride).
        levels = [(math.ceil(hp / s), math.ceil(wp / s)) for s in self.strides]
        targets = build_targets(gt, levels, 1, self.settings)
        heat = torch.stack(
            [_resize(t[0].amax(0), (hp, wp), "bilinear") for t in targets.center_heatmaps]
        ).amax(0)[:h, :w]
        view = _heat_overlay(image, heat.numpy())
        for stride, t in zip(self.strides, targets.center_heatmaps):
            _mark_peaks(view, t[0], stride, meta.thing_colors)
        stride = self.settings.common_stride
        hf, wf = hp // stride, wp // stride
        stuff = _resize(targets.stuff_masks[0].view(-1, hf, wf), (hp, wp), "nearest")[:, :h, :w]
        return [
            Panel(f"centers ({len(levels)} levels, o = peak)", view),
            Panel(f"stuff (soft, stride {stride})", _stuff_view(image, stuff, meta, self.settings)),
        ]


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(..., h, w) float -> (..., H, W): "nearest" shows each target cell as the block it
    covers, "bilinear" draws Gaussians smooth."""
    lead = x.shape[:-2]
    y = torch.nn.functional.interpolate(
        x.reshape(1, -1, *x.shape[-2:]).float(),
        size,
        mode=mode,
        **({"align_corners": False} if mode == "bilinear" else {}),
    )
    return y.reshape(*lead, *size)


def _mark_peaks(view: np.ndarray, heat: torch.Tensor, stride: int, colors) -> None:
    """Circle (in its class colour) every cell of a (T, h, w) level heatmap that is a center."""
    h, w = view.shape[:2]
    for c, y, x in torch.nonzero(heat >= 1.0).tolist():
        center = (int((x + 0.5) * stride), int((y + 0.5) * stride))
        if center[0] < w and center[1] < h:
            color = tuple(int(v) for v in colors[c])
            cv2.circle(view, center, max(3, stride // 2), color, 2, cv2.LINE_AA)


def _heat_overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] as a JET heat map over a darkened image."""
    colored = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = np.clip(heat, 0, 1)[..., None] * 0.8
    base = image.astype(np.float32) * 0.4
    return (base * (1 - alpha) + colored[..., ::-1].astype(np.float32) * alpha).astype(np.uint8)


def _stuff_view(
    image: np.ndarray, stuff: torch.Tensor, meta: Metadata, settings: TargetSettings
) -> np.ndarray:
    """(S, H, W) soft maps: each pixel in the colour of its strongest class, scaled by its value."""
    value, label = stuff.max(0)
    offset = settings.stuff_label_offset  # channel c is sem_seg label c + offset
    colors = np.array(meta.stuff_colors, dtype=np.float32)
    rgb = colors[(label + offset).clamp(max=len(colors) - 1).numpy()]
    rgb[label.numpy() + offset == 0] = 255  # the merged "things" class: white
    alpha = value.numpy()[..., None]
    return (image * 0.3 * (1 - alpha) + rgb * alpha).astype(np.uint8)


def _titled(panel: Panel, height: int) -> np.ndarray:
    h, w = panel.image.shape[:2]
    width = max(1, round(w * height / h))
    body = cv2.resize(panel.image, (width, height), interpolation=cv2.INTER_AREA)
    banner = np.full((_TITLE_PX, width, 3), 255, np.uint8)
    cv2.putText(banner, panel.title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)  # fmt: skip
    return np.concatenate([banner, body])


def panel_row(panels: Sequence[Panel], height: int, gap: int = 4) -> np.ndarray:
    """The panels side by side, each scaled to ``height`` pixels with its title above."""
    parts = []
    for p in panels:
        parts += [_titled(p, height), np.full((height + _TITLE_PX, gap, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=1)


def contact_sheet(rows: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """Rows stacked on a white sheet (left-aligned; rows may differ in width)."""
    width = max(r.shape[1] for r in rows)
    out = []
    for r in rows:
        pad = np.full((r.shape[0], width - r.shape[1], 3), 255, np.uint8)
        out += [np.concatenate([r, pad], axis=1), np.full((gap, width, 3), 255, np.uint8)]
    return np.concatenate(out[:-1])
