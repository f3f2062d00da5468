"""Export of detectron2's ``SemanticSegmentor`` (Semantic FPN with our ``SemanticFPNHead``).

Network: normalise, pad to ``size_divisibility``, backbone, semantic head -> logits at the padded
size. Post-processing: detectron2's ``sem_seg_postprocess`` (crop the padding, resize to the
output size), exactly what ``SemanticSegmentor.forward`` applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from detectron2.modeling import SemanticSegmentor
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from .base import Family, NetworkOutputs

__all__ = ["SEMANTIC", "SemanticNetwork", "normalize_and_pad"]


def normalize_and_pad(model: nn.Module, image: torch.Tensor) -> ImageList:
    """(3, H, W) uint8 -> ``ImageList`` of one normalised image padded as the eager model pads."""
    x = (image.to(model.pixel_mean.device) - model.pixel_mean) / model.pixel_std
    backbone = model.backbone
    return ImageList.from_tensors(
        [x], backbone.size_divisibility, padding_constraints=backbone.padding_constraints
    )


class SemanticNetwork(nn.Module):
    """(3, H, W) uint8 image -> ((1, C, Hp, Wp) float32 logits at the padded size,)."""

    def __init__(self, model: SemanticSegmentor):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor]:
        images = normalize_and_pad(self.model, image)
        logits, _ = self.model.sem_seg_head(self.model.backbone(images.tensor), None)
        return (logits,)


@dataclass(frozen=True)
class SemanticSettings:
    """Semantic FPN has no post-processing setting (kept for a uniform spec)."""


def _postprocess(
    outputs: NetworkOutputs,
    settings: SemanticSettings,
    image_size: tuple[int, int],
    out_size: tuple[int, int],
) -> dict[str, Any]:
    """{"sem_seg": (C, height, width) float logits}, as ``SemanticSegmentor.forward``."""
    return {"sem_seg": sem_seg_postprocess(outputs["sem_seg_logits"][0], image_size, *out_size)}


SEMANTIC = Family(
    name="Semantic FPN",
    model_class=SemanticSegmentor,
    network=SemanticNetwork,
    output_names=lambda model: ("sem_seg_logits",),
    dynamic_axes=lambda model: {"sem_seg_logits": {2: "padded_height", 3: "padded_width"}},
    settings_type=SemanticSettings,
    settings=lambda model: SemanticSettings(),
    postprocess=_postprocess,
    # The 1x1 predictor's logits are the class decision itself (argmax): a per-tensor INT8
    # scale over 150+ classes would round close logits together; it is <1 % of the MACs.
    int8_float_nodes=(r"/sem_seg_head/predictor/",),
)
