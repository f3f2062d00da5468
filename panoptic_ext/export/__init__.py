"""Deployment: export every model family to ONNX / TorchScript and run it without the eager model.

* :func:`export_model` traces the family's tensor-only network, checks the exported model against
  the eager one on sample images at two sizes and only then writes it (``panoptic-ext-export``).
* :class:`ExportedPredictor` runs the file (ONNX Runtime or TorchScript) and returns detectron2's
  ``panoptic_seg`` / ``instances`` / ``sem_seg`` through the post-processing the eager model uses.
* :class:`ExportedModel` is that file as the model of detectron2's ``inference_on_dataset``;
  :mod:`~panoptic_ext.export.evaluate` evaluates it with the trainer's evaluators (``--run-eval``).
"""

from ..evaluation.compare import (
    Comparison,
    OutcomeTolerance,
    Tolerance,
    compare_outcomes,
    compare_results,
)
from .exporter import ExportCheckError, ExportResult, export_model
from .families import FAMILIES, family_of
from .quantize import CalibrationMethod, QuantizeOptions
from .runtime import ExportedDemoPredictor, ExportedModel, ExportedPredictor
from .spec import ExportFormat, ExportSpec

__all__ = [
    "FAMILIES",
    "CalibrationMethod",
    "Comparison",
    "ExportCheckError",
    "ExportFormat",
    "ExportResult",
    "ExportSpec",
    "ExportedDemoPredictor",
    "ExportedModel",
    "ExportedPredictor",
    "OutcomeTolerance",
    "QuantizeOptions",
    "Tolerance",
    "compare_outcomes",
    "compare_results",
    "export_model",
    "family_of",
]
