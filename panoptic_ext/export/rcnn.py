"""Export of detectron2's ``GeneralizedRCNN`` and ``PanopticFPN`` (incl. PANet's heads and PAFPN).

Network: ``preprocess_image``, backbone, RPN, ``StandardROIHeads`` box branch (torchvision NMS and
RoIAlign become ONNX ``NonMaxSuppression`` / ``RoiAlign``), mask branch, semantic head. Outputs
are the raw detector tensors of one image (before ``detector_postprocess``) and, for Panoptic
FPN, the semantic logits at the padded size.

Post-processing: detectron2's own ``detector_postprocess``, ``sem_seg_postprocess`` and
``combine_semantic_and_instance_outputs``, called exactly as ``PanopticFPN.inference`` /
``GeneralizedRCNN._postprocess`` call them (detectron2 has no export path for ``PanopticFPN``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from detectron2.modeling import GeneralizedRCNN, PanopticFPN
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, Instances
from torch import nn

from .base import Family, NetworkOutputs

__all__ = ["RCNN", "RCNNNetwork", "RCNNSettings"]

_DETECTIONS = ("boxes", "scores", "classes")


class RCNNNetwork(nn.Module):
    """(3, H, W) uint8 image -> detections of that image, as tensors.

    Returns, in order (K = number of detections, M = mask resolution, C = semantic classes):
        boxes (K, 4) float32 XYXY in input-image pixels, scores (K,) float32,
        classes (K,) int64, [mask_probs (K, 1, M, M) float32 if MASK_ON],
        [sem_seg_logits (1, C, Hp, Wp) float32 at the padded size, for PanopticFPN].
    """

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        images = m.preprocess_image([{"image": image}])
        features = m.backbone(images.tensor)
        proposals, _ = m.proposal_generator(images, features, None)
        detections = m.roi_heads._forward_box(features, proposals)[0]
        outputs = [detections.pred_boxes.tensor, detections.scores, detections.pred_classes]
        if m.roi_heads.mask_on:
            outputs.append(self._mask_probs(features, detections))
        if isinstance(m, PanopticFPN):
            outputs.append(m.sem_seg_head(features, None)[0])
        return tuple(outputs)

    def _mask_probs(self, features: dict[str, torch.Tensor], detections: Instances) -> torch.Tensor:
        """(K, 1, M, M) mask probabilities of the detected class, per detection.

        The mask head sees one extra box, dropped afterwards: ONNX Runtime cannot GroupNorm an
        empty batch of RoIs (its Reshape to (0, G, -1) fails), and every RoI is computed
        independently, so the extra box changes nothing for the others.
        """
        boxes = detections.pred_boxes.tensor
        classes = detections.pred_classes
        padded = Instances(
            detections.image_size,
            pred_boxes=Boxes(torch.cat([boxes, boxes.new_tensor([[0.0, 0.0, 1.0, 1.0]])])),
            pred_classes=torch.cat([classes, classes.new_zeros(1)]),
        )
        return self.model.roi_heads.forward_with_given_boxes(features, [padded])[0].pred_masks[:-1]


@dataclass(frozen=True)
class RCNNSettings:
    """Post-processing settings read from the built model.

    Attributes:
        mask_on: the network returns ``mask_probs``.
        panoptic: Panoptic FPN (the network returns ``sem_seg_logits``; results get
            "sem_seg" and "panoptic_seg").
        overlap_thresh / stuff_area_thresh / instances_score_thresh: Panoptic FPN's
            ``combine_*`` attributes (``MODEL.PANOPTIC_FPN.COMBINE``), None otherwise.
    """

    mask_on: bool
    panoptic: bool
    overlap_thresh: float | None = None
    stuff_area_thresh: float | None = None
    instances_score_thresh: float | None = None


def _settings(model: GeneralizedRCNN) -> RCNNSettings:
    if not isinstance(model, PanopticFPN):
        return RCNNSettings(mask_on=bool(model.roi_heads.mask_on), panoptic=False)
    return RCNNSettings(
        mask_on=bool(model.roi_heads.mask_on),
        panoptic=True,
        overlap_thresh=float(model.combine_overlap_thresh),
        stuff_area_thresh=float(model.combine_stuff_area_thresh),
        instances_score_thresh=float(model.combine_instances_score_thresh),
    )


def _output_names(model: GeneralizedRCNN) -> tuple[str, ...]:
    names = list(_DETECTIONS)
    if model.roi_heads.mask_on:
        names.append("mask_probs")
    if isinstance(model, PanopticFPN):
        names.append("sem_seg_logits")
    return tuple(names)


def _dynamic_axes(model: GeneralizedRCNN) -> dict[str, dict[int, str]]:
    axes = {name: {0: "detections"} for name in _output_names(model)}
    if "sem_seg_logits" in axes:
        axes["sem_seg_logits"] = {2: "padded_height", 3: "padded_width"}
    return axes


def _postprocess(
    outputs: NetworkOutputs,
    settings: RCNNSettings,
    image_size: tuple[int, int],
    out_size: tuple[int, int],
) -> dict[str, Any]:
    """detectron2 results of one image, by detectron2's own post-processing functions."""
    detections = Instances(
        image_size,
        # A copy: detector_postprocess scales the boxes in place, and the caller's network
        # outputs must stay what the network returned (the export check compares them).
        pred_boxes=Boxes(outputs["boxes"].clone()),
        scores=outputs["scores"],
        pred_classes=outputs["classes"],
    )
    if settings.mask_on:
        detections.pred_masks = outputs["mask_probs"]
    result: dict[str, Any] = {"instances": detector_postprocess(detections, *out_size)}
    if settings.panoptic:
        sem_seg = sem_seg_postprocess(outputs["sem_seg_logits"][0], image_size, *out_size)
        result["sem_seg"] = sem_seg
        result["panoptic_seg"] = combine_semantic_and_instance_outputs(
            result["instances"],
            sem_seg.argmax(dim=0),
            settings.overlap_thresh,
            settings.stuff_area_thresh,
            settings.instances_score_thresh,
        )
    return result


