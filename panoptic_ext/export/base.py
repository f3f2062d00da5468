"""The contract every exportable family fulfils (one ``Family`` per meta-architecture kind).

A family splits inference into a *network* (an ``nn.Module`` taking one (3, H, W) uint8 image in
the model's colour order and returning only tensors, traced for ONNX / TorchScript) and a
*post-processing* function of those tensors that produces detectron2's result dict. The eager
model and the exported one share the post-processing code: the family reuses the functions the
eager meta-architecture itself calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..evaluation.compare import OutcomeTolerance, Tolerance

__all__ = ["Family", "NetworkOutputs"]

# Graph outputs by name, as torch tensors (on the runtime's device).
NetworkOutputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Family:
    """How one kind of meta-architecture is exported and post-processed.

    Attributes:
        name: short family name, for messages.
        model_class: the meta-architecture class (subclasses included) the family exports.
        network: model -> tensor-only module; its ``forward(image)`` takes (3, H, W) uint8 and
            returns a tuple ordered as ``output_names(model)``.
        output_names: model -> names of the network outputs.
        dynamic_axes: model -> {output name: {axis: symbolic name}} for the data-dependent sizes
            (the input's H and W are always dynamic).
        settings_type: dataclass of the post-processing settings (stored in the spec).
        settings: model -> an instance of ``settings_type`` read from the built model.
        postprocess: (outputs, settings, image_size (h, w) of the network input, output size
            (height, width)) -> detectron2 result dict ("panoptic_seg" / "instances" / "sem_seg").
        tolerance: what the export check lets float rounding change (default
            :class:`~panoptic_ext.evaluation.compare.Tolerance`).
        int8_float_nodes: regexes of the ONNX node names (conv / linear layers) that stay
            float in the INT8 model (:mod:`panoptic_ext.export.quantize`), with the reason
            at the family's definition; None: the family has no INT8 export yet.
        int8_tolerance: the outcomes the INT8 export check requires.
        requirements: model -> None; raises ValueError naming the config key when a model of
            ``model_class`` is built with parts the network cannot trace (default: none).
    """

    name: str
    model_class: type[nn.Module]
    network: Callable[[nn.Module], nn.Module]
    output_names: Callable[[nn.Module], tuple[str, ...]]
    dynamic_axes: Callable[[nn.Module], dict[str, dict[int, str]]]
    settings_type: type
    settings: Callable[[nn.Module], Any]
    postprocess: Callable[[NetworkOutputs, Any, tuple[int, int], tuple[int, int]], dict[str, Any]]
    tolerance: Tolerance = Tolerance()
    int8_float_nodes: tuple[str, ...] | None = None
    int8_tolerance: OutcomeTolerance = OutcomeTolerance()
    requirements: Callable[[nn.Module], None] = lambda model: None

    def check(self, model: nn.Module) -> None:
        """Raise ValueError when ``model`` is not of ``model_class`` or misses a requirement."""
        if not isinstance(model, self.model_class):
            raise ValueError(
                f"{self.name} export expects a {self.model_class.__name__}, "
                f"got {type(model).__name__}"
            )
        self.requirements(model)
