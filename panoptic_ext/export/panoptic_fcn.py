"""Export of ``PanopticFCN`` (including its deformable convs, exported as ONNX ``DeformConv``).

Network: ``preprocess_image`` and ``PanopticFCN.predict`` -> the six tensors of
``LowResPredictions`` (thing candidates, fusion and rescoring included: fixed shapes for a given
input size). Post-processing: Panoptic FCN's own ``postprocess_image``, the function
``PanopticFCN.inference`` applies to each image.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..evaluation.compare import Tolerance
from ..modeling.panoptic_fcn import PanopticFCN
from ..modeling.panoptic_fcn.inference import InferenceSettings, LowResPredictions
from ..modeling.panoptic_fcn.postprocess import postprocess_image
from .base import Family, NetworkOutputs

__all__ = ["PANOPTIC_FCN", "PanopticFCNNetwork", "PanopticFCNSettings"]

_OUTPUTS = tuple(f.name for f in dataclasses.fields(LowResPredictions))


class PanopticFCNNetwork(nn.Module):
    """(3, H, W) uint8 image -> the fields of ``LowResPredictions`` for that image (N = 1).

    Returns, in order (K thing slots, S stuff channels, Hf x Wf the encoder resolution):
        thing_probs (1, K, Hf, Wf) f32, thing_scores (1, K) f32, thing_classes (1, K) i64,
        thing_valid (1, K) bool, stuff_probs (1, S, Hf, Wf) f32, stuff_present (1, S) bool.
    """

    def __init__(self, model: PanopticFCN):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        images = self.model.preprocess_image([{"image": image}])
        pred = self.model.predict(images.tensor)
        return tuple(getattr(pred, name) for name in _OUTPUTS)


@dataclass(frozen=True)
class PanopticFCNSettings(InferenceSettings):
    """The model's ``InferenceSettings`` plus the backbone's padding (to recover the stride).

    Attributes:
        size_divisibility: the input is padded to a multiple of it (0: no padding).
    """

    size_divisibility: int = 0


def _settings(model: PanopticFCN) -> PanopticFCNSettings:
    values = dataclasses.asdict(model.inference_settings)
    return PanopticFCNSettings(**values, size_divisibility=model.backbone.size_divisibility)


def _postprocess(
    outputs: NetworkOutputs,
    settings: PanopticFCNSettings,
    image_size: tuple[int, int],
    out_size: tuple[int, int],
) -> dict[str, Any]:
    """detectron2 results of one image, by ``postprocess_image`` as ``PanopticFCN.inference``."""
    pred = LowResPredictions(**{name: outputs[name] for name in _OUTPUTS})
    d = settings.size_divisibility
    padded_width = math.ceil(image_size[1] / d) * d if d > 1 else image_size[1]
    stride = padded_width // pred.thing_probs.shape[-1]
    return postprocess_image(pred, 0, stride, image_size, out_size, settings)


PANOPTIC_FCN = Family(
    name="Panoptic FCN",
    model_class=PanopticFCN,
    network=PanopticFCNNetwork,
    output_names=lambda model: _OUTPUTS,
    dynamic_axes=lambda model: {
        "thing_probs": {1: "things", 2: "low_height", 3: "low_width"},
        "thing_scores": {1: "things"},
        "thing_classes": {1: "things"},
        "thing_valid": {1: "things"},
        "stuff_probs": {2: "low_height", 3: "low_width"},
    },
    settings_type=PanopticFCNSettings,
    settings=_settings,
    postprocess=_postprocess,
    # Stuff labels are the sem_seg argmax; random-init stuff maps are tied within 1e-5 on ~10 %
    # of the pixels, where rounding flips them (DEPLOY.md, "Panoptic FCN and near-ties").
    tolerance=Tolerance(panoptic_stuff_ties=True),
    # Float: the layers whose outputs are decisions or the mask logits themselves (about 6 %
    # of the R-50 MACs, nearly all of it the kernel head's output conv): the position head's
    # center logits (peaks, top-k, THING.THRES) and region logits (stuff argmax,
    # STUFF.THRES), the kernel head's output conv and the two embedding extractors (the
    # kernels; a per-tensor INT8 scale on them moves every mask logit of the instance), and
    # the top-level MatMuls of ``lowres_predictions`` (kernel
    # fusion's cosine similarity against SIMILAR_THRES and group mean; the kernel x feature
    # products that are the thing and stuff mask logits; both inputs are activations).
    # DeformConv (position head, paper config) is not a quantized op type, so it stays float.
    # Backbone, FPN, encoder and the head towers (the rest of the MACs) are INT8.
    int8_float_nodes=(
        r"/position_head/out_inst",
        r"/position_head/out_sem",
        r"/kernel_head/out_conv",
        r"/thing_generator/",
        r"/stuff_generator/",
        r"^/MatMul(_\d+)?$",
    ),
)