def _requirements(model: GeneralizedRCNN) -> None:
    if model.proposal_generator is None:
        raise ValueError("export needs an RPN: MODEL.PROPOSAL_GENERATOR.NAME is not set")
    if not isinstance(model.roi_heads, StandardROIHeads):
        raise ValueError(
            f"export supports StandardROIHeads and its subclasses (PANetROIHeads, ...), "
            f"MODEL.ROI_HEADS.NAME builds {type(model.roi_heads).__name__}"
        )
    if model.roi_heads.keypoint_on:
        raise ValueError("export does not support keypoints: set MODEL.KEYPOINT_ON False")


RCNN = Family(
    name="R-CNN",
    model_class=GeneralizedRCNN,
    network=RCNNNetwork,
    output_names=_output_names,
    dynamic_axes=_dynamic_axes,
    settings_type=RCNNSettings,
    settings=_settings,
    postprocess=_postprocess,
    requirements=_requirements,
    # Float: the layers whose outputs are thresholded, ranked or decoded directly, at well
    # under 1 % of the MACs: RPN objectness (top-k, NMS) and anchor deltas (exp() of the
    # size deltas amplifies their rounding), the box predictor (softmax scores against
    # SCORE_THRESH_TEST, box deltas), the mask predictor (sigmoid > 0.5) and the semantic
    # predictor (argmax, as Semantic FPN's). Backbone, FPN / PAFPN, RPN conv, box / mask /
    # semantic head convs and fcs (nearly all of the MACs) are INT8.
    int8_float_nodes=(
        r"/rpn_head/objectness_logits",
        r"/rpn_head/anchor_deltas",
        r"/box_predictor/",
        r"/mask_head/predictor/",
        r"/mask_head/fc_mask/",  # PANet: the fully-connected mask logits, added to the above
        r"/sem_seg_head/predictor/",
    ),
)
